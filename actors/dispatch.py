"""Rollout and reward tasks of one iteration: dispatched to the worker groups, collected as
object refs, and resubmitted with the same seed when a worker dies, its weights are missing
or its output is lost with its node. Only refs pass through here, never trajectory data."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import ray
from ray.exceptions import ObjectLostError, RayActorError

from actors.pools import WorkerGroup, first_done
from actors.rollout import VersionMismatch
from actors.runstate import EventLog
from maskrl.seeds import task_seed

MAX_RESUBMITS = 3  # for missing weights: a worker that keeps missing them is an error


@dataclass
class Task:
    """One rollout task (consecutive prompt groups) and its reward scoring."""

    index: int
    prompts: list[tuple[int, str]]
    seed: int
    worker: int
    actor: object = None
    version: int = -1
    record: ray.ObjectRef | None = None
    stats: ray.ObjectRef | None = None
    reward_actor: object = None
    scored: ray.ObjectRef | None = None
    reward_stats: ray.ObjectRef | None = None
    info: dict = field(default_factory=dict)
    resubmits: int = 0


@dataclass
class Dispatched:
    iteration: int
    groups: list[int]
    tasks: list[Task]
    end_position: int  # stream position after this iteration's prompts
    started: float


Recover = Callable[[WorkerGroup, int, object], None]  # (group, index, the dead actor): replace it


class Dispatcher:
    """Sends an iteration's prompt groups to the rollout workers, each task's record on to a
    reward worker, and waits for every scored batch. `version()` is the weights version the
    rollout workers hold (tasks ask for it); `recover` replaces a dead worker."""

    def __init__(self, rollout: WorkerGroup, reward: WorkerGroup, group_size: int, groups_per_task: int, seed: int,
                 events: EventLog, version: Callable[[], int], recover: Recover):
        self.rollout, self.reward, self.events = rollout, reward, events
        self.group_size, self.groups_per_task, self.seed = group_size, groups_per_task, seed
        self.version, self.recover = version, recover

    def dispatch(self, iteration: int, prompts: list, end_position: int) -> Dispatched:
        """Split the prompt groups into tasks (evenly over the workers, or `groups_per_task` each)."""
        n, per_task = len(self.rollout), self.groups_per_task
        chunks = [list(c) for c in np.array_split(np.arange(len(prompts)), n)] if per_task <= 0 else \
            [list(range(s, min(s + per_task, len(prompts)))) for s in range(0, len(prompts), per_task)]
        tasks = []
        for j, chunk in enumerate(c for c in chunks if len(c)):
            items = [prompts[i] for i in chunk]
            task = Task(j, items, task_seed(self.seed, iteration, items[0][0]), worker=j % n)
            self._submit_rollout(task)
            tasks.append(task)
        return Dispatched(iteration, [i for i, _ in prompts], tasks, end_position, time.perf_counter())

    def _submit_rollout(self, t: Task) -> None:
        t.actor, t.version = self.rollout[t.worker], self.version()
        t.record, t.stats = t.actor.generate.remote(t.prompts, self.group_size, t.seed, t.version)

    def _submit_reward(self, t: Task) -> None:
        t.reward_actor = self.reward[t.index % len(self.reward)]
        t.scored, t.reward_stats = t.reward_actor.score.remote(t.record)

    def _resubmit(self, t: Task, iteration: int, stage: str):
        """Log and submit `t`'s rollout (or, for stage "reward", its scoring) again; returns the ref to wait on."""
        self.events.log("task_resubmitted", iteration, task=t.index, stage=stage, groups=[i for i, _ in t.prompts])
        if stage == "reward":
            self._submit_reward(t)
            return t.reward_stats
        self._submit_rollout(t)
        return t.stats

    def collect(self, d: Dispatched) -> tuple[list, dict[str, float]]:
        """Wait for every task's scored batch; replace dead workers and resubmit their tasks."""
        pending = {t.stats: t for t in d.tasks}
        rollout_done = None
        while pending:
            ref = first_done(list(pending))
            t = pending.pop(ref)
            rolling = ref == t.stats
            try:
                info = ray.get(ref)
            except RayActorError:  # the worker died: replace it, resubmit the task with the same seed
                if rolling:
                    self.recover(self.rollout, t.worker, t.actor)
                else:
                    self.recover(self.reward, t.index % len(self.reward), t.reward_actor)
                pending[self._resubmit(t, d.iteration, "rollout" if rolling else "reward")] = t
                continue
            except VersionMismatch:  # a broken weight broadcast left the worker an older version
                if t.resubmits >= MAX_RESUBMITS:
                    raise
                t.resubmits += 1  # resubmitted with the version the workers are being sent now
                pending[self._resubmit(t, d.iteration, "rollout (weights missing)")] = t
                continue
            except ObjectLostError:  # the rollout's output is gone with its node: generate it again
                pending[self._resubmit(t, d.iteration, "rollout (output lost)")] = t
                continue
            if rolling:
                t.info.update({f"rollout_{k}": v for k, v in info.items()})
                self._submit_reward(t)
                pending[t.reward_stats] = t
                if all(t2.info for t2 in d.tasks):
                    rollout_done = time.perf_counter()
            else:
                t.info.update(info)
        return [t.scored for t in d.tasks], self._metrics(d, rollout_done)

    def _metrics(self, d: Dispatched, rollout_done: float | None) -> dict[str, float]:
        images = sum(t.info["rollout_images"] for t in d.tasks)
        busy = {}  # seconds each worker spent generating: the pool's rate when busy, in either mode
        for t in d.tasks:
            busy[t.worker] = busy.get(t.worker, 0.0) + t.info["rollout_seconds"]
        metrics = {
            "rollout/images": float(images),
            "rollout/images_per_s": images / max(max(busy.values()), 1e-9),
            "rollout/wall_s": (rollout_done or time.perf_counter()) - d.started,  # dispatch -> last rollout stored
            "exchange/rollout_bytes": float(sum(t.info["rollout_bytes"] for t in d.tasks)),
            "restarts/rollout": float(self.events.counts["rollout_worker_replaced"]),
            "restarts/reward": float(self.events.counts["reward_worker_replaced"]),
            "restarts/learner": float(self.events.counts["learner_lost"]),
        }
        for key in {k for t in d.tasks for k in t.info if k.startswith("reward/")}:
            metrics[key] = sum(t.info[key] * t.info["images"] for t in d.tasks) / images
        return metrics

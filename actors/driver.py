"""The Ray driver of Mask-GRPO: setup -> loop -> cleanup, like `maskrl.train_local`, with each
piece in an actor pool. Only object refs pass through the driver, never trajectory data:

    prompts --generate--> record batch ref --score--> scored ref --update--> learner (v -> v+1)
                                                         weights v+1 --publish--> rollout workers

Modes: `sync` (on-policy; the rollouts of iteration k use weights k-1, as the learner has them)
and `async` (the rollouts of k+1 are dispatched before the learner updates on k, so they use
weights one version old: the lag is at most 1, and the recorded behaviour log-probs give the
importance ratios; `--resume` of an async run regenerates the one in-flight batch with the
checkpoint's weights, so only its prompt stream and iteration count match an uninterrupted
run, while a sync resume is exact). A rollout or reward worker that dies is replaced in its bundle and its
tasks are resubmitted with the same seeds; the learner checks that the batch holds exactly
the planned groups. A lost learner rank (or a lost node) stops the group: every pool is torn
down and rebuilt on the nodes that remain, and the run continues from its newest checkpoint
that verifies (`cluster.max_recoveries` times at most). Checkpoints are written atomically
(`maskrl.checkpoints`) and every fault is logged to `events.jsonl`.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, ObjectLostError, RayActorError, RayTaskError
from tqdm import tqdm

from actors import collective
from actors.learner import LearnerGroup, LearnerLost
from actors.metrics import RayMetricsSink
from actors.pools import PoolError, ResourcePool, WorkerGroup, check_cluster, dead_actors, pool_layout, rendezvous_hosts
from actors.runstate import EVENTS_FILE, DriverState, EventLog
from actors.reward import RewardActor
from actors.rollout import RolloutActor, VersionMismatch, task_seed
from actors.runtime import connect
from maskrl.checkpoints import write_atomically
from maskrl.config import ConfigError, to_yaml
from maskrl.evaluation import chunks_of, flat_metrics, held_out_prompts, resolve_checkpoint, summarise
from maskrl.grids import write_grid
from maskrl.iteration import PromptStream
from maskrl.metrics import MetricsLogger, read_metrics, summary_line
from maskrl.train_config import TrainConfig, check_train_config

# -- input checks: everything here runs before Ray is joined or any actor is created -------------
def validate(cfg: TrainConfig, resume: bool = False) -> None:
    check_train_config(cfg)
    c = cfg.cluster
    choices = {
        "cluster.mode": (c.mode, ("sync", "async")),
        "cluster.weight_transport": (c.weight_transport, ("object_store", "collective")),
        "cluster.learner.zero_stage": (c.learner.zero_stage, (0, 1, 2, 3)),
        "cluster.learner.backend": (c.learner.backend, ("auto", "gloo", "nccl")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {list(allowed)}")
    for key, value in (("iterations", cfg.iterations), ("grpo.group_size", cfg.grpo.group_size),
                       ("grpo.prompts_per_iter", cfg.grpo.prompts_per_iter), ("checkpoint_every", cfg.checkpoint_every)):
        if value < 1:
            raise ConfigError(f"config key '{key}': must be at least 1, got {value}")
    try:
        cfg.reward.validate()  # unknown reward or option: named, without building the model
    except ConfigError as err:
        raise ConfigError(f"reward: {err}") from None
    start = resolve_checkpoint(cfg.checkpoint).resolve()  # FileNotFoundError naming it
    validate_out(Path(cfg.out), start, resume)
    pool_layout(c)  # PoolError naming the pool


def validate_out(out: Path, start: Path, resume: bool) -> None:
    """The run directory: a directory we may write, and never one whose clearing (a fresh run
    replaces an older run's outputs there) would delete the checkpoint the run starts from."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"config key 'out': {str(out)!r} is a file, not a run directory")
    parent = next(p for p in (out, *out.parents) if p.exists())
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"config key 'out': cannot write under {str(parent)!r}")
    if not resume and start.is_relative_to((out / "checkpoints").resolve()):
        raise ConfigError(
            f"config key 'checkpoint': {str(start)!r} lies inside the run directory 'out' ({str(out)!r}), whose "
            "checkpoints a fresh run clears; pass --resume to continue that run, or choose another out"
        )


# -- the pools and the operations of one iteration -------------------------------------------------
MAX_RESUBMITS = 3
GRACE_S = 30.0  # how long learner rank 0 may take to leave a broken weight broadcast


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
    resubmits: int = 0  # for missing weights (bounded: MAX_RESUBMITS)


@dataclass
class Dispatched:
    iteration: int
    groups: list[int]
    tasks: list[Task]
    end_position: int  # stream position after this iteration's prompts
    started: float


class Runtime:
    """Resource pools, worker groups and learner; every method passes object refs only."""

    def __init__(self, cfg: TrainConfig, policy_dir: str, version: int, optimizer_dir: str | None, events: EventLog,
                 fail_fast: bool = True):
        """`fail_fast`: a cluster too small for the pools is an error at once (PoolError naming the
        pool); otherwise (a rebuild after a lost node) each pool waits `placement_timeout_s` for
        room, e.g. for the autoscaler's replacement node."""
        self.cfg, c, self.events = cfg, cfg.cluster, events
        specs, self.shares = pool_layout(c)
        if fail_fast:
            check_cluster(specs)
        self.pools, self.groups = {}, {}
        try:
            for spec in specs:
                self.pools[spec.name] = ResourcePool(spec, c.placement_timeout_s)
            rs, ws, ls = self.shares["rollout"], self.shares["reward"], self.shares["learner"]
            args = (policy_dir, version, cfg.rollout, rs.threads, rs.gpus > 0)
            self.rollout = self.groups["rollout"] = WorkerGroup(
                self.pools[rs.pool], rs, RolloutActor, args, c.max_restarts, c.placement_timeout_s)
            self.reward = self.groups["reward"] = WorkerGroup(
                self.pools[ws.pool], ws, RewardActor, (cfg.reward, ws.threads), c.max_restarts, c.placement_timeout_s,
                runtime_env=cfg.reward.ray_runtime_env(),  # the reward's own dependencies, if any
            )
            self.learner = LearnerGroup(self.pools[ls.pool], ls, cfg, policy_dir, version, optimizer_dir)
            ray.get([a.ready.remote() for a in (*self.rollout.actors, *self.reward.actors)])
        except BaseException:
            self.shutdown()
            raise
        self.start_version = self.worker_version = self.learner_version = version
        self.iteration = version  # the iteration in progress (set by the loop), for the event log
        self.weights_ref, self.weights_version = None, version
        self.pending: list = []  # (ref, (worker index, actor) or None for a learner rank): transfers not yet waited for
        self.weight_group: str | None = None
        self.weight_group_stale = False
        self.abandoned: set[str] = set()  # weight groups whose broadcast broke
        self.last_load_seconds = 0.0

    # -- rollouts and rewards
    def dispatch(self, iteration: int, prompts: list, end_position: int) -> Dispatched:
        n, per_task = len(self.rollout), self.cfg.cluster.groups_per_task
        chunks = [list(c) for c in np.array_split(np.arange(len(prompts)), n)] if per_task <= 0 else \
            [list(range(s, min(s + per_task, len(prompts)))) for s in range(0, len(prompts), per_task)]
        tasks = []
        for j, chunk in enumerate(c for c in chunks if len(c)):
            items = [(prompts[i][0], prompts[i][1].text) for i in chunk]
            task = Task(j, items, task_seed(self.cfg.seed, iteration, items[0][0]), worker=j % n)
            self._submit_rollout(task)
            tasks.append(task)
        return Dispatched(iteration, [i for i, _ in prompts], tasks, end_position, time.perf_counter())

    def _submit_rollout(self, t: Task) -> None:
        t.actor, t.version = self.rollout[t.worker], self.worker_version
        t.record, t.stats = t.actor.generate.remote(t.prompts, self.cfg.grpo.group_size, t.seed, t.version)

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
            [ref], _ = ray.wait(list(pending), num_returns=1)
            t = pending.pop(ref)
            rolling = ref == t.stats
            try:
                info = ray.get(ref)
            except RayActorError:  # the worker died: replace it, resubmit the task with the same seed
                if rolling:
                    self._recover(self.rollout, t.worker, t.actor, d.iteration)
                else:
                    self._recover(self.reward, t.index % len(self.reward), t.reward_actor, d.iteration)
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
        return [t.scored for t in d.tasks], metrics

    def _recover(self, group: WorkerGroup, index: int, dead, iteration: int) -> None:
        """Replace worker `index` if it still is `dead` (another of its tasks may have had it replaced)."""
        if group[index] is not dead:
            return
        actor = group.replace(index)
        kind = "rollout_worker_replaced" if group is self.rollout else "reward_worker_replaced"
        self.events.log(kind, iteration, worker=index, replacements=group.restarts)
        if group is self.rollout:
            # the replacement starts from the run's first weights; give it the current ones when the
            # learner still holds them (otherwise the next publish does, and tasks sent to it meanwhile
            # come back as VersionMismatch and are resubmitted)
            if self.worker_version != self.start_version and self.learner_version == self.worker_version:
                actor.load_weights.remote(self.worker_version, self._weights_in_object_store())
            self.weight_group_stale = True

    # -- learner and weights
    def update(self, iteration: int, scored: list, groups: list[int]) -> dict[str, float]:
        metrics = self.learner.update(iteration, scored, groups)
        self.learner_version = iteration
        return metrics

    def _weights_in_object_store(self):
        if self.weights_ref is None or self.weights_version != self.worker_version:
            self.weights_ref, self.weights_version = self.learner.publish(self.worker_version), self.worker_version
        return self.weights_ref

    def publish(self, version: int, wait: bool) -> float:
        """Weights `version` to every rollout worker; in async mode the loads queue behind the rollouts
        already running (and are awaited at the next publish). Returns the seconds spent here."""
        start = time.perf_counter()
        self.settle()
        self._send(version)
        if wait:
            self.deliver()
        return time.perf_counter() - start

    def deliver(self) -> None:
        """Wait until every rollout worker holds the current version; a transfer a worker missed (it
        died, or the broadcast broke) is sent again while the learner still holds that version."""
        for _ in range(2):
            if self.settle() or self.learner_version != self.worker_version:
                return
            self._send(self.worker_version)
        if not self.settle():
            raise RuntimeError(f"weights of version {self.worker_version} could not be delivered to the rollout workers")

    def _send(self, version: int) -> None:
        c = self.cfg.cluster
        if c.weight_transport == "collective":
            group = self._weight_group()
            bucket = int(c.weight_bucket_mb * 2**20)
            self.pending = [(ref, None) for ref in self.learner.publish_collective(version, group, bucket)] + [
                (w.receive_weights.remote(version, group, bucket), (i, w)) for i, w in enumerate(self.rollout.actors)
            ]
        else:
            self.weights_ref, self.weights_version = self.learner.publish(version), version
            self.pending = [(w.load_weights.remote(version, self.weights_ref), (i, w)) for i, w in enumerate(self.rollout.actors)]
        self.worker_version = version

    def settle(self) -> bool:
        """Wait for the outstanding weight transfers, the first failure first; returns whether every
        worker got them (`last_load_seconds`: the slowest). A dead learner rank is `LearnerLost`; a
        dead worker is replaced. A broken broadcast is abandoned: learner rank 0 leaves it (so the
        members inside fail at once) and members yet to enter skip it; the group is formed anew at
        the next publish, and a worker that missed a version gets the next one (its tasks of the
        missed version come back as VersionMismatch and are resubmitted)."""
        pending, self.pending, slowest, missed = dict(self.pending), [], 0.0, []
        collective_transport = self.cfg.cluster.weight_transport == "collective"
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            member = pending.pop(ref)
            try:
                seconds = ray.get(ref)
            except (RayActorError, RayTaskError) as err:
                if self.learner.dead_ranks():  # the weights' source is gone: no worker can have them
                    raise LearnerLost(f"a learner rank is gone while publishing weights: {err}") from err
                if isinstance(err, RayTaskError) and not collective_transport:
                    raise  # a load that failed on a live worker: a real error
                if member is not None:
                    missed.append(member[0])
                    if isinstance(err, RayActorError):
                        self._recover(self.rollout, *member, self.iteration)
                if collective_transport and self.weight_group not in self.abandoned:
                    self._abandon_weight_group(err)
                continue
            if isinstance(seconds, float):
                slowest = max(slowest, seconds)
        self.last_load_seconds = slowest
        if missed:
            self.events.log("weight_transfer_failed", self.iteration, version=self.worker_version, workers=sorted(missed))
        return not missed

    def _abandon_weight_group(self, err: BaseException) -> None:
        self.weight_group_stale = True
        self.abandoned.add(self.weight_group)
        collective.abandon(self.weight_group)
        try:
            ray.get(self.learner.ranks[0].leave_group.remote(self.weight_group), timeout=GRACE_S)
        except (RayActorError, GetTimeoutError) as stuck:
            raise LearnerLost(f"learner rank 0 is stuck in a broken weight broadcast ({err})") from stuck

    def _replace_dead_rollout_workers(self) -> None:
        for i in dead_actors(self.rollout.actors, timeout_s=5.0):
            self._recover(self.rollout, i, self.rollout[i], self.iteration)

    def _weight_group(self) -> str:
        """The collective group {learner rank 0, rollout workers}; formed anew after a worker is replaced."""
        if self.weight_group and not self.weight_group_stale:
            return self.weight_group
        self._replace_dead_rollout_workers()
        members = [self.learner.ranks[0], *self.rollout.actors]
        if self.weight_group:  # best effort: a member that is gone has left already
            ray.wait([m.leave_group.remote(self.weight_group) for m in members], num_returns=len(members), timeout=60)
        self.weight_group = f"maskrl-weights-{uuid.uuid4().hex[:12]}"
        try:
            store, binds = rendezvous_hosts(ray.get([m.address.remote() for m in members]))
            use_nccl = self.shares["learner"].gpus > 0 and self.shares["rollout"].gpus > 0
            backend = collective.NCCL if use_nccl else collective.GLOO
            ray.get([m.join_group.remote(len(members), r, self.weight_group, store, binds[r], backend) for r, m in enumerate(members)])
        except RayActorError as err:  # a member died while joining
            if self.learner.dead_ranks():
                raise LearnerLost(f"a learner rank is gone while forming the weight group: {err}") from err
            self.weight_group_stale = True
            return self._weight_group()  # bounded: every retry replaces a worker (cluster.max_restarts)
        self.weight_group_stale = False
        return self.weight_group

    # -- evaluation, samples, checkpoints (on rollout worker 0, which holds the current weights)
    def _on_worker0(self, method: str, *args):
        self.deliver()  # worker 0 holds the current weights (async: the last load may still be queued)
        for attempt in range(2):
            actor = self.rollout[0]
            try:
                return ray.get(getattr(actor, method).remote(*args))
            except RayActorError:
                if attempt:
                    raise
                self._recover(self.rollout, 0, actor, self.iteration)

    def evaluate(self) -> dict[str, float]:
        """Held-out ShapesEval of the current weights, its prompt chunks spread over the rollout
        workers (each chunk is seeded on its own: the result does not depend on the worker count);
        a chunk whose worker died or held other weights is redone on worker 0."""
        self.deliver()
        e, version = self.cfg.eval, self.worker_version
        prompts = held_out_prompts(e.prompts, e.seed)
        sent = [(c, self.rollout[c % len(self.rollout)]) for c in chunks_of(prompts)]
        refs = [actor.eval_chunk.remote(e, c, version) for c, actor in sent]
        passed = []
        for (chunk, actor), ref in zip(sent, refs):
            try:
                passed += ray.get(ref)
            except (RayActorError, RayTaskError) as err:
                if isinstance(err, RayActorError):
                    self._recover(self.rollout, chunk % len(self.rollout), actor, self.iteration)
                self.deliver()
                passed += self._on_worker0("eval_chunk", e, chunk, self.worker_version)
        return flat_metrics(summarise(prompts, e.samples, passed))

    def sample_grid(self, prompts: list[str], samples: int) -> np.ndarray:
        e = self.cfg.eval
        return self._on_worker0("sample_grid", prompts, samples, e.sampling, e.seed)

    def save(self, state: DriverState) -> Path:
        """The learner's weights and optimiser shards plus the driver state, as one atomic checkpoint
        at `state.checkpoint`."""
        self.settle()

        def write(staging: Path) -> dict:
            digests = self.learner.save(str(staging), {"iteration": state.iteration})
            state.write(staging)
            return digests

        return write_atomically(state.checkpoint, write)

    def shutdown(self) -> None:
        """Best effort (actors or nodes may be gone already): an error here must not hide the one
        that ended the attempt. Removing the placement groups also ends any actor left in them."""
        actors = [a for g in self.groups.values() for a in g.actors] + (self.learner.ranks if hasattr(self, "learner") else [])
        for a in actors:
            with contextlib.suppress(Exception):
                ray.kill(a)
        for p in self.pools.values():
            with contextlib.suppress(Exception):
                p.remove()


# -- artefacts ---------------------------------------------------------------------------------------
def _clear_run(run: Path) -> None:
    """A fresh run in a directory that holds an older one replaces that run's outputs (only those)."""
    for name in (EVENTS_FILE, "metrics.jsonl", "summary.json"):
        (run / name).unlink(missing_ok=True)
    for name in ("tensorboard", "grids", "checkpoints"):
        shutil.rmtree(run / name, ignore_errors=True)


@dataclass
class TrainResult:
    run: Path
    checkpoint: Path
    base: dict[str, float]
    final: dict[str, float]
    grids: Path
    dashboard: str | None


Hook = Callable[[int, "Runtime"], None]


# -- the loop ----------------------------------------------------------------------------------------
def train(cfg: TrainConfig, resume: bool = False, stop_after: int | None = None, after_dispatch: Hook | None = None) -> TrainResult:
    """Run (or, with `resume`, continue in `cfg.out`) a Mask-GRPO training on Ray.

    A lost learner rank or node rebuilds every pool and continues from the newest checkpoint
    that verifies, at most `cluster.max_recoveries` times. `stop_after=k` stops after iteration
    k's checkpoint as an interruption would (for tests and preemptible jobs); `after_dispatch(
    iteration, runtime)` is called once an iteration's rollouts are in flight (tests use it to
    inject faults mid-iteration)."""
    validate(cfg, resume)
    run = Path(cfg.out)
    if not resume:
        _clear_run(run)
    run.mkdir(parents=True, exist_ok=True)
    events = EventLog(run)
    state = DriverState.read(run, events) if resume else None
    (run / "config.yaml").write_text(to_yaml(cfg))
    started_ray, dashboard = connect(cfg.cluster)
    try:
        for recoveries in range(cfg.cluster.max_recoveries + 1):
            nodes = _alive_nodes()
            try:
                return _train_from(cfg, run, state, events, dashboard, stop_after, after_dispatch, fail_fast=not recoveries)
            except PoolError as err:
                if not recoveries:
                    raise
                raise PoolError(f"{err}; the run lost a node and the pools no longer fit: `maskrl train --resume` "
                                f"continues from iteration {state.iteration if state else 0} once the cluster has room") from err
            except LearnerLost as err:
                state = DriverState.latest(run, events)  # None: start over from the run's first weights
                resumed = state.iteration if state else 0
                if recoveries == cfg.cluster.max_recoveries:
                    events.log("gave_up", resumed, error=str(err), max_recoveries=cfg.cluster.max_recoveries)
                    then = f"`maskrl train --resume` continues from iteration {resumed}" if state else \
                        "no checkpoint was written yet: start the run again"
                    raise RuntimeError(
                        f"the learner was lost {recoveries + 1} times (cluster.max_recoveries={cfg.cluster.max_recoveries}); "
                        f"last: {err}. {then}"
                    ) from err
                events.log("learner_lost", err.iteration, error=str(err), resume_from=resumed,
                           checkpoint=state.checkpoint if state else cfg.checkpoint,
                           nodes_lost=sorted(nodes - _alive_nodes()))  # those the cluster has noticed by now
    finally:
        if started_ray:
            ray.shutdown()
    raise AssertionError("unreachable")


def _alive_nodes() -> set[str]:
    return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}


def _train_from(
    cfg: TrainConfig, run: Path, state: DriverState | None, events: EventLog, dashboard: str | None,
    stop_after: int | None, after_dispatch: Hook | None, fail_fast: bool,
) -> TrainResult:
    """One attempt: build the pools from `state` (None: the run's first weights) and train to the end."""
    start = state.iteration if state else 0
    policy_dir = state.checkpoint if state else str(resolve_checkpoint(cfg.checkpoint))
    optimizer_dir = str(Path(state.checkpoint) / "optimizer") if state else None
    stream = PromptStream(cfg.seed, cfg.category_weights, position=state.stream_position if state else 0)
    # rows logged after the point we continue from belong to iterations that are about to be redone
    kept = [m for m in read_metrics(run) if m["iteration"] <= start]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in kept))
    rt = Runtime(cfg, policy_dir, start, optimizer_dir, events, fail_fast)
    log = MetricsLogger(run, sinks=(RayMetricsSink(run.name),))
    try:
        grid_prompts = [p.text for p in held_out_prompts(6, cfg.eval.seed)]
        (run / "grids").mkdir(exist_ok=True)
        (run / "grids" / "prompts.txt").write_text("\n".join(grid_prompts) + "\n")
        base = {k: v for m in kept if m["iteration"] == 0 for k, v in m.items() if k.startswith("eval/")}
        if not any(m["iteration"] == 0 for m in kept):
            base = rt.evaluate() if cfg.eval.before else {}
            log.log(0, base)
        if not (run / "grids" / "iter_00000.png").exists():
            log.image(0, "samples", write_grid(grid_prompts, rt.sample_grid(grid_prompts, 4), run / "grids" / "iter_00000.png"))
        if dashboard:
            tqdm.write(f"ray dashboard: http://{dashboard}")
        tqdm.write(f"base held-out ShapesEval: {base.get('eval/overall', float('nan')):.3f}")
        metrics, last = _loop(cfg, run, rt, stream, start, log, grid_prompts, stop_after, after_dispatch)
    except LearnerLost as err:
        err.iteration = rt.iteration
        raise
    finally:
        log.close()
        rt.shutdown()
    final = {k: v for k, v in metrics.items() if k.startswith("eval/")}
    (run / "summary.json").write_text(json.dumps({"base": base, "final": final}, indent=2))
    return TrainResult(run, run / "checkpoints" / f"iter_{last:05d}", base, final, run / "grids", dashboard)


def _loop(
    cfg: TrainConfig, run: Path, rt: Runtime, stream: PromptStream, start: int, log: MetricsLogger,
    grid_prompts: list[str], stop_after: int | None, after_dispatch: Hook | None,
) -> tuple[dict[str, float], int]:
    """Iterations start+1 .. cfg.iterations; returns the last iteration's metrics and number."""
    P, asynchronous = cfg.grpo.prompts_per_iter, cfg.cluster.mode == "async"

    def dispatch(iteration: int) -> Dispatched:
        d = rt.dispatch(iteration, stream.take(P), stream.position)
        if after_dispatch:
            after_dispatch(iteration, rt)
        return d

    ahead = dispatch(start + 1) if start < cfg.iterations else None
    metrics: dict[str, float] = {}
    last = start
    for it in tqdm(range(start + 1, cfg.iterations + 1), desc="mask-grpo", initial=start, total=cfg.iterations, dynamic_ncols=True):
        rt.iteration = it  # where a fault is reported to have happened
        t0 = time.perf_counter()
        current, ahead = ahead, None
        scored, metrics = rt.collect(current)
        metrics["time/rollout_wait"] = time.perf_counter() - t0
        if asynchronous and it < cfg.iterations:
            ahead = dispatch(it + 1)  # overlaps the update below, with weights it - 1
        t1 = time.perf_counter()
        metrics.update(rt.update(it, scored, current.groups))
        metrics["time/learner"] = time.perf_counter() - t1
        metrics["time/weight_sync"] = rt.publish(it, wait=not asynchronous)
        metrics["time/weight_load"] = rt.last_load_seconds  # async: the load of the previous version
        if not asynchronous and it < cfg.iterations:
            ahead = dispatch(it + 1)
        metrics["time/iteration"] = time.perf_counter() - t0
        if (cfg.eval.every and it % cfg.eval.every == 0) or it == cfg.iterations:
            metrics.update(rt.evaluate())
        if (cfg.grid_every and it % cfg.grid_every == 0) or it == cfg.iterations:
            log.image(it, "samples", write_grid(grid_prompts, rt.sample_grid(grid_prompts, 4), run / "grids" / f"iter_{it:05d}.png"))
        metrics["stream/position"] = float(current.end_position)
        # the row before the checkpoint: a crash between the two leaves a row past the checkpoint,
        # which the resumed run drops and writes again (the other order could lose the row)
        log.log(it, metrics)
        if it % cfg.checkpoint_every == 0 or it == cfg.iterations:
            state = DriverState(
                iteration=it, stream_position=current.end_position, seed=cfg.seed,
                checkpoint=str(run / "checkpoints" / f"iter_{it:05d}"),
                extra={"mode": cfg.cluster.mode, "learner_ranks": cfg.cluster.learner.ranks,
                       "zero_stage": cfg.cluster.learner.zero_stage},
            )
            rt.save(state)
        tqdm.write(summary_line(it, metrics) + f" lag={metrics['version/lag_max']:.0f} img/s={metrics['rollout/images_per_s']:.1f}")
        last = it
        if stop_after is not None and it >= stop_after and it % cfg.checkpoint_every == 0:
            break
    return metrics, last

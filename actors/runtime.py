"""Joining Ray, and the runtime of one training attempt: the resource pools, the worker groups
and the learner, with the task dispatcher and the weight sync wired to them. Every method
passes object refs only; a dead rollout or reward worker is replaced in its bundle here."""
from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import psutil
import ray
from ray.exceptions import RayActorError, RayTaskError

from actors.dispatch import Dispatcher
from actors.learner_group import LearnerGroup
from actors.pools import ResourcePool, WorkerGroup, check_cluster, pool_layout, spread_by_cost
from actors.reward import RewardActor
from actors.rollout import RolloutActor
from actors.runstate import DriverState, EventLog
from actors.weight_sync import WeightSync
from maskrl.checkpoints import write_atomically
from maskrl.cli import CommandError
from maskrl.evaluation import chunk_length, chunks_of, eval_protocols, flat_metrics, held_out_prompts, summarise
from maskrl.train_config import ClusterConfig, TrainConfig


logger = logging.getLogger(__name__)
T = TypeVar("T")

# -- starting Ray on a slow or busy machine ------------------------------------------------------------
# Whoever starts a node (`ray start`, ray.init(address="local"), ray.cluster_utils.Cluster) waits for
# its raylet to register with the GCS, as long as Ray's setting raylet_start_wait_time_s allows
# (the environment variable below, read by Ray's C++ core in the waiting process). On a loaded
# 2-core machine the raylet can miss Ray's default ("The current node timed out during startup").
RAYLET_WAIT_SETTING = "RAY_raylet_start_wait_time_s"
RAYLET_WAIT_S = 120
# Ray starts its worker processes at nice 15, so that they yield to its own daemons. maskrl's
# workers are the job itself: at 15, any other busy process at the default priority takes ~28/29
# of a shared core from them (two `while True: pass` loops left a learner rank 3% of a core, its
# set-up unfinished after 15 minutes). At 0 they share fairly; the raylet and GCS stay at 0 too.
WORKER_NICENESS_SETTING = "RAY_worker_niceness"
WORKER_NICENESS = 0


class RayStartError(CommandError, RuntimeError):
    """Ray could not be started (or joined), twice; the message names the setting to raise.
    `maskrl train` prints it without a traceback."""


def tolerate_loaded_machine(env=None) -> int:
    """In `env` (default: this process's environment, which the Ray processes it starts inherit),
    unless the user set them: the raylet's registration wait to RAYLET_WAIT_S seconds, and the
    workers' nice level to WORKER_NICENESS. Return the registration wait in force."""
    env = os.environ if env is None else env
    for setting, value in ((RAYLET_WAIT_SETTING, RAYLET_WAIT_S), (WORKER_NICENESS_SETTING, WORKER_NICENESS)):
        if not str(env.get(setting, "")).strip():
            env[setting] = str(value)
    try:
        return int(float(env[RAYLET_WAIT_SETTING]))
    except ValueError:
        return RAYLET_WAIT_S


def _descendants() -> dict[int, psutil.Process]:
    try:
        return {p.pid: p for p in psutil.Process().children(recursive=True)}
    except psutil.Error:
        return {}


def _stop(procs: list[psutil.Process]) -> None:
    """SIGTERM, then SIGKILL what is left after 3 s."""
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=3)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)


def _last_lines(err: BaseException, n: int = 8) -> str:
    lines = [line for line in str(err).strip().splitlines() if line.strip()] or [type(err).__name__]
    return "\n    ".join(lines[-n:])


def start_ray(attempt: Callable[[], T], what: str = "start Ray", undo: Callable[[], None] | None = None) -> T:
    """Return `attempt()` (which starts or joins Ray: ray.init, a ray.cluster_utils.Cluster, a
    `ray start` subprocess), tolerating a slow machine: with the registration wait raised and
    the workers at a fair priority (`tolerate_loaded_machine`) and, should the attempt fail, one
    clean retry after stopping what it left: `undo()` (by default ray.shutdown() if the attempt initialised Ray), then every process
    started below this one during the attempt (gcs_server, raylet, dashboard, ...). If the retry
    fails too: a RayStartError naming the setting, with both attempts' last lines. Argument errors
    (ValueError, TypeError) are raised at once: a retry cannot help them."""
    wait = tolerate_loaded_machine()
    failures = []
    for tries in (1, 2):
        before, initialised, t0 = _descendants(), ray.is_initialized(), time.monotonic()
        try:
            return attempt()
        except (ValueError, TypeError):
            raise
        except Exception as err:  # Ray raises bare Exception for "timed out during startup"
            failures.append((err, time.monotonic() - t0))
        with contextlib.suppress(Exception):
            if undo is not None:
                undo()
            elif not initialised and ray.is_initialized():
                ray.shutdown()
        _stop([p for pid, p in _descendants().items() if pid not in before])
        if tries == 1:
            logger.warning("could not %s in %.0f s (%s); stopped what it left, trying once more",
                           what, failures[0][1], _last_lines(failures[0][0], 1))
    (first, s1), (second, s2) = failures
    raise RayStartError(
        f"could not {what}, in two attempts. On a loaded or slow machine the raylet may need longer to "
        f"register: raise {RAYLET_WAIT_SETTING} (now {wait} s), e.g. `export {RAYLET_WAIT_SETTING}={2 * wait}`, "
        f"or free some CPU cores.\n  first attempt (failed after {s1:.0f} s):\n    {_last_lines(first)}"
        f"\n  second attempt (failed after {s2:.0f} s):\n    {_last_lines(second)}"
    ) from second


def init_ray(what: str = "start a local Ray instance", **kwargs):
    """ray.init(**kwargs) through `start_ray`: a slow raylet is waited for, a failed start retried once."""
    return start_ray(lambda: ray.init(**kwargs), what)


def connect(cluster: ClusterConfig) -> tuple[bool, str | None]:
    """Join the cluster at RAY_ADDRESS when set, else start a local instance (dashboard on the
    configured loopback host, token authentication on). Returns (whether this call started the
    instance, which the caller then shuts down; dashboard URL). Either is tried twice
    (`start_ray`); a RayStartError says what to raise."""
    if ray.is_initialized():  # e.g. a test session or a notebook that already joined
        return False, None
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    address = os.environ.get("RAY_ADDRESS")
    if address:
        info = init_ray(f"join the Ray cluster at RAY_ADDRESS={address}", address=address,
                        runtime_env={"env_vars": env}, logging_level=logging.WARNING)
        return False, info.dashboard_url
    # Token authentication: Ray 2.60 turns it on by default for a local instance (unless
    # RAY_AUTH_MODE=disabled), generating ~/.ray/auth_token and requiring it from every client,
    # the dashboard included. (Setting RAY_AUTH_MODE here would be too late: Ray reads it at import.)
    os.environ.update(env)  # local workers inherit the driver's environment
    info = init_ray(address="local", include_dashboard=True, dashboard_host=cluster.dashboard_host,
                    logging_level=logging.WARNING)
    return True, info.dashboard_url


class Runtime:
    """The pools of one attempt, built from `policy_dir` at `version`."""

    def __init__(self, cfg: TrainConfig, policy_dir: str, version: int, optimizer_dir: str | None, events: EventLog,
                 fail_fast: bool = True):
        """`fail_fast`: a cluster too small for the pools is an error at once (PoolError naming the
        pool); otherwise (a rebuild after a lost node) each pool waits `placement_timeout_s` for
        room, e.g. for the autoscaler's replacement node."""
        self.cfg, c, self.events = cfg, cfg.cluster, events
        self.iteration = version  # the iteration in progress (set by the loop), for the event log
        specs, shares = pool_layout(c)
        if fail_fast:
            check_cluster(specs)
        self.pools, self.groups = {}, {}
        try:
            for spec in specs:
                self.pools[spec.name] = ResourcePool(spec, c.placement_timeout_s)
            rs, ws, ls = shares["rollout"], shares["reward"], shares["learner"]
            self.rollout = self.groups["rollout"] = WorkerGroup(
                self.pools[rs.pool], rs, RolloutActor,
                (policy_dir, version, cfg.sampling, cfg.lora, rs.threads, rs.gpus > 0, cfg.grpo.branch),
                c.max_restarts, c.placement_timeout_s, on_replace=lambda actor: self.weights.worker_replaced(actor))
            self.reward = self.groups["reward"] = WorkerGroup(
                self.pools[ws.pool], ws, RewardActor, (cfg.reward, policy_dir, ws.threads), c.max_restarts, c.placement_timeout_s,
                runtime_env=cfg.reward.ray_runtime_env(),  # the reward's own dependencies, if any
            )
            self.learner = LearnerGroup(self.pools[ls.pool], ls, cfg, policy_dir, version, optimizer_dir)
            ray.get(self.rollout.call_all("ready") + self.reward.call_all("ready"))
        except BaseException:
            self.shutdown()
            raise
        self.weights = WeightSync(self.learner, self.rollout, c.weight_transport, c.weight_bucket_mb,
                                  use_nccl=ls.gpus > 0 and rs.gpus > 0, version=version, events=events,
                                  recover=lambda i, dead: self.recover(self.rollout, i, dead), iteration=lambda: self.iteration)
        self.tasks = Dispatcher(self.rollout, self.reward, cfg.grpo.group_size, c.groups_per_task, cfg.seed, events,
                                version=lambda: self.weights.versions.sent, recover=self.recover)

    def recover(self, group: WorkerGroup, index: int, dead) -> None:
        """Replace worker `index` if it still is `dead` (another of its tasks may have had it replaced)."""
        if group[index] is not dead:
            return
        group.replace(index)
        kind = "rollout_worker_replaced" if group is self.rollout else "reward_worker_replaced"
        self.events.log(kind, self.iteration, worker=index, replacements=group.restarts)

    def update(self, iteration: int, scored: list, groups: list[int]) -> dict[str, float]:
        metrics = self.learner.update(iteration, scored, groups)
        self.weights.learner_updated(iteration)
        return metrics

    # -- evaluation and samples, on rollout workers holding the current weights
    def evaluate(self) -> dict[str, float]:
        """Held-out ShapesEval of the current weights, its prompt chunks spread over the rollout
        workers (each chunk is seeded on its own: the result does not depend on the worker count);
        a chunk whose worker died or held other weights is redone on worker 0."""
        self.weights.deliver()
        version = self.weights.versions.sent
        protocols = eval_protocols(self.cfg.eval)
        prompts = {prefix: held_out_prompts(p.prompts, p.seed) for prefix, p in protocols.items()}
        jobs = [(prefix, c) for prefix in protocols for c in chunks_of(prompts[prefix])]
        costs = [chunk_length(prompts[prefix], c) * (2 if protocols[prefix].sampling.cfg_scale else 1) for prefix, c in jobs]
        sent = [(prefix, c, self.rollout[w]) for (prefix, c), w in zip(jobs, spread_by_cost(costs, len(self.rollout)))]
        refs = [actor.eval_chunk.remote(protocols[prefix], c, version) for prefix, c, actor in sent]
        passed = {prefix: [] for prefix in protocols}
        for (prefix, chunk, actor), ref in zip(sent, refs):
            try:
                passed[prefix] += ray.get(ref)
            except (RayActorError, RayTaskError) as err:
                if isinstance(err, RayActorError):
                    self.recover(self.rollout, chunk % len(self.rollout), actor)
                passed[prefix] += self._on_worker0("eval_chunk", protocols[prefix], chunk, self.weights.versions.sent)
        return {k: v for prefix, e in protocols.items()
                for k, v in flat_metrics(summarise(prompts[prefix], e.samples, passed[prefix]), prefix).items()}

    def sample_grid(self, prompts: list[str], samples: int) -> np.ndarray:
        e = self.cfg.eval
        return self._on_worker0("sample_grid", prompts, samples, e.sampling, e.seed)

    def _on_worker0(self, method: str, *args):
        self.weights.deliver()  # async: the last load may still be queued
        for attempt in range(2):
            actor = self.rollout[0]
            try:
                return ray.get(getattr(actor, method).remote(*args))
            except RayActorError:
                if attempt:
                    raise
                self.recover(self.rollout, 0, actor)

    def save(self, state: DriverState) -> Path:
        """The learner's weights and optimiser shards plus the driver state, as one atomic checkpoint
        at `state.checkpoint`."""
        self.weights.settle()

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

"""Resource pools (placement groups sized from the config) and the worker groups placed in them.

The same config runs on a laptop and a GPU cluster: each pool is `workers x {CPU, GPU}`
bundles in its own placement group; on CPU the GPU counts are simply 0. Before anything is
created the demand is checked against the cluster, and a pool that cannot fit fails with a
message naming it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from maskrl.train_config import ClusterConfig


class PoolError(ValueError):
    pass


ROLES = ("rollout", "reward", "learner")


@dataclass(frozen=True)
class PoolSpec:
    """One placement group: `count` identical bundles of CPUs, GPUs and custom resources."""

    name: str
    count: int
    cpus: float
    gpus: float
    resources: tuple[tuple[str, float], ...] = ()
    strategy: str = "PACK"

    @property
    def bundle(self) -> dict[str, float]:
        base = {k: v for k, v in (("CPU", self.cpus), ("GPU", self.gpus)) if v > 0}
        return base | {k: v for k, v in self.resources if v > 0}


@dataclass(frozen=True)
class Share:
    """What one actor of a role takes of its bundle (the whole bundle unless colocated)."""

    pool: str
    cpus: float
    gpus: float

    @property
    def threads(self) -> int:
        """torch threads for one actor: its whole CPUs, at least one."""
        return max(1, int(self.cpus))


COLOCATED = "learner+rollout"


def pool_layout(cluster: ClusterConfig) -> tuple[list[PoolSpec], dict[str, Share]]:
    """The placement groups to create and each role's share of its bundles; errors name the pool."""
    pools = {name: getattr(cluster, name) for name in ROLES}
    for name, pc in pools.items():
        if pc.workers < 1:
            raise PoolError(f"pool '{name}' needs at least 1 worker, config asks for {pc.workers}")
        cpus, gpus = pc.cpus_per_worker, pc.gpus_per_worker
        if cpus < 0 or gpus < 0 or not (cpus > 0 or gpus > 0):
            raise PoolError(f"pool '{name}': each worker needs some CPU or GPU (cpus={cpus}, gpus={gpus})")
        if any(v < 0 for v in pc.resources.values()):
            raise PoolError(f"pool '{name}': custom resources must be >= 0, got {dict(pc.resources)}")
    lc, rc = cluster.learner, cluster.rollout
    if lc.gpus_per_worker not in (0, 1):
        raise PoolError(f"pool 'learner': gpus_per_worker must be 0 or 1 (one DeepSpeed rank per GPU), got {lc.gpus_per_worker}")

    def spec(name: str) -> PoolSpec:
        pc = pools[name]
        return PoolSpec(name, pc.workers, pc.cpus_per_worker, pc.gpus_per_worker, tuple(sorted(pc.resources.items())),
                        str(pc.strategy))

    shares = {name: Share(name, pc.cpus_per_worker, pc.gpus_per_worker) for name, pc in pools.items()}
    if not cluster.colocate:
        return [spec(name) for name in ROLES], shares
    if rc.workers != lc.workers:
        raise PoolError(
            f"pool '{COLOCATED}': cluster.colocate puts rollout worker i on learner rank i's bundle, so "
            f"cluster.rollout.workers ({rc.workers}) must equal cluster.learner.workers ({lc.workers})"
        )
    # one bundle per learner rank holding both actors; a GPU they both want is shared (half each)
    gpus = max(lc.gpus_per_worker, rc.gpus_per_worker)
    both = lc.gpus_per_worker > 0 and rc.gpus_per_worker > 0
    resources = {**rc.resources, **lc.resources}
    combined = PoolSpec(COLOCATED, lc.workers, lc.cpus_per_worker + rc.cpus_per_worker, gpus,
                        tuple(sorted(resources.items())), str(lc.strategy))
    shares["learner"] = Share(COLOCATED, lc.cpus_per_worker, gpus / 2 if both else lc.gpus_per_worker)
    shares["rollout"] = Share(COLOCATED, rc.cpus_per_worker, gpus / 2 if both else rc.gpus_per_worker)
    return [combined, spec("reward")], shares


def check_capacity(specs: list[PoolSpec], total: dict[str, float], largest_node: dict[str, float]) -> None:
    """Fail fast, naming the pool, when the cluster cannot hold the pools."""
    for s in specs:
        for res, per in s.bundle.items():
            have = total.get(res, 0.0)
            if per * s.count > have + 1e-9:
                raise PoolError(
                    f"pool '{s.name}' needs {s.count} x {per:g} {res} = {per * s.count:g} {res}, "
                    f"but the Ray cluster has {have:g} {res}"
                )
            if per > largest_node.get(res, 0.0) + 1e-9:
                raise PoolError(
                    f"pool '{s.name}' needs {per:g} {res} per worker, but no node of the Ray cluster has that many "
                    f"(largest: {largest_node.get(res, 0.0):g})"
                )
    for res in sorted({r for s in specs for r in s.bundle}):
        need = sum(s.bundle.get(res, 0.0) * s.count for s in specs)
        if need > total.get(res, 0.0) + 1e-9:
            parts = ", ".join(f"{s.name} {s.bundle.get(res, 0.0) * s.count:g}" for s in specs if s.bundle.get(res))
            raise PoolError(f"the pools need {need:g} {res} together ({parts}), but the Ray cluster has {total.get(res, 0.0):g} {res}")


def check_cluster(specs: list[PoolSpec]) -> None:
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    names = {r for s in specs for r in s.bundle}
    largest = {res: max((n.get(res, 0.0) for n in nodes), default=0.0) for res in names}
    check_capacity(specs, ray.cluster_resources(), largest)


class ResourcePool:
    """One placement group of `count` identical bundles; actor i is pinned to bundle i."""

    def __init__(self, spec: PoolSpec, timeout_s: float):
        self.spec = spec
        self.pg = placement_group([spec.bundle] * spec.count, strategy=spec.strategy, name=f"maskrl-{spec.name}")
        ready, _ = ray.wait([self.pg.ready()], timeout=timeout_s)
        if not ready:
            remove_placement_group(self.pg)
            raise PoolError(
                f"pool '{spec.name}': placement group of {spec.count} x {spec.bundle} was not placed within "
                f"{timeout_s:g}s (the cluster's free resources are {ray.available_resources()})"
            )

    def options(self, index: int, share: Share) -> dict:
        return {
            "num_cpus": share.cpus,
            "num_gpus": share.gpus,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=index),
        }

    def remove(self) -> None:
        remove_placement_group(self.pg)


class WorkerGroup:
    """The actors of one role; a dead one is replaced in its bundle (at most `max_restarts` times).

    A bundle on a lost node is re-placed by Ray on another node with room; a replacement that
    gets no room within `timeout_s` fails, naming the pool, rather than waiting forever."""

    def __init__(self, pool: ResourcePool, share: Share, actor_cls, args: tuple, max_restarts: int,
                 timeout_s: float, runtime_env: dict | None = None, on_replace=None):
        """`on_replace(actor)` runs after a replacement has started (e.g. to hand it current weights)."""
        self.pool, self.share, self.actor_cls, self.args = pool, share, actor_cls, args
        self.on_replace = on_replace
        self.max_restarts, self.timeout_s = max_restarts, timeout_s
        self.extra = {"runtime_env": runtime_env} if runtime_env else {}
        self.restarts = 0
        self.actors = [self._start(i, args) for i in range(pool.spec.count)]

    def _start(self, index: int, args: tuple):
        return self.actor_cls.options(**self.pool.options(index, self.share), **self.extra).remote(*args)

    def __len__(self) -> int:
        return len(self.actors)

    def __getitem__(self, index: int):
        return self.actors[index]

    def call_all(self, method: str, *args) -> list:
        """Refs of `method(*args)` on every worker, in worker order."""
        return [getattr(a, method).remote(*args) for a in self.actors]

    def replace(self, index: int, args: tuple | None = None):
        self.restarts += 1
        if self.restarts > self.max_restarts:
            raise RuntimeError(f"pool '{self.pool.spec.name}': more than max_restarts={self.max_restarts} workers died")
        try:
            ray.kill(self.actors[index])
        except Exception:  # already gone
            pass
        actor = self.actors[index] = self._start(index, args or self.args)
        ready, _ = ray.wait([actor.ready.remote()], timeout=self.timeout_s)
        if not ready:
            raise PoolError(
                f"pool '{self.pool.spec.name}': the replacement of worker {index} was not running within "
                f"{self.timeout_s:g}s (its node is gone and no other node has {self.pool.spec.bundle} free)"
            )
        ray.get(ready[0])  # a replacement that fails to start raises its own error here
        if self.on_replace:
            self.on_replace(actor)
        return actor


def spread_by_cost(costs: list[float], workers: int) -> list[int]:
    """A worker for each job, longest first onto the least-loaded worker (LPT): a static split by
    index leaves the worker with the costlier jobs (a CFG chunk does two forwards an image) last."""
    load, chosen = [0.0] * workers, [0] * len(costs)
    for job in sorted(range(len(costs)), key=lambda j: -costs[j]):
        chosen[job] = min(range(workers), key=load.__getitem__)
        load[chosen[job]] += costs[job]
    return chosen


def first_done(refs: list) -> ray.ObjectRef:
    """The first of `refs` to finish (a failure included): waiting for calls one at a time in
    completion order surfaces a failure at once, not after calls stuck with a dead peer."""
    [done], _ = ray.wait(refs, num_returns=1)
    return done


class CallsTimedOut(TimeoutError):
    """Calls still running when a bounded `wait_each` gave up; `pending` are their indices."""

    def __init__(self, pending: list[int], timeout_s: float):
        super().__init__(f"calls {pending} still running after {timeout_s:g}s")
        self.pending = pending


def wait_each(refs: list, timeout_s: float | None = None) -> None:
    """Wait for every call, raising the first failure as soon as it happens; with `timeout_s`,
    `CallsTimedOut` naming the calls unfinished once that long has passed in all."""
    pending = list(refs)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while pending:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        done, _ = ray.wait(pending, num_returns=1, timeout=left)
        if not done:
            raise CallsTimedOut([i for i, ref in enumerate(refs) if ref in pending], timeout_s)
        pending.remove(done[0])
        ray.get(done[0])


def dead_actors(actors: list, timeout_s: float) -> list[int]:
    """Indices of the actors that are dead. One that does not answer within `timeout_s` (busy with
    earlier calls, or stuck) is not counted: only a dead one is known to be unusable."""
    refs = [a.ready.remote() for a in actors]
    ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    dead = []
    for i, ref in enumerate(refs):
        try:
            ray.get(ref, timeout=0)
        except RayActorError:
            dead.append(i)
        except GetTimeoutError:
            pass
    return dead


def rendezvous_hosts(addresses: list[tuple[str, str]]) -> tuple[str, list[str]]:
    """(store/master host, each member's bind host): loopback when all members share one node."""
    if len({node for node, _ in addresses}) == 1:
        return "127.0.0.1", ["127.0.0.1"] * len(addresses)
    return addresses[0][1], [ip for _, ip in addresses]

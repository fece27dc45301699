"""Resource pools (placement groups sized from the config) and the worker groups placed in them.

The same config runs on a laptop and a GPU cluster: each pool is `workers x {CPU, GPU}`
bundles in its own placement group; on CPU the GPU counts are simply 0. Before anything is
created the demand is checked against the cluster, and a pool that cannot fit fails with a
message naming it.
"""
from __future__ import annotations

from dataclasses import dataclass

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from maskrl.train_config import ClusterConfig


class PoolError(ValueError):
    pass


@dataclass(frozen=True)
class PoolSpec:
    name: str
    count: int
    cpus: float
    gpus: float

    @property
    def bundle(self) -> dict[str, float]:
        return {k: v for k, v in (("CPU", self.cpus), ("GPU", self.gpus)) if v > 0}

    @property
    def threads(self) -> int:
        """torch threads for one actor: its whole CPUs, at least one."""
        return max(1, int(self.cpus))


def pool_specs(cluster: ClusterConfig) -> list[PoolSpec]:
    lc = cluster.learner
    specs = [
        PoolSpec("rollout", cluster.rollout.workers, cluster.rollout.cpus_per_worker, cluster.rollout.gpus_per_worker),
        PoolSpec("reward", cluster.reward.workers, cluster.reward.cpus_per_worker, cluster.reward.gpus_per_worker),
        PoolSpec("learner", lc.ranks, lc.cpus_per_rank, lc.gpus_per_rank),
    ]
    for s in specs:
        if s.count < 1:
            raise PoolError(f"pool '{s.name}' needs at least 1 worker, config asks for {s.count}")
        if s.cpus < 0 or s.gpus < 0 or not s.bundle:
            raise PoolError(f"pool '{s.name}': each worker needs some CPU or GPU (cpus={s.cpus}, gpus={s.gpus})")
    if lc.gpus_per_rank not in (0, 1):
        raise PoolError(f"pool 'learner': gpus_per_rank must be 0 or 1 (one DeepSpeed rank per GPU), got {lc.gpus_per_rank}")
    return specs


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
    for res in ("CPU", "GPU"):
        need = sum(s.bundle.get(res, 0.0) * s.count for s in specs)
        if need > total.get(res, 0.0) + 1e-9:
            parts = ", ".join(f"{s.name} {s.bundle.get(res, 0.0) * s.count:g}" for s in specs if s.bundle.get(res))
            raise PoolError(f"the pools need {need:g} {res} together ({parts}), but the Ray cluster has {total.get(res, 0.0):g} {res}")


def check_cluster(specs: list[PoolSpec]) -> None:
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    largest = {res: max((n.get(res, 0.0) for n in nodes), default=0.0) for res in ("CPU", "GPU")}
    check_capacity(specs, ray.cluster_resources(), largest)


class ResourcePool:
    """One placement group of `count` identical bundles; actor i is pinned to bundle i."""

    def __init__(self, spec: PoolSpec, timeout_s: float, strategy: str = "PACK"):
        self.spec = spec
        self.pg = placement_group([spec.bundle] * spec.count, strategy=strategy, name=f"maskrl-{spec.name}")
        ready, _ = ray.wait([self.pg.ready()], timeout=timeout_s)
        if not ready:
            remove_placement_group(self.pg)
            raise PoolError(
                f"pool '{spec.name}': placement group of {spec.count} x {spec.bundle} was not placed within "
                f"{timeout_s:g}s (the cluster's free resources are {ray.available_resources()})"
            )

    def options(self, index: int) -> dict:
        return {
            "num_cpus": self.spec.cpus,
            "num_gpus": self.spec.gpus,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=index),
        }

    def remove(self) -> None:
        remove_placement_group(self.pg)


class WorkerGroup:
    """The actors of one pool; a dead one is replaced in its bundle (at most `max_restarts` times)."""

    def __init__(self, pool: ResourcePool, actor_cls, args: tuple, max_restarts: int, runtime_env: dict | None = None):
        self.pool, self.actor_cls, self.args, self.max_restarts = pool, actor_cls, args, max_restarts
        self.extra = {"runtime_env": runtime_env} if runtime_env else {}
        self.restarts = 0
        self.actors = [self._start(i, args) for i in range(pool.spec.count)]

    def _start(self, index: int, args: tuple):
        return self.actor_cls.options(**self.pool.options(index), **self.extra).remote(*args)

    def __len__(self) -> int:
        return len(self.actors)

    def __getitem__(self, index: int):
        return self.actors[index]

    def replace(self, index: int, args: tuple | None = None):
        self.restarts += 1
        if self.restarts > self.max_restarts:
            raise RuntimeError(f"pool '{self.pool.spec.name}': more than max_restarts={self.max_restarts} workers died")
        try:
            ray.kill(self.actors[index])
        except Exception:  # already gone
            pass
        self.actors[index] = self._start(index, args or self.args)
        return self.actors[index]

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)
        self.pool.remove()


def rendezvous_hosts(addresses: list[tuple[str, str]]) -> tuple[str, list[str]]:
    """(store/master host, each member's bind host): loopback when all members share one node."""
    if len({node for node, _ in addresses}) == 1:
        return "127.0.0.1", ["127.0.0.1"] * len(addresses)
    return addresses[0][1], [ip for _, ip in addresses]

"""Fault injection for `actors.driver.train(after_dispatch=...)`: kill a rollout worker, a reward
worker, a learner rank or a whole node while an iteration's rollouts are in flight, or truncate
the newest checkpoint (seen at the next recovery), each once per scheduled entry (a recovery
replays iterations, and the fault must not repeat).

Nodes can only be lost on a `ray.cluster_utils.Cluster` (one raylet per simulated node): the
node's raylet and every process under it are SIGKILLed at once, as when a machine disappears,
and with `replace_nodes` a node with the same resources joins afterwards, as an autoscaler
would start one.
"""
from __future__ import annotations

import contextlib
import functools
import threading
import time
from dataclasses import dataclass, field

from pathlib import Path

import psutil
import ray

from maskrl.checkpoints import newest_first

KINDS = ("rollout", "reward", "learner", "node", "truncate")
FAST_HEALTH_CHECKS = {  # a lost node is noticed in ~3 s instead of ~15 s
    "health_check_initial_delay_ms": 0, "health_check_period_ms": 1000,
    "health_check_timeout_ms": 1000, "health_check_failure_threshold": 3,
}


def simulated_cluster(head: dict, workers: list[dict], store_bytes: int = 150 * 2**20):
    """A multi-node Ray cluster on this machine (`ray.cluster_utils.Cluster`: one raylet per node,
    `head` and each of `workers` the `add_node` arguments of one node), joined by this process.
    Returns (cluster, worker nodes). Lost nodes are noticed quickly, and nodes may be added from a
    timer thread (`FaultInjector.replace_after_s`)."""
    from ray.cluster_utils import Cluster

    from actors.runtime import start_ray

    made = []

    def attempt():
        cluster = Cluster(initialize_head=True, shutdown_at_exit=False, head_node_args={
            **head, "object_store_memory": store_bytes, "include_dashboard": False, "_system_config": FAST_HEALTH_CHECKS,
        })
        made.append(cluster)
        nodes = [cluster.add_node(**w, object_store_memory=store_bytes) for w in workers]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="warning", log_to_driver=False)
        return cluster, nodes

    def undo():  # the failed attempt's connection and nodes (start_ray then ends any process of it left)
        if ray.is_initialized():
            ray.shutdown()
        while made:
            with contextlib.suppress(Exception):
                made.pop().shutdown()

    # a slow raylet is waited for, a failed start retried once
    return start_ray(attempt, "start a simulated Ray cluster", undo=undo)


def lose_node(cluster, node, timeout_s: float = 60.0) -> None:
    """SIGKILL a simulated node's raylet and all its processes; return once the cluster noticed."""
    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    workers = raylet.children(recursive=True)
    cluster.remove_node(node, allow_graceful=False)
    for proc in workers:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    deadline = time.time() + timeout_s
    while any(n["NodeID"] == node.node_id and n["Alive"] for n in ray.nodes()):
        if time.time() > deadline:
            raise TimeoutError(f"the cluster did not notice the loss of node {node.node_id} within {timeout_s:g}s")
        time.sleep(0.2)


@dataclass
class FaultInjector:
    """Callable(iteration, runtime) injecting `schedule` = [(iteration, kind), ...] once each."""

    schedule: list[tuple[int, str]]
    cluster: object = None  # a ray.cluster_utils.Cluster, for "node" faults
    replace_nodes: bool = True
    # the replacement node joins this long after the loss (an autoscaler's boot), from a timer thread
    # (a cluster made by `simulated_cluster`: adding a node elsewhere installs signal handlers)
    replace_after_s: float = 0.0
    injected: list[dict] = field(default_factory=list)

    def __post_init__(self):
        bad = [k for _, k in self.schedule if k not in KINDS]
        if bad:
            raise ValueError(f"unknown fault kind {bad[0]!r}; kinds: {list(KINDS)}")
        if any(k == "node" for _, k in self.schedule) and self.cluster is None:
            raise ValueError("'node' faults need a ray.cluster_utils.Cluster")

    def __call__(self, iteration: int, runtime) -> None:
        for i, (at, kind) in enumerate(self.schedule):
            if at == iteration and not any(f["index"] == i for f in self.injected):
                self.injected.append({"index": i, "iteration": iteration, "kind": kind, "time": time.time()})
                getattr(self, f"_{kind}")(runtime)

    def _rollout(self, runtime) -> None:
        ray.kill(runtime.rollout[0])

    def _reward(self, runtime) -> None:
        ray.kill(runtime.reward[0])

    def _learner(self, runtime) -> None:
        ray.kill(runtime.learner.ranks[-1])

    def _truncate(self, runtime) -> None:
        """Cut the newest checkpoint's weights in half, as a copy that stopped midway."""
        newest = next(newest_first(Path(runtime.cfg.out) / "checkpoints"), None)
        if newest is not None:
            weights = newest / "model.safetensors"
            weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    def _node(self, runtime) -> None:
        """The node of learner rank 0 (where the most is lost: ranks, maybe workers and objects)."""
        node_id, _ = ray.get(runtime.learner.ranks[0].address.remote())
        node = next(n for n in self.cluster.worker_nodes if n.node_id == node_id)
        declared = next(n["Resources"] for n in ray.nodes() if n["NodeID"] == node_id)
        lose_node(self.cluster, node)
        if self.replace_nodes:  # the same node type: CPUs, GPUs, custom resources, object store
            custom = {k: v for k, v in declared.items()
                      if k not in ("CPU", "GPU", "memory", "object_store_memory") and not k.startswith("node:")}
            add = functools.partial(self.cluster.add_node, num_cpus=int(declared.get("CPU", 0)), num_gpus=int(declared.get("GPU", 0)),
                                    resources=custom, object_store_memory=int(declared["object_store_memory"]))
            threading.Timer(self.replace_after_s, add).start() if self.replace_after_s else add()

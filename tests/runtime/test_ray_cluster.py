"""A multi-node Ray cluster simulated on this machine (`ray.cluster_utils.Cluster`: one raylet per
node, each with declared resources): pools land on the nodes their config asks for, a pool no
node can hold is named, and a node removed mid-run (the learner's, without warning) costs
nothing: the pools are rebuilt on the remaining nodes and the run ends equal to an undisturbed
one.

Nodes: the head (the driver; 1 CPU and `maskrl_reward_node`) and three workers A, B, C (2 CPUs
and `maskrl_node` each; A also `maskrl_learner_node`, C also 2 GPUs). Rollout workers STRICT_SPREAD over the workers, learner ranks PACKed
onto one of them, the reward worker on the head.
"""
from __future__ import annotations

import pytest
import ray

from tests.faults import FaultInjector, simulated_cluster
from actors.driver import Runtime, train
from actors.pools import COLOCATED, PoolError, ResourcePool, check_cluster, pool_layout
from actors.runstate import EventLog, read_events
from tests.helpers import assert_nothing_lost, tiny_config

@pytest.fixture(scope="module")
def cluster():
    workers = [  # A alone has a learner resource; C declares 2 GPUs (placement only: no GPU actor starts)
        {"num_cpus": 2, "num_gpus": 2 if name == "C" else 0,
         "resources": {"maskrl_node": 100, **({"maskrl_learner_node": 100} if name == "A" else {})}}
        for name in "ABC"
    ]
    c, nodes = simulated_cluster({"num_cpus": 1, "resources": {"maskrl_reward_node": 100}}, workers)
    c.names = {c.head_node.node_id: "head", **{n.node_id: name for n, name in zip(nodes, "ABC")}}
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def placed_config(ckpt, out, **cluster):
    cfg = tiny_config(ckpt, out, **cluster)
    c = cfg.cluster
    c.rollout.resources, c.rollout.strategy = {"maskrl_node": 1}, "STRICT_SPREAD"
    c.learner.resources, c.learner.strategy = {"maskrl_node": 1}, "PACK"
    c.reward.resources = {"maskrl_reward_node": 1}
    c.placement_timeout_s = 60
    return cfg


def nodes_of(cluster, actors) -> list[str]:
    return [cluster.names[node] for node, _ in ray.get([a.address.remote() for a in actors])]


@pytest.mark.slow  # a run on a simulated multi-node cluster: minutes
def test_pools_land_on_the_nodes_the_config_asks_for(cluster, ckpt, tmp_path):
    rt = Runtime(placed_config(ckpt, tmp_path / "run"), ckpt, 0, None, EventLog(tmp_path))
    try:
        rollout, learner = nodes_of(cluster, rt.rollout.actors), nodes_of(cluster, rt.learner.ranks)
        assert nodes_of(cluster, rt.reward.actors) == ["head"]
        assert len(set(rollout)) == 2 and set(rollout) <= set("ABC")  # spread: one worker a node
        assert len(set(learner)) == 1 and set(learner) <= set("ABC")  # packed: one node
    finally:
        rt.shutdown()


@pytest.mark.slow  # a run on a simulated multi-node cluster: minutes
def test_colocated_rollout_worker_shares_its_learner_ranks_node(cluster, ckpt, tmp_path):
    cfg = placed_config(ckpt, tmp_path / "run", colocate=True)
    cfg.cluster.learner.strategy = "STRICT_SPREAD"
    rt = Runtime(cfg, ckpt, 0, None, EventLog(tmp_path))
    try:
        learner = nodes_of(cluster, rt.learner.ranks)
        assert nodes_of(cluster, rt.rollout.actors) == learner and len(set(learner)) == 2
    finally:
        rt.shutdown()


def test_gpu_bundles_land_on_the_gpu_node_and_colocated_ranks_share_a_gpu(cluster, ckpt, tmp_path):
    cfg = placed_config(ckpt, tmp_path / "run", colocate=True)
    cfg.cluster.learner.gpus_per_worker, cfg.cluster.rollout.gpus_per_worker = 1, 1
    specs, shares = pool_layout(cfg.cluster)
    check_cluster(specs)
    assert {s.name: s.bundle.get("GPU", 0) for s in specs} == {COLOCATED: 1, "reward": 0}
    assert shares["learner"].gpus == shares["rollout"].gpus == 0.5  # one GPU, half each
    pools = [ResourcePool(s, timeout_s=60) for s in specs]
    try:
        placed = {p.spec.name: set(ray.util.placement_group_table(p.pg)["bundles_to_node_id"].values()) for p in pools}
        assert {cluster.names[n] for n in placed[COLOCATED]} == {"C"} and {cluster.names[n] for n in placed["reward"]} == {"head"}
    finally:
        for p in pools:
            p.remove()
    cfg.cluster.learner.workers = cfg.cluster.rollout.workers = 3  # 3 GPUs: no node has them all, the cluster has 2
    with pytest.raises(PoolError, match=r"pool 'learner\+rollout' needs 3 x 1 GPU = 3 GPU, but the Ray cluster has 2 GPU"):
        check_cluster(pool_layout(cfg.cluster)[0])


def test_a_pool_no_node_can_hold_is_named(cluster, ckpt, tmp_path):
    cfg = placed_config(ckpt, tmp_path / "run")
    cfg.cluster.learner.resources = {"maskrl_gpu_node": 1}
    with pytest.raises(PoolError, match=r"pool 'learner' needs 2 x 1 maskrl_gpu_node = 2 maskrl_gpu_node, but the Ray cluster has 0"):
        train(cfg)
    cfg = placed_config(ckpt, tmp_path / "run")
    cfg.cluster.rollout.workers = 4  # STRICT_SPREAD: one a node, but only three nodes have maskrl_node
    cfg.cluster.placement_timeout_s = 5
    with pytest.raises(PoolError, match="pool 'rollout': placement group of 4 x .* was not placed within 5s"):
        train(cfg)
    assert not [g for g in ray.util.placement_group_table().values() if g["state"] != "REMOVED"]


@pytest.mark.slow  # a run on a simulated multi-node cluster: minutes
def test_a_node_removed_mid_run_loses_nothing(cluster, ckpt, tmp_path):
    """The learner may only run on A; A is lost, and its replacement joins 8 s later (as an
    autoscaler would boot one): the rebuild waits for it, and the run ends as the undisturbed one."""

    def learner_on_a(out):
        cfg = placed_config(ckpt, out)
        cfg.cluster.learner.resources = {"maskrl_learner_node": 1}
        return cfg

    undisturbed = train(learner_on_a(tmp_path / "undisturbed"))
    faults = FaultInjector([(3, "node")], cluster, replace_after_s=8)  # before iteration 2's checkpoint
    result = train(learner_on_a(tmp_path / "run"), after_dispatch=faults)
    ms = assert_nothing_lost(result, undisturbed)
    lost = [e for e in read_events(result.run) if e["kind"] == "learner_lost"]
    assert faults.injected and len(lost) == 1 and lost[0]["resume_from"] == 1
    assert [cluster.names.get(n) for n in lost[0]["nodes_lost"]] == ["A"]  # the cluster noticed before the rebuild
    assert ms[-1]["restarts/learner"] == 1
    alive = [n for n in ray.nodes() if n["Alive"]]
    assert len(alive) == 4 and sum("maskrl_learner_node" in n["Resources"] for n in alive) == 1  # A's replacement

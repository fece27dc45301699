"""Pool sizing, resource checks, weight buckets and the batch-vs-plan check; no Ray instance needed.
"""
from __future__ import annotations


import pytest
import torch

from actors.pools import COLOCATED, PoolError, PoolSpec, check_capacity, pool_layout, rendezvous_hosts, spread_by_cost
from actors.weights import bucket_layout
from maskrl.config import ConfigError, check_choices
from maskrl.iteration import PromptStream, check_groups, rollout_groups
from maskrl.sampling import SamplingConfig
from maskrl.train_config import ClusterConfig, LearnerConfig, PoolConfig


def pool_specs(cluster: ClusterConfig) -> list[PoolSpec]:
    return pool_layout(cluster)[0]


# -- tests -------------------------------------------------------------------------------------------
def test_pool_specs_follow_the_config():
    specs = {s.name: s for s in pool_specs(ClusterConfig())}
    assert specs["rollout"] == PoolSpec("rollout", 2, 1.0, 0.0)
    assert specs["learner"].count == 2 and specs["learner"].bundle == {"CPU": 1.0}
    gpu = ClusterConfig(learner=LearnerConfig(workers=4, gpus_per_worker=1, cpus_per_worker=4))
    assert {s.name: s for s in pool_specs(gpu)}["learner"].bundle == {"CPU": 4.0, "GPU": 1.0}
    with pytest.raises(PoolError, match="'reward'"):
        pool_specs(ClusterConfig(reward=PoolConfig(workers=0)))
    with pytest.raises(PoolError, match="'learner'.*one DeepSpeed rank per GPU"):
        pool_specs(ClusterConfig(learner=LearnerConfig(gpus_per_worker=0.5)))


def test_custom_resources_strategies_and_colocation():
    cluster = ClusterConfig(rollout=PoolConfig(workers=2, gpus_per_worker=1, resources={"maskrl_rollout_node": 1}, strategy="SPREAD"),
                            learner=LearnerConfig(workers=2, gpus_per_worker=1, cpus_per_worker=4, strategy="STRICT_PACK"))
    specs = {s.name: s for s in pool_specs(cluster)}
    assert specs["rollout"].bundle == {"CPU": 1.0, "GPU": 1.0, "maskrl_rollout_node": 1} and specs["rollout"].strategy == "SPREAD"
    cluster.colocate = True
    specs, shares = pool_layout(cluster)
    assert [s.name for s in specs] == [COLOCATED, "reward"]
    assert specs[0].bundle == {"CPU": 5.0, "GPU": 1.0, "maskrl_rollout_node": 1} and specs[0].strategy == "STRICT_PACK"
    assert (shares["learner"].pool, shares["learner"].cpus, shares["learner"].gpus) == (COLOCATED, 4.0, 0.5)
    assert (shares["rollout"].pool, shares["rollout"].cpus, shares["rollout"].gpus) == (COLOCATED, 1.0, 0.5)
    cluster.rollout.workers = 3
    with pytest.raises(PoolError, match=r"rollout.workers \(3\) must equal cluster.learner.workers \(2\)"):
        pool_layout(cluster)
    with pytest.raises(ConfigError, match=r"'cluster.reward.strategy': 'NEAR' is not one of \['PACK'"):
        check_choices(ClusterConfig(reward=PoolConfig(strategy="NEAR")), "cluster.")


def test_impossible_pool_is_named():
    specs = pool_specs(ClusterConfig(learner=LearnerConfig(workers=2, gpus_per_worker=1)))
    cpu_only = {"CPU": 8.0}
    with pytest.raises(PoolError, match=r"pool 'learner' needs 2 x 1 GPU = 2 GPU, but the Ray cluster has 0 GPU"):
        check_capacity(specs, cpu_only, cpu_only)
    big = pool_specs(ClusterConfig(rollout=PoolConfig(workers=1, cpus_per_worker=16)))
    with pytest.raises(PoolError, match="pool 'rollout' needs 16 CPU per worker, but no node"):
        check_capacity(big, {"CPU": 32.0}, {"CPU": 8.0})
    with pytest.raises(PoolError, match=r"the pools need 5 CPU together \(rollout 2, reward 1, learner 2\)"):
        check_capacity(pool_specs(ClusterConfig()), {"CPU": 4.0}, {"CPU": 4.0})
    check_capacity(pool_specs(ClusterConfig()), {"CPU": 5.0}, {"CPU": 5.0})


def test_rendezvous_is_loopback_on_one_node():
    assert rendezvous_hosts([("n1", "10.0.0.1"), ("n1", "10.0.0.1")]) == ("127.0.0.1", ["127.0.0.1"] * 2)
    assert rendezvous_hosts([("n1", "10.0.0.1"), ("n2", "10.0.0.2")]) == ("10.0.0.1", ["10.0.0.1", "10.0.0.2"])


def test_evaluation_chunks_are_spread_by_cost_not_by_index():
    """make run's held-out set: 7 chunks of 32 prompts and one of 16, at CFG 3 (two forwards an
    image) and CFG 0. By index one worker got 384 units and the other 336; by cost 368 and 352."""
    costs = [64] * 7 + [32] + [32] * 7 + [16]
    chosen = spread_by_cost(costs, 2)
    loads = [sum(c for c, w in zip(costs, chosen) if w == k) for k in range(2)]
    assert sorted(loads) == [352, 368]
    assert spread_by_cost([5, 1, 1, 1, 1, 1], 2) == [0, 1, 1, 1, 1, 1]  # the long job alone on a worker
    assert spread_by_cost([], 3) == []


def test_bucket_layout_respects_size_and_dtype():
    state = {"a": torch.zeros(10), "b": torch.zeros(10), "c": torch.zeros(30), "d": torch.zeros(4, dtype=torch.int64)}
    assert bucket_layout(state, bucket_bytes=80) == [["a", "b"], ["c"], ["d"]]
    assert bucket_layout(state, bucket_bytes=10**6) == [["a", "b", "c"], ["d"]]


def test_batch_must_hold_exactly_the_planned_groups(tiny_policy):
    batch = rollout_groups(tiny_policy, PromptStream(0).take(3), 2, SamplingConfig(steps=2), torch.Generator().manual_seed(0), 0)
    check_groups(batch, [0, 1, 2], group_size=2)
    with pytest.raises(RuntimeError, match=r"lost groups \[2\]"):
        check_groups(batch.select(torch.arange(4)), [0, 1, 2], group_size=2)
    duplicated = batch.concat([batch, batch.select(torch.tensor([0, 1]))])
    with pytest.raises(RuntimeError, match=r"wrong sizes \{0: 4\}"):
        check_groups(duplicated, [0, 1, 2], group_size=2)


def test_metric_names_become_prometheus_gauge_names():
    from actors.metrics import gauge_name

    assert gauge_name("reward/mean") == "maskrl_reward_mean"
    assert gauge_name("loss/clip_frac_first_epoch") == "maskrl_loss_clip_frac_first_epoch"


def test_sample_grid_png_has_a_captioned_cell_per_sample(tmp_path):
    import numpy as np
    from PIL import Image

    from maskrl.grids import GUTTER, TEXT_H, write_grid
    from maskrl.models import PaletteTokenizer
    from maskrl.world import PALETTE, parse_prompt, render_batch

    prompts = ["a red circle", "two squares"]
    grids = PaletteTokenizer().decode(PaletteTokenizer().encode(
        render_batch([parse_prompt(p) for p in prompts for _ in range(3)], np.random.default_rng(0)))).reshape(2, 3, 16, 16)
    grids[1, 2] = 4  # last sample of the second prompt: all yellow (no objects: a failure)
    returned = write_grid(prompts, grids, tmp_path / "g.png")
    img = np.asarray(Image.open(tmp_path / "g.png").convert("RGB"))
    assert np.array_equal(img, returned)
    cell, row_h = 16 * 6, TEXT_H + 16 * 6 + TEXT_H + GUTTER
    top = GUTTER + row_h + TEXT_H  # second row's images
    assert tuple(img[top + cell // 2, GUTTER + 2 * (cell + GUTTER) + cell // 2]) == tuple(PALETTE[4])
    caption = img[top + cell + 1 : top + cell + TEXT_H, GUTTER + 2 * (cell + GUTTER) : GUTTER + 3 * (cell + GUTTER)]
    passed = img[GUTTER + TEXT_H + cell + 1 : GUTTER + TEXT_H + cell + TEXT_H, GUTTER : GUTTER + cell]
    red, green = (caption[..., 0] > 200) & (caption[..., 1] < 120), (passed[..., 1] > 200) & (passed[..., 0] < 120)
    assert red.any() and green.any()  # FAIL is written in red under the yellow square, PASS in green under a render

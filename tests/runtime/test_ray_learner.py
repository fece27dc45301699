"""Two DeepSpeed learner ranks (gloo, CPU) give the single-process update: ZeRO-2 and ZeRO-3.

Reference: `maskrl.grpo.grpo_update` with torch AdamW (`maskrl.grpo.optim.make_optimizer` /
`adamw_step`) on the same batch with the same update generator. Tolerance: |dw| <= 2e-5 per
weight after two iterations at lr 1e-3 (weights move by ~1e-2; the ranks' gradient all-reduce
sums in another order than one process does, and Adam's normalisation turns those ~1e-7 gradient
differences into ~1e-6 weight differences).
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import ray
import torch

from actors.learner_group import LearnerGroup, LearnerSetupTimeout
from maskrl.seeds import update_seed
from actors.pools import ResourcePool, pool_layout
from maskrl.grpo import grpo_update
from maskrl.iteration import PromptStream, prepare, rollout_groups
from maskrl.models import load_policy
from maskrl.grpo.optim import adamw_step, make_optimizer
from tests.helpers import tiny_checkpoint, tiny_config

TOLERANCE = 2e-5


def scored_batch(policy, cfg, stream_start: int, seed: int, version: int = 0):
    """A batch with random rewards (a random tiny policy scores 0 everywhere)."""
    gen = torch.Generator().manual_seed(seed)
    prompts = PromptStream(cfg.seed, position=stream_start).take(cfg.grpo.prompts_per_iter)
    batch = rollout_groups(policy, prompts, cfg.grpo.group_size, cfg.sampling, gen, version)
    return replace(batch, reward=torch.rand(len(batch), generator=gen)), [i for i, _ in prompts]


def max_diff(published: dict, policy) -> float:
    return max((torch.from_numpy(published[k].copy()) - v).abs().max().item() for k, v in policy.state_dict().items())


@pytest.mark.parametrize("stage", [2, 3])
def test_two_ranks_match_single_process_update(ray_instance, tmp_path, stage):
    """Two iterations; then a learner resumed from iteration 1's checkpoint (weights, sharded
    optimiser state, schedule) gives the same iteration 2."""
    ckpt = tiny_checkpoint(tmp_path / "tiny")
    cfg = tiny_config(ckpt, tmp_path / "run")
    cfg.track_kl = True  # the reference model is loaded on every rank, as in train_local
    cfg.grpo.epochs, cfg.grpo.minibatch_pairs = 2, 8  # several optimiser steps per iteration
    cfg.grpo.warmup_iters = 1  # the schedule matters: lr 0 at iteration 1, full at 2
    cfg.cluster.learner.zero_stage = stage
    cfg.cluster.learner.gradient_checkpointing = stage == 3  # recomputed activations: the same update
    cfg.cluster.learner.deepspeed = {"zero_optimization": {"stage3_param_persistence_threshold": 0}}  # shard even tiny tensors

    policy = load_policy(ckpt).eval()
    reference = load_policy(ckpt).requires_grad_(False)
    optim, sched = make_optimizer(policy, cfg.grpo, cfg.iterations)
    specs, shares = pool_layout(cfg.cluster)
    pool = ResourcePool([s for s in specs if s.name == "learner"][0], timeout_s=60)
    learner = LearnerGroup(pool, shares["learner"], cfg, ckpt, version=0, optimizer_dir=None)
    try:
        if stage == 3:  # really sharded: each rank holds half of the elements
            assert learner.info[0]["local_params"] < 0.6 * learner.info[0]["params"]
        batches = {}
        for iteration in (1, 2):
            batch, groups = batches[iteration] = scored_batch(policy, cfg, 10 * iteration, seed=iteration, version=iteration - 1)
            if iteration == 1:
                with pytest.raises(ray.exceptions.RayTaskError, match="lost groups"):  # not the planned groups
                    learner.update(iteration, [ray.put(batch.to_arrow())], groups + [99])
            prepared = prepare(batch, cfg.grpo).batch
            gen = torch.Generator().manual_seed(update_seed(cfg.seed, iteration))
            single = grpo_update(policy, reference, prepared, cfg.grpo, cfg.sampling, adamw_step(policy, optim, cfg.grpo.grad_clip), gen)
            sched.step()
            metrics = learner.update(iteration, [ray.put(batch.to_arrow())], groups)
            assert metrics["version/lag_max"] == 0 and metrics["batch/groups"] == len(groups)
            assert metrics["loss/grad_norm"] == pytest.approx(single["grad_norm"], rel=1e-4)
            assert metrics["loss/policy_loss"] == pytest.approx(single["policy_loss"], rel=1e-3, abs=1e-6)
            if iteration == 1:
                learner.save(str(tmp_path / "iter1"), {"iteration": 1})
        start = load_policy(ckpt).state_dict()
        moved = max((policy.state_dict()[k] - start[k]).abs().max().item() for k in start)
        diff = max_diff(ray.get(learner.publish(2)), policy)
        print(f"ZeRO-{stage}: weights moved {moved:.2e}, max |w_ray - w_single| = {diff:.2e}")
        assert moved > 100 * TOLERANCE  # the update did something
        assert diff <= TOLERANCE, f"ZeRO-{stage}: max |w_ray - w_single| = {diff:.2e}"
        learner.shutdown()
        resumed = learner = LearnerGroup(pool, shares["learner"], cfg, str(tmp_path / "iter1"), version=1, optimizer_dir=str(tmp_path / "iter1" / "optimizer"))
        batch, groups = batches[2]
        resumed.update(2, [ray.put(batch.to_arrow())], groups)
        diff = max_diff(ray.get(resumed.publish(2)), policy)
        print(f"ZeRO-{stage} resumed at 1: max |w_ray - w_single| = {diff:.2e}")
        assert diff <= TOLERANCE
    finally:
        learner.shutdown()
        pool.remove()


def test_a_set_up_that_overruns_its_bound_names_the_ranks_and_frees_them(ray_instance, tmp_path):
    """Learner set-up waits at most `cluster.learner.collective_timeout_s` (on a loaded machine one
    rank's import can stall): the error names the unfinished ranks and the setting, and no rank is
    left holding the pool's CPUs (a new group starts in the same pool)."""
    ckpt = tiny_checkpoint(tmp_path / "tiny")
    cfg = tiny_config(ckpt, tmp_path / "run")
    cfg.cluster.learner.collective_timeout_s = 0.5  # importing DeepSpeed alone takes longer
    specs, shares = pool_layout(cfg.cluster)
    pool = ResourcePool([s for s in specs if s.name == "learner"][0], timeout_s=60)
    try:
        with pytest.raises(LearnerSetupTimeout, match=r"ranks \[0, 1\] had not finished after 0\.5s "
                                                      r"\(cluster\.learner\.collective_timeout_s\)"):
            LearnerGroup(pool, shares["learner"], cfg, ckpt, version=0, optimizer_dir=None)
        cfg.cluster.learner.collective_timeout_s = 600.0
        LearnerGroup(pool, shares["learner"], cfg, ckpt, version=0, optimizer_dir=None).shutdown()
    finally:
        pool.remove()

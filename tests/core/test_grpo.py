"""Mask-GRPO objective pieces: advantages, filtering, ratio aggregations, dual clip, per-unit KL."""
import math

import pytest
import torch

from maskrl.grpo import (
    GRPOConfig, clipped_surrogate, filter_groups, group_advantages, grpo_update, k3_kl, log_ratios, score_pairs,
)
from maskrl.iteration import PromptStream, prepare, rollout_groups
from maskrl.models import ShowoPolicy
from maskrl.sampling import SamplingConfig
from maskrl.transition import LOG_MASS_FLOOR
from tests.helpers import TINY


def test_rollout_cutoff_is_a_real_threshold_and_candidates_differ(tiny_policy):
    sampling = SamplingConfig(steps=5, variant="candidate1", noise_scale=0.0)
    batch = rollout_groups(tiny_policy, PromptStream(0).take(2), 2, sampling, torch.Generator().manual_seed(0), 0)
    # without noise the cutoff is the smallest revealed token probability: a real probability
    prob = batch.cutoff.exp()
    assert ((prob > 0) & (prob < 1)).all()
    assert len(torch.unique(prob)) > len(batch)  # varies by step and trajectory, unlike a flag
    traj, step = torch.arange(len(batch)), torch.zeros(len(batch), dtype=torch.long)
    with torch.no_grad():
        c1 = score_pairs(tiny_policy, batch, traj, step, sampling)[0].sum(1)
        c2 = score_pairs(tiny_policy, batch, traj, step, SamplingConfig(steps=5, variant="candidate2", noise_scale=0.0))[0].sum(1)
    # a boolean cutoff (always 1) would make candidate 1 equal candidate 2
    assert (c1 < c2 - 1e-3).all()
    assert (c1 > c2 + 240 * LOG_MASS_FLOOR / 2).all()  # the floor is not what carries it


def test_advantages_zero_mean_per_group_and_std_normalised():
    rewards = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 4.0])
    groups = torch.tensor([7, 7, 7, 9, 9, 9])
    adv = group_advantages(rewards, groups)
    for g in (7, 9):
        assert adv[groups == g].mean().abs() < 1e-6
        assert adv[groups == g].std() == pytest.approx(1.0, abs=1e-4)
    raw = group_advantages(rewards, groups, std_normalize=False)
    torch.testing.assert_close(raw, torch.tensor([-1.0, 0.0, 1.0, -4 / 3, -4 / 3, 8 / 3]))
    glob = group_advantages(rewards, groups, global_std=True)
    torch.testing.assert_close(glob, raw / (rewards.std() + 1e-6))


def test_constant_reward_group_is_filtered():
    rewards = torch.tensor([0.5, 0.5, 0.5, 0.1, 0.9, 0.3])
    keep, n = filter_groups(rewards, torch.tensor([0, 0, 0, 1, 1, 1]), min_std=1e-4)
    assert n == 1 and keep.tolist() == [False] * 3 + [True] * 3


def test_clipped_surrogate_bounds_dual_clip_and_k3():
    adv = torch.tensor([1.0, 1.0, -1.0, -2.0])
    log_ratio = torch.log(torch.tensor([1.5, 1.1, 0.5, 6.0]))
    weight = torch.full((4,), 0.25)
    loss, clip_frac, _ = clipped_surrogate(log_ratio, adv, weight, clip_low=0.2, clip_high=0.28)
    # 0 clipped at 1.28, 1 unclipped, 2 (negative adv) clipped at 0.8, 3 (negative adv) unclipped at 6
    assert loss.item() == pytest.approx(-(1.28 + 1.1 - 0.8 - 12.0) / 4, abs=1e-6)
    assert clip_frac.item() == pytest.approx(3 / 4)
    dual, _, _ = clipped_surrogate(log_ratio, adv, weight, 0.2, 0.28, dual_clip=3.0)
    assert dual.item() == pytest.approx(-(1.28 + 1.1 - 0.8 - 6.0) / 4, abs=1e-6)  # -A * ratio bounded by -3A
    assert k3_kl(torch.zeros(2), torch.zeros(2)).abs().max() == 0
    assert (k3_kl(torch.tensor([0.0, -1.0]), torch.tensor([0.3, 0.0])) > 0).all()


def test_ratio_aggregations():
    new = torch.tensor([[0.2, -0.1, 5.0, 0.0], [0.4, 0.0, 0.0, 0.0]])
    old = torch.zeros(2, 4)
    units = torch.tensor([[True, True, False, False], [True, False, False, True]])
    seq, w = log_ratios(new, old, units, "sequence")
    torch.testing.assert_close(seq, torch.tensor([0.1, 0.4]))  # the 5.0 outside the units is ignored
    gspo, _ = log_ratios(new, old, units, "gspo")
    torch.testing.assert_close(gspo, torch.tensor([0.05, 0.2]))  # mean over each transition's units
    tok, tw = log_ratios(new, old, units, "token")
    assert tok.shape == (2, 4) and tw.tolist() == units.float().tolist()
    # token-mean: each unit is clipped on its own (0.4 > log 1.28 is clipped, 0.2 is not)
    loss, clip_frac, _ = clipped_surrogate(tok, torch.ones(2), tw / tw.sum(), 0.2, 0.28)
    assert loss.item() == pytest.approx(-(math.exp(0.2) + math.exp(-0.1) + 1.28 + 1.0) / 4, abs=1e-6)
    assert clip_frac.item() == pytest.approx(1 / 4)


@pytest.mark.parametrize("ratio,variant", [("sequence", "candidate1"), ("token", "candidate2"), ("gspo", "ar"),
                                           ("token", "candidate1")])
def test_first_update_ratio_one_then_kl_to_reference_positive(tiny_policy, ratio, variant):
    torch.manual_seed(1)
    reference = ShowoPolicy(TINY)
    reference.load_state_dict(tiny_policy.state_dict())  # a separate, frozen model with the base weights
    reference.requires_grad_(False)
    sampling = SamplingConfig(steps=4, variant=variant, cfg_scale=1.0)
    cfg = GRPOConfig(group_size=4, steps_per_traj=2, epochs=2, minibatch_pairs=64, lr=1e-3, ratio=ratio, dual_clip=3.0)
    gen = torch.Generator().manual_seed(0)
    batch = rollout_groups(tiny_policy, PromptStream(0).take(3), cfg.group_size, sampling, gen, 0)
    batch = batch.__class__(**{**batch.__dict__, "reward": torch.rand(len(batch))})
    prepared = prepare(batch, cfg).batch
    optim = torch.optim.AdamW(tiny_policy.parameters(), lr=cfg.lr)
    seen = []

    def step(loss):
        optim.zero_grad()
        loss.backward()
        optim.step()
        return 0.0

    from maskrl.grpo import objective

    original = objective.clipped_surrogate

    def spy(log_ratio, *a):
        seen.append(log_ratio.detach().exp())
        return original(log_ratio, *a)

    objective.clipped_surrogate = spy
    try:
        metrics = grpo_update(tiny_policy, reference, prepared, cfg, sampling, step, gen)
    finally:
        objective.clipped_surrogate = original
    torch.testing.assert_close(seen[0], torch.ones_like(seen[0]), atol=1e-4, rtol=0)  # ratio 1 before the update
    assert metrics["clip_frac_first_epoch"] == 0.0
    assert math.isfinite(metrics["kl_ref"]) and metrics["kl_ref"] > 0
    assert (seen[-1] - 1).abs().max() > 1e-4  # by the second epoch the policy has moved
    traj, stp = torch.arange(len(prepared)), torch.zeros(len(prepared), dtype=torch.long)
    with torch.no_grad():
        (new, units), (ref, _) = score_pairs(tiny_policy, prepared, traj, stp, sampling), score_pairs(reference, prepared, traj, stp, sampling)
    per_unit = k3_kl(new, ref)[units]
    assert torch.isfinite(per_unit).all() and per_unit.mean() > 0


def test_a_rank_with_an_empty_slice_still_steps_and_stays_finite(tiny_policy):
    sampling = SamplingConfig(steps=3)
    cfg = GRPOConfig(group_size=2, steps_per_traj=1, epochs=1, minibatch_pairs=3)
    batch = rollout_groups(tiny_policy, PromptStream(0).take(2), 2, sampling, torch.Generator().manual_seed(0), 0)
    batch = batch.__class__(**{**batch.__dict__, "reward": torch.tensor([0.0, 1.0, 0.2, 0.9])})
    prepared = prepare(batch, cfg).batch
    losses, differentiable = [], []

    def step(loss):
        losses.append(float(loss.detach()))
        differentiable.append(loss.requires_grad)
        return 0.0

    # 4 pairs in minibatches of 3: the second minibatch holds one pair, so rank 0 of 3 gets none
    grpo_update(tiny_policy, None, prepared, cfg, sampling, step, torch.Generator().manual_seed(0), rank=0, world_size=3)
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert losses[1] == 0.0 and differentiable == [True, True]  # the empty slice still steps (joins the all-reduce)


def test_more_steps_than_image_tokens_is_refused(tiny_policy):
    with pytest.raises(ValueError, match="steps=300"):
        rollout_groups(tiny_policy, PromptStream(0).take(1), 1, SamplingConfig(steps=300), torch.Generator(), 0)


@pytest.mark.parametrize("ratio", ["sequence", "token", "gspo"])
def test_rank_slices_add_up_to_the_single_process_gradient(tiny_policy, ratio):
    """Each rank normalises its share by the whole minibatch's size (pairs or units), so the
    ranks' averaged gradients equal one process's, KL term included."""
    import copy

    sampling = SamplingConfig(steps=4, variant="candidate1")
    cfg = GRPOConfig(group_size=3, steps_per_traj=2, epochs=1, minibatch_pairs=1000, ratio=ratio, kl_coef=0.5)
    batch = rollout_groups(tiny_policy, PromptStream(0).take(2), 3, sampling, torch.Generator().manual_seed(0), 0)
    batch = batch.__class__(**{**batch.__dict__, "reward": torch.tensor([0.0, 1.0, 0.2, 0.9, 0.1, 0.5])})
    prepared = prepare(batch, cfg).batch
    reference = copy.deepcopy(tiny_policy).requires_grad_(False)
    with torch.no_grad():  # move the policy off the reference so the KL term has a gradient
        for p in tiny_policy.parameters():
            p.add_(torch.randn_like(p) * 0.01)

    def grads(world_size: int) -> list[torch.Tensor]:
        total = None
        for rank in range(world_size):
            policy = copy.deepcopy(tiny_policy)
            grpo_update(policy, reference, prepared, cfg, sampling, lambda loss: (loss / world_size).backward() or 0.0,
                        torch.Generator().manual_seed(0), rank=rank, world_size=world_size)
            mine = [p.grad.clone() for p in policy.parameters()]
            total = mine if total is None else [a + b for a, b in zip(total, mine)]
        return total

    for one, two in zip(grads(1), grads(2)):
        torch.testing.assert_close(one, two, atol=1e-6, rtol=1e-4)

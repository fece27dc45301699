"""Mask-GRPO objective pieces: candidate 1 against brute force, advantages, filtering, KL, ratios."""
import itertools
import math

import pytest
import torch

from maskrl.grpo import GRPOConfig, clipped_surrogate, filter_groups, group_advantages, grpo_update, k3_kl, score_pairs
from maskrl.iteration import PromptStream, prepare, rollout_groups, score
from maskrl.models import ShowoPolicy
from maskrl.rewards import build_reward
from maskrl.sampling import SamplingConfig
from maskrl.transition import LOG_MASS_FLOOR, remask_logprob, transition_logprob
from tests.conftest import TINY


@pytest.mark.parametrize("noise", [0.0, 0.7])
def test_candidate1_extra_term_equals_brute_force_enumeration(noise):
    torch.manual_seed(0)
    p_, n, k = 2, 4, 3
    logp = torch.log_softmax(torch.randn(p_, n, k) * 2, dim=-1)
    tokens = torch.randint(0, k, (p_, n))
    reveal = torch.tensor([[0, 1, 2, 1], [1, 1, 3, 0]])
    step = torch.tensor([1, 1])
    cutoff = torch.log(torch.tensor([0.45, 0.3]))
    sigma = torch.full((p_,), noise)
    got = transition_logprob(logp, tokens, reveal, step, cutoff, sigma, "candidate1")
    probs = logp.exp().double()
    for row in range(p_):
        expected = 0.0
        for i in range(n):
            if reveal[row, i] == step[row]:
                expected += math.log(probs[row, i, tokens[row, i]])
            elif reveal[row, i] > step[row]:  # still masked after the step: re-masked
                mass = 0.0
                for v in range(k):  # enumerate the vocabulary
                    gap = float(cutoff[row]) - math.log(probs[row, i, v])
                    below = (gap > 0) if noise == 0 else math.exp(-math.exp(-gap / noise))
                    mass += float(probs[row, i, v]) * below
                expected += math.log(mass)
        assert got[row].item() == pytest.approx(expected, abs=1e-5)
    cand2 = transition_logprob(logp, tokens, reveal, step, cutoff, sigma, "candidate2")
    assert (got < cand2).all()  # the re-masking term is a real (log) probability < 0


def test_remask_probability_matches_the_samplers_mechanism_by_monte_carlo():
    """P(log p(x) + sigma * g < cutoff) with x ~ p, g ~ Gumbel, simulated as the sampler does."""
    gen = torch.Generator().manual_seed(0)
    logp = torch.log(torch.tensor([[[0.6, 0.25, 0.1, 0.05]]]))
    cutoff, sigma = torch.tensor([math.log(0.3)]), torch.tensor([0.8])
    n = 400_000
    x = torch.multinomial(logp.exp()[0, 0], n, replacement=True, generator=gen)
    g = -torch.log(-torch.log(torch.rand(n, generator=gen)))
    simulated = ((logp[0, 0, x] + sigma * g) < cutoff).double().mean()
    exact = remask_logprob(logp, cutoff, sigma).exp()[0, 0]
    assert exact.item() == pytest.approx(simulated.item(), abs=4e-3)
    assert 0.05 < exact.item() < 0.95


def test_rollout_cutoff_is_a_real_threshold_and_candidates_differ(tiny_policy):
    sampling = SamplingConfig(steps=5, variant="candidate1", noise_scale=0.0)
    batch = rollout_groups(tiny_policy, PromptStream(0).take(2), 2, sampling, torch.Generator().manual_seed(0), 0)
    # without noise the cutoff is the smallest revealed token probability: a real probability
    prob = batch.cutoff.exp()
    assert ((prob > 0) & (prob < 1)).all()
    assert len(torch.unique(prob)) > len(batch)  # varies by step and trajectory, unlike a flag
    traj, step = torch.arange(len(batch)), torch.zeros(len(batch), dtype=torch.long)
    with torch.no_grad():
        c1 = score_pairs(tiny_policy, batch, traj, step, sampling)
        c2 = score_pairs(tiny_policy, batch, traj, step, SamplingConfig(steps=5, variant="candidate2", noise_scale=0.0))
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


def test_clipped_surrogate_bounds_and_k3():
    adv = torch.tensor([1.0, 1.0, -1.0])
    old = torch.zeros(3)
    new = torch.log(torch.tensor([1.5, 1.1, 0.5]))
    loss, clip_frac, _ = clipped_surrogate(new, old, adv, clip_low=0.2, clip_high=0.28)
    # sample 0 clipped at 1.28, sample 1 unclipped, sample 2 (negative adv) clipped at 0.8
    assert loss.item() == pytest.approx(-(1.28 + 1.1 - 0.8) / 3, abs=1e-6)
    assert clip_frac.item() == pytest.approx(2 / 3)
    assert k3_kl(torch.zeros(2), torch.zeros(2)).abs().max() == 0
    assert (k3_kl(torch.tensor([0.0, -1.0]), torch.tensor([0.3, 0.0])) > 0).all()


def test_first_update_ratio_one_then_kl_to_reference_positive(tiny_policy):
    torch.manual_seed(1)
    reference = ShowoPolicy(TINY)
    reference.load_state_dict(tiny_policy.state_dict())  # a separate, frozen model with the base weights
    reference.requires_grad_(False)
    sampling = SamplingConfig(steps=4)
    cfg = GRPOConfig(group_size=4, steps_per_traj=2, epochs=2, minibatch_pairs=64, lr=1e-3)
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

    def spy(new_lp, old_lp, *a):
        seen.append((new_lp - old_lp).detach().exp())
        return original(new_lp, old_lp, *a)

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
        kl_after = k3_kl(score_pairs(tiny_policy, prepared, traj, stp, sampling), score_pairs(reference, prepared, traj, stp, sampling))
    assert kl_after.mean() > 0


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

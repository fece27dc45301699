"""The learner's recomputed transition log-probs equal the sampler's recorded ones."""
import pytest
import torch

from maskrl.grpo import score_pairs
from maskrl.iteration import rollout_groups
from maskrl.sampling import SamplingConfig, noise_at
from maskrl.transition import VARIANTS

PROMPTS = ["a red circle", "three squares", "a cross to the left of a circle"]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("cfg_scale,schedule", [(0.0, "linear"), (2.0, "compound")])
@pytest.mark.parametrize("n_prompts,group", [(1, 1), (3, 2)])
def test_recomputed_logprob_equals_recorded(tiny_policy, variant, cfg_scale, schedule, n_prompts, group):
    sampling = SamplingConfig(steps=6, cfg_scale=cfg_scale, variant=variant, noise_schedule=schedule)
    batch = rollout_groups(tiny_policy, list(enumerate(PROMPTS[:n_prompts])), group, sampling, torch.Generator().manual_seed(3), 0)
    b, t = len(batch), batch.steps
    traj = torch.arange(b).repeat_interleave(t)
    step = torch.arange(t).repeat(b)
    with torch.no_grad():
        recomputed, units = score_pairs(tiny_policy, batch, traj, step, sampling)
    recorded = batch.behaviour(traj, step)
    assert torch.isfinite(recorded).all() and (recorded[~units] == 0).all()
    torch.testing.assert_close(recomputed, recorded, atol=1e-5, rtol=0)  # every unit: token ratios too
    torch.testing.assert_close(recomputed.sum(1), batch.behaviour_logprob()[traj, step], atol=1e-4, rtol=0)
    # every position is revealed exactly once, at a step in range, and the last step reveals the rest
    assert (batch.reveal_step < t).all() and (batch.reveal_step == t - 1).any()


def test_noise_schedules():
    linear = noise_at(torch.arange(4), SamplingConfig(steps=4, noise_scale=2.0))
    compound = noise_at(torch.arange(4), SamplingConfig(steps=4, noise_scale=2.0, noise_schedule="compound"))
    torch.testing.assert_close(linear, torch.tensor([1.5, 1.0, 0.5, 0.0], dtype=torch.float64))
    # Show-o: sigma_0 * prod_{s <= t} (1 - (s + 1) / T)
    torch.testing.assert_close(compound, 2.0 * torch.tensor([0.75, 0.75 * 0.5, 0.75 * 0.5 * 0.25, 0.0], dtype=torch.float64))


def test_ar_scores_the_tokens_sampled_at_the_step(tiny_policy):
    sampling = SamplingConfig(steps=4, variant="ar")
    batch = rollout_groups(tiny_policy, list(enumerate(PROMPTS[:1])), 2, sampling, torch.Generator().manual_seed(0), 0)
    drawn = batch.step_tokens.view(len(batch), 4, -1)
    revealed_now = batch.reveal_step[:, None, :] == torch.arange(4)[None, :, None]
    assert torch.equal(drawn[revealed_now], batch.tokens[:, None, :].expand_as(drawn)[revealed_now])
    masked_later = batch.reveal_step[:, None, :] > torch.arange(4)[None, :, None]
    assert (drawn[masked_later] != batch.tokens[:, None, :].expand_as(drawn)[masked_later]).any()  # re-masked draws differ

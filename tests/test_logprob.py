"""The learner's recomputed transition log-probs equal the sampler's recorded ones."""
import pytest
import torch

from maskrl.grpo import score_pairs
from maskrl.iteration import rollout_groups
from maskrl.sampling import SamplingConfig
from maskrl.transition import VARIANTS
from maskrl.world import parse_prompt

PROMPTS = [parse_prompt(t) for t in ("a red circle", "three squares", "a cross to the left of a circle")]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("cfg_scale", [0.0, 2.0])
@pytest.mark.parametrize("n_prompts,group", [(1, 1), (3, 2)])
def test_recomputed_logprob_equals_recorded(tiny_policy, variant, cfg_scale, n_prompts, group):
    sampling = SamplingConfig(steps=6, cfg_scale=cfg_scale, variant=variant)
    batch = rollout_groups(tiny_policy, list(enumerate(PROMPTS[:n_prompts])), group, sampling, torch.Generator().manual_seed(3), 0)
    b, t = len(batch), batch.steps
    traj = torch.arange(b).repeat_interleave(t)
    step = torch.arange(t).repeat(b)
    with torch.no_grad():
        recomputed = score_pairs(tiny_policy, batch, traj, step, sampling)
    recorded = batch.behaviour_logprob[traj, step]
    assert torch.isfinite(recorded).all()
    torch.testing.assert_close(recomputed, recorded, atol=1e-5, rtol=0)
    # every position is revealed exactly once, at a step in range, and the last step reveals the rest
    assert (batch.reveal_step < t).all() and (batch.reveal_step == t - 1).any()

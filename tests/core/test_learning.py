"""Mask-GRPO optimises its reward: on a tiny random policy and a reward a few updates can move
(the share of red cells), every variant and ratio aggregation raises the reward of a fixed
evaluation batch well beyond its start. A sign error, a wrong ratio or a broken normalisation
fails this."""
import numpy as np
import pytest
import torch

from maskrl.grpo import GRPOConfig, grpo_update
from maskrl.iteration import PromptStream, prepare, rollout_groups, score
from maskrl.models import PaletteTokenizer, ShowoPolicy
from maskrl.rewards.base import RewardOutput, register_reward
from maskrl.sampling import SamplingConfig, sample
from tests.helpers import TINY

RED = 1


class RedShare:
    """Test reward: the fraction of red cells."""

    name = "test_red"
    Options = None

    def __call__(self, images, prompts):
        return RewardOutput(scores=(np.asarray(images) == RED).mean(axis=(1, 2)).astype(np.float32), components={})


register_reward("test_red", RedShare)


def red_share(policy, sampling) -> float:
    prompts = [p for _, p in PromptStream(99).take(16)]
    grids = PaletteTokenizer().decode(sample(policy, prompts, sampling, torch.Generator().manual_seed(7)).tokens)
    return float((grids == RED).mean())


@pytest.mark.parametrize("variant,ratio", [("candidate1", "sequence"), ("candidate2", "sequence"),
                                           ("candidate1", "token"), ("ar", "gspo")])
def test_mask_grpo_raises_a_learnable_reward(variant, ratio):
    torch.manual_seed(0)
    policy = ShowoPolicy(TINY)
    sampling = SamplingConfig(steps=4, variant=variant, cfg_scale=1.0)
    cfg = GRPOConfig(group_size=4, prompts_per_iter=4, steps_per_traj=4, epochs=2, minibatch_pairs=32, ratio=ratio)
    optim = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    gen, stream = torch.Generator().manual_seed(0), PromptStream(0)

    def step(loss):
        optim.zero_grad()
        loss.backward()
        optim.step()
        return 0.0

    before = red_share(policy.eval(), sampling)
    for it in range(8):
        batch, _ = score(rollout_groups(policy.eval(), stream.take(cfg.prompts_per_iter), cfg.group_size, sampling, gen, it),
                         RedShare(), policy.decode_images)
        grpo_update(policy, None, prepare(batch, cfg).batch, cfg, sampling, step, gen)
    after = red_share(policy.eval(), sampling)
    assert after > before + 0.2, (before, after)

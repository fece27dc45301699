"""The pieces of one Mask-GRPO iteration, shared by the single-process trainer and the Ray
driver: the resumable prompt stream, rollouts of whole groups, reward attachment, and the
advantage/filter step that turns a scored batch into a training batch."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from maskrl.branching import BranchConfig, common_noise, draw_branch_steps
from maskrl.grpo import GRPOConfig, filter_groups, group_advantages
from maskrl.models.policy import ImageDecoder, MaskedPolicy
from maskrl.rewards import Reward
from maskrl.sampling import SamplingConfig, sample
from maskrl.trajectory import TrajectoryBatch
from maskrl.world import PromptSampler


class PromptStream:
    """Prompt i of a run is a pure function of (seed, i): resuming at a position continues exactly.

    The prompts are ShapesWorld's (drawn from its grammar), or `texts` (a prompt file), taken in a
    fresh seeded order every pass over them. `pool` > 0 cycles through the stream's first `pool`
    prompts instead (prompt i is prompt i % pool): a run on a handful of prompts, to check that the
    RL can fit them at all."""

    def __init__(self, seed: int, weights: dict[str, float] | None = None, position: int = 0, pool: int = 0,
                 texts: list[str] | None = None):
        self.seed, self.position, self.pool, self.texts = seed, position, pool, texts
        self._sampler = PromptSampler(weights)

    def take(self, n: int) -> list[tuple[int, str]]:
        """The next n (stream index, prompt text) pairs."""
        out = [(i, self._prompt(i % self.pool if self.pool else i)) for i in range(self.position, self.position + n)]
        self.position += n
        return out

    def _prompt(self, i: int) -> str:
        if self.texts is None:
            return self._sampler.sample(np.random.default_rng([self.seed, i])).text
        passes, at = divmod(i, len(self.texts))
        return self.texts[np.random.default_rng([self.seed, passes]).permutation(len(self.texts))[at]]


def rollout_groups(
    policy: MaskedPolicy, prompts: list[tuple[int, str]], group_size: int, sampling: SamplingConfig,
    generator: torch.Generator, version: int, branch: BranchConfig | None = None,
) -> TrajectoryBatch:
    """G trajectories for each (stream index, prompt text); the group id is the stream index. With
    `branch` enabled the groups branch at a drawn step and share all other random numbers
    (maskrl.branching); a micro-batch then holds whole groups."""
    texts = [p for _, p in prompts for _ in range(group_size)]
    index = torch.tensor([i for i, _ in prompts for _ in range(group_size)])
    branch_step, noise = torch.full((len(texts),), -1), None
    if branch is not None and branch.enabled:
        starts = draw_branch_steps(branch, len(prompts), sampling.steps, generator)
        noise = common_noise(starts, group_size, branch.window, sampling.steps, policy.num_image_tokens, generator)
        branch_step = starts.repeat_interleave(group_size)
        sampling = replace(sampling, micro_batch=max(1, sampling.micro_batch // group_size) * group_size)
    rollout = sample(policy, texts, sampling, generator, noise)
    b = len(texts)
    return TrajectoryBatch(
        prompts=texts, prompt_ids=policy.encode_prompts(texts), prompt_index=index, group_id=index,
        tokens=rollout.tokens, reveal_step=rollout.reveal_step, cutoff=rollout.cutoff,
        behaviour_terms=rollout.behaviour_terms.reshape(b, -1), step_tokens=rollout.step_tokens.reshape(b, -1), reward=torch.full((b,), float("nan")),
        advantage=torch.zeros(b), policy_version=torch.full((b,), version), variant=sampling.variant,
        branch_step=branch_step,
    )


def score(batch: TrajectoryBatch, reward: Reward, decode: ImageDecoder) -> tuple[TrajectoryBatch, dict[str, float]]:
    """Decode the tokens to images and attach their rewards; returns the batch and the reward
    components' means for logging."""
    out = reward(decode(batch.tokens), batch.prompts)
    comps = {f"reward/{k}": float(np.nanmean(v)) for k, v in out.components.items()}
    return replace(batch, reward=torch.as_tensor(out.scores, dtype=torch.float32)), comps


def check_groups(batch: TrajectoryBatch, planned: list[int], group_size: int) -> None:
    """Exactly the planned groups, each with exactly `group_size` trajectories: none lost, none duplicated."""
    ids, counts = torch.unique(batch.group_id, return_counts=True)
    if ids.tolist() != sorted(planned) or not bool((counts == group_size).all()):
        bad = {int(i): int(c) for i, c in zip(ids, counts) if c != group_size}
        lost = sorted(set(planned) - set(ids.tolist()))
        raise RuntimeError(f"batch does not match the plan: lost groups {lost[:5]}, wrong sizes {dict(list(bad.items())[:5])}")


@dataclass
class Prepared:
    batch: TrajectoryBatch  # finite rewards, kept groups, advantages set
    metrics: dict[str, float]


def prepare(batch: TrajectoryBatch, cfg: GRPOConfig) -> Prepared:
    """Drop non-finite rewards (never trained on), compute advantages, filter flat groups."""
    finite = torch.isfinite(batch.reward)
    kept = batch.select(finite.nonzero().squeeze(1))
    keep, n_filtered = filter_groups(kept.reward, kept.group_id, cfg.min_group_std)
    kept = kept.select(keep.nonzero().squeeze(1))
    adv = group_advantages(kept.reward, kept.group_id, cfg.std_normalize, cfg.global_std) if len(kept) else kept.advantage
    rewards = batch.reward[finite]
    metrics = {
        "reward/mean": float(rewards.mean()) if len(rewards) else float("nan"),
        "reward/std": float(rewards.std()) if len(rewards) > 1 else 0.0,
        "reward/nonfinite": float((~finite).sum()),
        "groups/filtered": float(n_filtered),
        "groups/kept": float(len(torch.unique(kept.group_id))),
    }
    return Prepared(replace(kept, advantage=adv), metrics)

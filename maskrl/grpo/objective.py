"""The Mask-GRPO objective over (trajectory, step) pairs, as in the paper and CleanRL's PPO.

The learner never replays a trajectory: it rebuilds the state before each sampled step
from the compact record and scores a whole batch of pairs in one forward pass, with the
same CFG/temperature/variant the sampler used.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from maskrl.models import ShowoPolicy
from maskrl.sampling import SamplingConfig, noise_at, step_logprobs, text_inputs
from maskrl.trajectory import TrajectoryBatch
from maskrl.transition import state_before, transition_logprob


@dataclass
class GRPOConfig:
    group_size: int = 8  # rollouts per prompt
    prompts_per_iter: int = 16
    steps_per_traj: int = 4  # K random unmasking steps per trajectory enter the loss
    epochs: int = 2  # optimisation epochs per batch
    minibatch_pairs: int = 128  # (trajectory, step) pairs per optimiser step
    lr: float = 3e-5
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.02
    warmup_iters: int = 0  # the first warm-up iteration runs at lr 0
    min_lr_ratio: float = 0.1
    clip_low: float = 0.2
    clip_high: float = 0.28  # the paper widens the upper bound
    kl_coef: float = 0.0  # k3 KL to the frozen reference (base) policy; 0 disables it
    std_normalize: bool = True
    global_std: bool = False
    min_group_std: float = 1e-4  # groups with less reward spread are filtered
    grad_clip: float = 1.0


def sample_steps(batch_size: int, steps: int, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """K distinct random steps per trajectory -> flat (trajectory index, step index) pairs."""
    k = min(k, steps)
    step_idx = torch.rand(batch_size, steps, generator=generator).argsort(dim=1)[:, :k]
    traj_idx = torch.arange(batch_size)[:, None].expand(-1, k)
    return traj_idx.reshape(-1), step_idx.reshape(-1)


def score_pairs(
    policy: ShowoPolicy, batch: TrajectoryBatch, traj: torch.Tensor, step: torch.Tensor, sampling: SamplingConfig
) -> torch.Tensor:
    """(P,) transition log-probs (of `sampling.variant`) of the pairs under `policy`, differentiable."""
    dev = next(policy.parameters()).device
    tokens, reveal = batch.tokens[traj].to(dev), batch.reveal_step[traj].to(dev)
    text_ids, cutoff, step = batch.prompt_ids[traj].long().to(dev), batch.cutoff[traj, step].to(dev), step.to(dev)
    null_ids, attn_mask = text_inputs(policy, text_ids, sampling)
    state = state_before(tokens, reveal, step, policy.mask_code)
    logp = step_logprobs(policy, text_ids, null_ids, state, attn_mask, sampling)
    noise = noise_at(step, sampling).float()
    return transition_logprob(logp, tokens, reveal, step, cutoff, noise, sampling.variant)


def clipped_surrogate(new_lp, old_lp, advantage, clip_low: float, clip_high: float):
    """PPO/GRPO clipped loss with separate bounds; returns (loss, clip fraction, approx KL)."""
    log_ratio = new_lp - old_lp
    ratio = log_ratio.exp()
    unclipped = ratio * advantage
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high) * advantage
    loss = -torch.minimum(unclipped, clipped).mean()
    with torch.no_grad():
        clip_frac = ((ratio < 1 - clip_low) | (ratio > 1 + clip_high)).float().mean()
        approx_kl = ((ratio - 1) - log_ratio).mean()
    return loss, clip_frac, approx_kl


def k3_kl(new_lp: torch.Tensor, ref_lp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || pi_ref): unbiased, always >= 0."""
    log_r = ref_lp - new_lp
    return log_r.exp() - log_r - 1


def grpo_loss(policy, reference, batch: TrajectoryBatch, traj, step, cfg: GRPOConfig, sampling: SamplingConfig):
    """Loss of one minibatch of pairs, and its diagnostics (as tensors)."""
    if batch.variant != sampling.variant:
        raise ValueError(f"trajectories record {batch.variant!r} log-probs but the learner uses {sampling.variant!r}")
    new_lp = score_pairs(policy, batch, traj, step, sampling)
    old_lp, advantage = batch.behaviour_logprob[traj, step].to(new_lp.device), batch.advantage[traj].to(new_lp.device)
    loss, clip_frac, approx_kl = clipped_surrogate(new_lp, old_lp, advantage, cfg.clip_low, cfg.clip_high)
    metrics = {"clip_frac": clip_frac, "approx_kl": approx_kl, "ratio": (new_lp - old_lp).exp().mean().detach()}
    if reference is not None:
        with torch.no_grad():
            ref_lp = score_pairs(reference, batch, traj, step, sampling)
        kl = k3_kl(new_lp, ref_lp).mean()
        metrics["kl_ref"] = kl.detach()
        if cfg.kl_coef:
            loss = loss + cfg.kl_coef * kl
    metrics["policy_loss"] = loss.detach()
    return loss, metrics

"""The Mask-GRPO objective over (trajectory, step) pairs, as in the paper and CleanRL's PPO.

The learner never replays a trajectory: it rebuilds the state before each sampled step
from the compact record and scores a whole batch of pairs in one forward pass, with the
same CFG/temperature/variant the sampler used. A transition's log-prob is a sum of units
(maskrl.transition); `ratio` says how the importance ratio is formed from them:

- ``sequence``: one ratio per transition, exp of the summed log-ratio (the paper's);
- ``token``: one ratio per unit, clipped per unit, averaged over every unit of the
  minibatch (token-mean, as DAPO);
- ``gspo``: one ratio per transition, exp of the *mean* log-ratio over its units (GSPO's
  length-normalised sequence ratio).

`dual_clip` c > 1 bounds the loss of a negative-advantage sample at -c * A (dual-clip PPO).
KL to the reference is k3 per unit, averaged over units: k3 of a summed log-ratio over
hundreds of positions explodes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import torch

from maskrl.branching import BranchConfig, branch_pairs
from maskrl.models.policy import MaskedPolicy
from maskrl.sampling import SamplingConfig, noise_at, step_logprobs, text_inputs
from maskrl.trajectory import TrajectoryBatch
from maskrl.transition import transition_terms, unit_mask

class Ratio(StrEnum):
    """How the importance ratio is formed from a transition's units (module docstring)."""
    sequence = "sequence"
    token = "token"
    gspo = "gspo"


RATIOS = tuple(Ratio)


class Optimizer(StrEnum):
    adamw = "adamw"
    sgd = "sgd"  # steps in proportion to the gradient: no per-parameter normalisation of noisy coordinates


@dataclass
class GRPOConfig:
    group_size: int = 8  # rollouts per prompt
    prompts_per_iter: int = 16
    steps_per_traj: int = 4  # K random unmasking steps per trajectory enter the loss
    epochs: int = 2  # optimisation epochs per batch
    minibatch_pairs: int = 128  # (trajectory, step) pairs per optimiser step
    optimizer: Optimizer = Optimizer.adamw
    lr: float = 3e-5
    momentum: float = 0.0  # sgd only
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.02
    warmup_iters: int = 0  # the first warm-up iteration runs at lr 0
    min_lr_ratio: float = 0.1
    clip_low: float = 0.2
    clip_high: float = 0.28  # the paper widens the upper bound
    ratio: Ratio = Ratio.sequence
    dual_clip: float = 0.0  # c > 1: a negative advantage's loss is at most -c * A; 0 disables
    kl_coef: float = 0.0  # per-unit k3 KL to the frozen reference (base) policy; 0 disables it
    std_normalize: bool = True
    global_std: bool = False
    min_group_std: float = 1e-4  # groups with less reward spread are filtered
    grad_clip: float = 1.0
    branch: BranchConfig = field(default_factory=BranchConfig)  # branched groups: only branch steps train


def check_grpo(cfg: GRPOConfig) -> None:
    """Refuse values the objective cannot use, naming the key."""
    if cfg.ratio not in RATIOS:
        raise ValueError(f"grpo.ratio={cfg.ratio!r} is not one of {[str(r) for r in RATIOS]}")
    if cfg.dual_clip and cfg.dual_clip <= 1:
        raise ValueError(f"grpo.dual_clip={cfg.dual_clip} must be > 1 (or 0 to disable)")


def sample_steps(batch_size: int, steps: int, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """K distinct random steps per trajectory -> flat (trajectory index, step index) pairs."""
    k = min(k, steps)
    step_idx = torch.rand(batch_size, steps, generator=generator).argsort(dim=1)[:, :k]
    traj_idx = torch.arange(batch_size)[:, None].expand(-1, k)
    return traj_idx.reshape(-1), step_idx.reshape(-1)


def training_pairs(batch: TrajectoryBatch, cfg: GRPOConfig, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The (trajectory, step) pairs a batch trains on: its branch windows when it was rolled out
    branched (maskrl.branching), else K random steps per trajectory."""
    branched = batch.branch_step >= 0
    if len(batch) and bool(branched.any()) != bool(branched.all()):
        raise ValueError("a training batch mixes branched and unbranched trajectories")
    if len(batch) and cfg.branch.enabled != bool(branched.all()):
        raise ValueError(f"grpo.branch.enabled={cfg.branch.enabled} but the trajectories were rolled out "
                         f"{'branched' if branched.all() else 'unbranched'}")
    if cfg.branch.enabled:
        return branch_pairs(batch.branch_step, cfg.branch.window)
    return sample_steps(len(batch), batch.steps, cfg.steps_per_traj, generator)


def _step_masks(batch: TrajectoryBatch, traj: torch.Tensor, step: torch.Tensor):
    reveal = batch.reveal_step[traj].long()
    return reveal >= step[:, None], reveal == step[:, None]


def pair_units(batch: TrajectoryBatch, traj: torch.Tensor, step: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """(P, N + 1) the units of the pairs' transitions, from the record alone (no forward pass)."""
    masked_before, revealed = _step_masks(batch, traj, step)
    return unit_mask(masked_before, revealed, noise_at(step, sampling), sampling.variant)


def _logprobs_at(policy: MaskedPolicy, batch: TrajectoryBatch, traj: torch.Tensor, masked_before: torch.Tensor,
                 sampling: SamplingConfig) -> torch.Tensor:
    """(P, N, K) token log-probs at the states where `masked_before` is still masked, differentiable."""
    text_ids = batch.prompt_ids[traj].long().to(masked_before.device)
    null_ids, attn_mask = text_inputs(policy, text_ids, sampling)
    state = torch.where(masked_before, policy.mask_code, batch.tokens[traj].long().to(masked_before.device))
    return step_logprobs(policy, text_ids, null_ids, state, attn_mask, sampling)


def pair_logprobs(
    policy: MaskedPolicy, batch: TrajectoryBatch, traj: torch.Tensor, step: torch.Tensor, sampling: SamplingConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """((P, N, K) token log-probs at the state before each pair's step, (P, N) masked there), differentiable."""
    masked_before = _step_masks(batch, traj, step)[0].to(next(policy.parameters()).device)
    return _logprobs_at(policy, batch, traj, masked_before, sampling), masked_before


def score_pairs(
    policy: MaskedPolicy, batch: TrajectoryBatch, traj: torch.Tensor, step: torch.Tensor, sampling: SamplingConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """((P, N + 1) per-unit log-probs, units) of the pairs' transitions under `policy`, differentiable."""
    dev = next(policy.parameters()).device
    masked_before, revealed = (m.to(dev) for m in _step_masks(batch, traj, step))
    logp = _logprobs_at(policy, batch, traj, masked_before, sampling)
    tokens = batch.tokens_at(traj, step).to(dev)
    cutoff, noise = batch.cutoff[traj, step].to(dev), noise_at(step, sampling).float().to(dev)
    return transition_terms(logp, tokens, masked_before, revealed, cutoff, noise, sampling.variant)


def log_ratios(new_terms, old_terms, units, ratio: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-ratios, their loss weights before normalisation) for the chosen aggregation."""
    diff = (new_terms - old_terms) * units
    if ratio == "token":
        return diff, units.float()
    total = diff.sum(dim=1)
    if ratio == "gspo":
        total = total / units.sum(dim=1).clamp_min(1)
    return total, torch.ones_like(total)


def clipped_surrogate(log_ratio, advantage, weight, clip_low: float, clip_high: float, dual_clip: float = 0.0):
    """Sum of the weighted PPO/GRPO clipped losses (separate bounds, optional dual clip), and
    the weighted clip fraction and approximate KL of the ratios."""
    ratio = log_ratio.exp()
    adv = advantage.reshape(-1, *([1] * (log_ratio.dim() - 1))).expand_as(log_ratio)
    objective = torch.minimum(ratio * adv, ratio.clamp(1 - clip_low, 1 + clip_high) * adv)
    if dual_clip:
        objective = torch.where(adv < 0, torch.maximum(objective, dual_clip * adv), objective)
    loss = -(objective * weight).sum()
    with torch.no_grad():
        share = weight / weight.sum().clamp_min(1e-12)
        clip_frac = (((ratio < 1 - clip_low) | (ratio > 1 + clip_high)).float() * share).sum()
        approx_kl = (((ratio - 1) - log_ratio) * share).sum()
    return loss, clip_frac, approx_kl


def k3_kl(new_lp: torch.Tensor, ref_lp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || pi_ref): unbiased, always >= 0."""
    log_r = ref_lp - new_lp
    return log_r.exp() - log_r - 1


def minibatch_size(batch: TrajectoryBatch, traj, step, sampling: SamplingConfig) -> tuple[float, float]:
    """(pairs, units) of a whole minibatch: what its summed losses are divided by, so that ranks
    scoring slices of it add up to the single-process loss."""
    return float(len(traj)), float(pair_units(batch, traj, step, sampling).sum())


def grpo_loss(policy, reference, batch: TrajectoryBatch, traj, step, cfg: GRPOConfig, sampling: SamplingConfig,
              size: tuple[float, float]):
    """Loss of (a rank's share of) one minibatch of pairs, normalised by the whole minibatch's
    `size` (pairs for sequence ratios, units for token ratios and KL), and its diagnostics."""
    if batch.variant != sampling.variant:
        raise ValueError(f"trajectories record {batch.variant!r} log-probs but the learner uses {sampling.variant!r}")
    new_terms, units = score_pairs(policy, batch, traj, step, sampling)
    old_terms, advantage = batch.behaviour(traj, step).to(new_terms.device), batch.advantage[traj].to(new_terms.device)
    log_ratio, weight = log_ratios(new_terms, old_terms, units, cfg.ratio)
    loss, clip_frac, approx_kl = clipped_surrogate(log_ratio, advantage, weight, cfg.clip_low, cfg.clip_high, cfg.dual_clip)
    pairs, unit_count = size
    loss = loss / (unit_count if cfg.ratio == "token" else pairs)
    seq_ratio = ((new_terms - old_terms) * units).sum(dim=1).exp()
    metrics = {"clip_frac": clip_frac, "approx_kl": approx_kl, "ratio": seq_ratio.mean().detach()}
    if reference is not None:
        with torch.no_grad():
            ref_terms, _ = score_pairs(reference, batch, traj, step, sampling)
        kl_sum = (k3_kl(new_terms, ref_terms) * units).sum()
        metrics["kl_ref"] = (kl_sum / units.sum().clamp_min(1)).detach()
        if cfg.kl_coef:
            loss = loss + cfg.kl_coef * kl_sum / unit_count
    metrics["policy_loss"] = loss.detach()
    return loss, metrics

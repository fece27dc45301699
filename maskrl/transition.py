"""Transition log-probabilities of one unmasking step, log pi(s_{t+1} | s_t).

A trajectory is stored compactly (final tokens, the step that revealed each position,
a per-step confidence cutoff), so the state before step t is one vectorised op and any
batch of (trajectory, step) pairs is scored from its (P, N, K) log-probs at once. The
sampler calls the very same function on its own log-probs, so recorded behaviour
log-probs and the learner's recomputation agree by construction.

Variants (DESIGN.md):
- ``candidate2``: sum of log p(token) over the positions revealed at the step;
- ``candidate1``: candidate2 plus, for every position that stays masked, the log of the
  probability that its sampled token is not confident enough to be revealed. The sampler
  ranks tokens by log p(x) + sigma_t * g, g ~ Gumbel(0, 1), against the step's cutoff
  kappa_t (the smallest noisy confidence it revealed), so that probability is
  ``sum_x p(x) * F_gumbel((kappa_t - log p(x)) / sigma_t)``. With no noise (sigma_t = 0)
  it is exactly the paper's mass of the tokens whose probability is below exp(kappa_t);
  with noise it is the same event under the noise the sampler really adds (without it,
  most re-masked positions would have no token below the cutoff at all);
- ``ar``: log p(final token) over every position masked before the step (AR-style).
"""
from __future__ import annotations

import torch

VARIANTS = ("candidate1", "candidate2", "ar")
# floor of a re-masked position's log-probability: keeps ratios finite if it underflows.
LOG_MASS_FLOOR = -30.0
_BIG, _MAX_EXP = 1e4, 30.0


def state_before(tokens: torch.Tensor, reveal_step: torch.Tensor, step: torch.Tensor, mask_code: int) -> torch.Tensor:
    """(P, N) image state before `step` (per row): revealed tokens, the mask elsewhere."""
    return torch.where(reveal_step.long() < step[:, None], tokens.long(), mask_code)


def remask_logprob(logp: torch.Tensor, cutoff: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """(P, N) log P(log p(x) + noise * g < cutoff), x ~ p, g ~ Gumbel(0, 1), per position.

    `cutoff` is the step's log-confidence threshold and `noise` its Gumbel scale (P,)."""
    gap = cutoff[:, None, None] - logp  # > 0 where the token is below the cutoff
    sigma = noise[:, None, None]
    # log F_gumbel(gap / sigma) = -exp(-gap / sigma); sigma = 0 is the hard indicator gap > 0.
    # Finite stand-ins for -inf keep every backward pass NaN-free (all-excluded rows hit the floor).
    soft = -torch.exp((-gap / sigma.clamp_min(1e-12)).clamp_max(_MAX_EXP))
    hard = torch.where(gap > 0, 0.0, -_BIG)
    log_below = torch.where(sigma > 0, soft, hard).clamp_min(-_BIG)
    return torch.logsumexp(logp + log_below, dim=-1).clamp_min(LOG_MASS_FLOOR)


def transition_logprob(
    logp: torch.Tensor,
    tokens: torch.Tensor,
    reveal_step: torch.Tensor,
    step: torch.Tensor,
    cutoff: torch.Tensor,
    noise: torch.Tensor,
    variant: str,
) -> torch.Tensor:
    """(P,) log pi for P (trajectory, step) pairs from their (P, N, K) log-probs at that step."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown transition variant {variant!r}; expected one of {VARIANTS}")
    reveal = reveal_step.long()
    masked_before = reveal >= step[:, None]
    token_logp = logp.gather(-1, tokens.long()[..., None]).squeeze(-1)
    if variant == "ar":
        return (token_logp * masked_before).sum(dim=1)
    revealed_now = reveal == step[:, None]
    out = (token_logp * revealed_now).sum(dim=1)
    if variant == "candidate1":
        remasked = masked_before & ~revealed_now
        out = out + (remask_logprob(logp, cutoff, noise) * remasked).sum(dim=1)
    return out

"""Transition log-probabilities of one unmasking step, log pi(s_{t+1} | s_t), as per-unit terms.

The sampler (maskrl.sampling) at step t draws x_i ~ p_i for every masked position i, scores
it c_i = log p_i(x_i) + sigma_t * g_i with g_i ~ Gumbel(0, 1), reveals the k_t highest scores
and re-masks the rest; the cutoff kappa_t = min of the revealed scores is recorded. A
transition's log-probability is a sum of *units*: one per position it involves, plus (for
candidate 1) one for the step itself. Summed they give the sequence log-prob; kept apart they
give per-token ratios and per-token KL (maskrl.grpo.objective). Sampler and learner call the
same function, so recorded behaviour terms and the learner's recomputation agree by construction.

Variants (DESIGN.md):

- ``candidate2``: log p(x_i) of every position revealed at the step;
- ``candidate1``: the exact log-density of the step's observed outcome O = (R, x_R, kappa):
  the revealed set R, its tokens and the cutoff. With a_i = log p_i(x_i),
  z_i = (kappa - a_i) / sigma, the Gumbel CDF F(z) = exp(-e^-z) and density f(z) = exp(-z - e^-z),
  positions being independent given the state,

      density(O) = prod_{i in R} p_i(x_i) * prod_{i in M \\ R} Q_i
                   * sum_{j in R} f(z_j) / sigma * prod_{i in R, i != j} (1 - F(z_i))

  where j, the revealed position whose score *is* kappa, is not recorded and so is summed
  over; 1 - F(z_i) = P(c_i > kappa | x_i); and a re-masked position, whose token is discarded,
  falls below the cutoff with Q_i = P(c_i < kappa) = sum_x p_i(x) F((kappa - log p_i(x)) / sigma).
  Its log splits into units: revealed i -> a_i + log(1 - F(z_i)); re-masked i -> log Q_i; the
  step -> logsumexp_{j in R}[log f(z_j) - log(1 - F(z_j))] - log sigma (kappa's density).
  As sigma -> 0 the scores are the log-probs themselves: R is the top-k of a_i, the selection
  is certain and Q_i is the mass of tokens below kappa, the paper's noise-free form, used at
  sigma = 0. A step that re-masks nothing (the last) reveals every masked position whatever the
  scores, so its outcome is the tokens alone (candidate 2's units);
- ``candidate1_fixed_cutoff``: candidate 2 plus the re-mask units with kappa held fixed,
  leaving out the selection terms. Not a likelihood (its gradient opposes the revealed-token
  gradient); kept to compare against;
- ``ar``: as the public code: log p(y_i) of the token y_i *sampled at the step* at every
  position masked before it (revealed or not), which needs the step's samples recorded.

Under shared noise (branched groups, maskrl.branching) the same terms are recorded. At a branch
step each rollout draws its own token uniforms and Gumbel noise, so every variant's terms there
mean what they mean unbranched: ``candidate1`` is the exact log-probability of the step's outcome
given its state, ``candidate2`` and ``ar`` the same approximations as always. At the other steps
the draws are shared by the group and the outcome is a deterministic function of the state; their
terms are recorded but not trained, and only the branch steps enter the loss.
"""
from __future__ import annotations

from enum import StrEnum

import torch

class Variant(StrEnum):
    """The transition log-probability a trajectory records and the learner scores."""
    candidate1 = "candidate1"
    candidate1_fixed_cutoff = "candidate1_fixed_cutoff"
    candidate2 = "candidate2"
    ar = "ar"


VARIANTS = tuple(Variant)
# floor of a re-masked position's log-probability: keeps ratios finite if it underflows.
LOG_MASS_FLOOR = -30.0
_BIG, _MAX_EXP = 1e4, 30.0


def needs_step_tokens(variant: str) -> bool:
    """Whether the variant scores the tokens sampled at each step (recorded per step)."""
    return variant == "ar"


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown transition variant {variant!r}; expected one of {[str(v) for v in VARIANTS]}")


def remask_logprob(logp: torch.Tensor, cutoff: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """(P, N) log Q = log P(log p(x) + noise * g < cutoff), x ~ p, g ~ Gumbel(0, 1), per position.

    `cutoff` is the step's log-confidence threshold and `noise` its Gumbel scale (P,)."""
    gap = cutoff[:, None, None] - logp  # > 0 where the token is below the cutoff
    sigma = noise[:, None, None]
    # log F_gumbel(gap / sigma) = -exp(-gap / sigma); sigma = 0 is the hard indicator gap > 0.
    # Finite stand-ins for -inf keep every backward pass NaN-free (all-excluded rows hit the floor).
    soft = -torch.exp((-gap / sigma.clamp_min(1e-12)).clamp_max(_MAX_EXP))
    hard = torch.where(gap > 0, 0.0, -_BIG)
    log_below = torch.where(sigma > 0, soft, hard).clamp_min(-_BIG)
    return torch.logsumexp(logp + log_below, dim=-1).clamp_min(LOG_MASS_FLOOR)


def log_gumbel_survival(w: torch.Tensor) -> torch.Tensor:
    """log(1 - F(z)) = log(1 - exp(-e^w)) for w = -z, stable and NaN-free in both tails."""
    small = w.clamp_max(-20.0)  # e^w < 2e-9: log(1 - exp(-e^w)) = w - e^w / 2 + O(e^2w)
    large = w.clamp(-20.0, 50.0)  # beyond 50 the survival is 1 to double precision
    return torch.where(w < -20.0, small - small.exp() / 2, torch.log(-torch.expm1(-large.exp())))


def selection_terms(token_logp, revealed, cutoff, sigma):
    """Candidate 1's selection units: (P, N) log P(c_i > kappa | x_i) on revealed positions and
    (P,) the log-density of kappa (see the module docstring); float64 inside, sigma > 0 rows only."""
    s = sigma.double().clamp_min(1e-12)[:, None]
    w = (token_logp.double() - cutoff.double()[:, None]) / s  # -z_i
    log_surv = log_gumbel_survival(w)
    log_density = w - w.clamp_max(50.0).exp()  # log f(z) = -z - e^-z
    hazard = torch.where(revealed, log_density - log_surv, -1e30)  # finite: NaN-free backward
    kappa = torch.logsumexp(hazard, dim=1) - s[:, 0].log()
    return (log_surv * revealed).to(token_logp.dtype), kappa.to(token_logp.dtype)


def unit_mask(masked_before: torch.Tensor, revealed: torch.Tensor, noise: torch.Tensor, variant: str) -> torch.Tensor:
    """(P, N + 1) which units a variant's transition has: positions, then the step's own unit."""
    check_variant(variant)
    positions = {"ar": masked_before, "candidate2": revealed}.get(variant, masked_before)
    if variant == "candidate1":  # kappa's density; certain when sigma = 0 or nothing is re-masked
        step_unit = (noise > 0) & (masked_before & ~revealed).any(dim=1)
    else:
        step_unit = torch.zeros_like(noise, dtype=torch.bool)
    return torch.cat([positions, step_unit[:, None]], dim=1)


def transition_terms(
    logp: torch.Tensor,
    tokens: torch.Tensor,
    masked_before: torch.Tensor,
    revealed: torch.Tensor,
    cutoff: torch.Tensor,
    noise: torch.Tensor,
    variant: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-unit log-probs of P transitions: ((P, N + 1) terms, zero outside the units; the units).

    `logp` (P, N, K) is the step's token distribution, `tokens` (P, N) the tokens scored at the
    step (the revealed ones; for ``ar`` the step's samples at every masked position),
    `masked_before`/`revealed` (P, N) the positions masked before and revealed at the step,
    `cutoff`/`noise` (P,) the step's kappa and sigma. Unit N is the step's own term."""
    units = unit_mask(masked_before, revealed, noise, variant)
    token_logp = logp.gather(-1, tokens.long()[..., None]).squeeze(-1)
    positions, step_unit = token_logp, torch.zeros_like(token_logp[:, 0])
    if variant in ("candidate1", "candidate1_fixed_cutoff"):
        positions = torch.where(revealed, token_logp, remask_logprob(logp, cutoff, noise))
    if variant == "candidate1":
        survive, step_unit = selection_terms(token_logp, revealed, cutoff, noise)
        positions = positions + survive * units[:, -1:]  # only where the selection is random
    terms = torch.cat([positions, step_unit[:, None]], dim=1)
    return torch.where(units, terms, 0.0), units

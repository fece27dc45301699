"""The policy's own metric: Fisher-vector products of the sampler's token distributions, and
conjugate gradient to precondition a direction with them (natural gradient, as TRPO).

The metric is the Fisher information of every masked position's token distribution (CFG and
temperature applied) at the states before a batch of (trajectory, step) pairs: F v is the Hessian
of the mean per-position KL(pi_old || pi_theta) at theta = theta_old times v. Moving along d
changes those distributions by about 1/2 d^T F d nats a position, so a step can be sized in KL
instead of in parameter L2, and F^-1 g points where the reward rises most per nat of change.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.utils import parameters_to_vector

from maskrl.grpo.objective import pair_logprobs
from maskrl.sampling import SamplingConfig
from maskrl.trajectory import TrajectoryBatch


class FisherProduct:
    """v -> F v (flat, over `policy`'s trainable parameters) at the states of the pairs (traj, step).

    One forward pass builds the KL's gradient graph; every product then costs one backward. The forward
    runs on SDPA's math kernel: the fused CPU attention kernels have no second derivative."""

    def __init__(self, policy, batch: TrajectoryBatch, traj: torch.Tensor, step: torch.Tensor, sampling: SamplingConfig):
        self.params = [p for p in policy.parameters() if p.requires_grad]
        with sdpa_kernel(SDPBackend.MATH):
            logp, masked = pair_logprobs(policy, batch, traj, step, sampling)
        old = logp.detach()
        per_position = (old.exp() * (old - logp)).sum(-1)
        kl = (per_position * masked).sum() / masked.sum().clamp_min(1)
        self._grads = torch.autograd.grad(kl, self.params, create_graph=True)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        dot = sum((g * part).sum() for g, part in zip(self._grads, _split(v, self.params)))
        return parameters_to_vector(torch.autograd.grad(dot, self.params, retain_graph=True))


def _split(v: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [part.view_as(p) for part, p in zip(v.split([p.numel() for p in params]), params)]


def conjugate_gradient(product: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iterations: int = 10,
                       damping: float = 0.0, tol: float = 1e-10) -> torch.Tensor:
    """x with (A + damping I) x = b for a symmetric positive semi-definite A given as `product`."""
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r @ r
    for _ in range(iterations):
        if rr <= tol:
            break
        ap = product(p) + damping * p
        alpha = rr / (p @ ap)
        x, r = x + alpha * p, r - alpha * ap
        rr, rr_old = r @ r, rr
        p = r + rr / rr_old * p
    return x


def kl_length(product: Callable[[torch.Tensor], torch.Tensor], d: torch.Tensor) -> float:
    """1/2 d^T F d: the mean per-position KL (nats) that a step d causes, to second order."""
    return float(0.5 * d @ product(d))

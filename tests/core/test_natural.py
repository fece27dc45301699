"""The policy's own metric (maskrl.grpo.natural): Fisher-vector products are the curvature of the
token distributions' KL, and conjugate gradient solves with them."""
import copy

import pytest
import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from maskrl.grpo import pair_logprobs
from maskrl.grpo.natural import FisherProduct, conjugate_gradient, kl_length
from maskrl.iteration import PromptStream, rollout_groups
from maskrl.sampling import SamplingConfig

SAMPLING = SamplingConfig(steps=4, cfg_scale=2.0, variant="candidate2")


@pytest.fixture
def pairs(tiny_policy):
    batch = rollout_groups(tiny_policy, PromptStream(0).take(2), 2, SAMPLING, torch.Generator().manual_seed(0), 0)
    return batch, torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 3])


def _mean_kl(old, new, batch, traj, step) -> float:
    """The mean per-masked-position KL(old || new) at the pairs' states, computed directly."""
    with torch.no_grad():
        p, masked = pair_logprobs(old, batch, traj, step, SAMPLING)
        q, _ = pair_logprobs(new, batch, traj, step, SAMPLING)
    per_position = (p.exp() * (p - q)).sum(-1)
    return float((per_position * masked).sum() / masked.sum())


def test_fisher_product_is_the_curvature_of_the_kl(tiny_policy, pairs):
    """1/2 v^T F v equals the KL a small step along v causes (to second order), F is symmetric and PSD."""
    fisher = FisherProduct(tiny_policy, *pairs, SAMPLING)
    gen = torch.Generator().manual_seed(1)
    n = sum(p.numel() for p in tiny_policy.parameters())
    u, v = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    assert float(u @ fisher(v)) == pytest.approx(float(v @ fisher(u)), rel=1e-4)
    assert kl_length(fisher, u) > 0 and kl_length(fisher, v) > 0
    v = v / kl_length(fisher, v) ** 0.5  # 1/2 v^T F v = 1
    for eps in (0.01, 0.005):  # +-eps: the KL's cubic term cancels
        kls = []
        for step in (eps * v, -eps * v):
            moved = copy.deepcopy(tiny_policy)
            with torch.no_grad():
                vector_to_parameters(parameters_to_vector(moved.parameters()) + step, moved.parameters())
            kls.append(_mean_kl(tiny_policy, moved, *pairs))
        assert sum(kls) / 2 / eps ** 2 == pytest.approx(1.0, rel=0.02)

def test_conjugate_gradient_solves_a_damped_system():
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(30, 8, generator=gen, dtype=torch.float64)
    a = m @ m.T  # rank 8: singular without damping
    b = torch.randn(30, generator=gen, dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, iterations=60, damping=0.1)
    torch.testing.assert_close(x, torch.linalg.solve(a + 0.1 * torch.eye(30, dtype=torch.float64), b))

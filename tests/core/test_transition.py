"""Transition log-probs against the sampler's mechanism: exact candidate 1 equals the step
outcome's density measured by Monte-Carlo, its score has zero mean, the re-mask term equals
brute-force enumeration."""
import math

import pytest
import torch

from maskrl.transition import remask_logprob, transition_terms

N, K, KEEP = 3, 2, 1  # three masked positions, two codes, one re-masked: reveal two
LOGP = torch.log(torch.tensor([[0.7, 0.3], [0.45, 0.55], [0.2, 0.8]]))


def simulate(logits: torch.Tensor, sigma: float, n: int, gen: torch.Generator):
    """The sampler's step on an all-masked state: x ~ p, c = log p(x) + sigma * g, reveal top N - KEEP.
    Returns tokens (n, N), revealed (n, N) and the cutoff kappa (n,)."""
    logp = torch.log_softmax(logits, -1).expand(n, N, K)
    x = torch.multinomial(logp.exp().reshape(-1, K), 1, generator=gen).reshape(n, N)
    g = -torch.log(-torch.log(torch.rand(n, N, generator=gen, dtype=torch.float64).clamp(1e-300, 1 - 1e-16)))
    conf = logp.gather(-1, x[..., None]).squeeze(-1).double() + sigma * g
    stay = conf.topk(KEEP, dim=1, largest=False).indices
    revealed = torch.ones(n, N, dtype=torch.bool).scatter_(1, stay, False)
    kappa = conf.masked_fill(~revealed, math.inf).amin(dim=1)
    return x, revealed, kappa


def log_density(logits, x, revealed, kappa, sigma: float, variant="candidate1"):
    p = len(x)
    logp = torch.log_softmax(logits, -1).expand(p, N, K).double()
    masked = torch.ones(p, N, dtype=torch.bool)
    terms, units = transition_terms(logp, x, masked, revealed, kappa.double(), torch.full((p,), sigma, dtype=torch.float64), variant)
    return terms.sum(dim=1), units


@pytest.mark.parametrize("sigma", [0.4, 1.0, 2.5])
def test_exact_candidate1_equals_monte_carlo_density_of_the_step_outcome(sigma):
    gen = torch.Generator().manual_seed(0)
    n = 2_000_000
    x, revealed, kappa = simulate(LOGP, sigma, n, gen)
    # the commonest (revealed set, tokens) outcome, and kappa near its median
    code = (revealed.long() * (x + 1)).mul(torch.tensor([1, 3, 9])).sum(1)  # a re-masked token is unobserved
    target = code.mode().values
    hit = code == target
    k0 = float(kappa[hit].median())
    h = 0.1
    freq = (hit & ((kappa - k0).abs() < h / 2)).double().mean() / h  # density of kappa at k0, joint with the outcome
    row = hit.nonzero()[0]
    exact = log_density(LOGP, x[row], revealed[row], torch.tensor([k0]), sigma)[0].exp()
    assert freq.item() == pytest.approx(exact.item(), rel=0.04)


def test_sigma_zero_is_the_outcome_probability_of_the_noise_free_sampler():
    gen = torch.Generator().manual_seed(1)
    n = 400_000
    x, revealed, kappa = simulate(LOGP, 0.0, n, gen)
    code = (revealed.long() * (x + 1)).mul(torch.tensor([1, 3, 9])).sum(1)  # a re-masked token is unobserved
    for target in code.unique()[:6]:
        hit = code == target
        row = hit.nonzero()[0]
        exact, units = log_density(LOGP, x[row], revealed[row], kappa[row], 0.0)
        assert not units[0, -1]  # no density of kappa: the selection is certain without noise
        assert hit.double().mean().item() == pytest.approx(exact.exp().item(), abs=4e-3)


@pytest.mark.parametrize("sigma", [0.0, 0.5, 2.0])
def test_score_of_exact_candidate1_has_zero_mean(sigma):
    """E[grad log pi(outcome)] = 0: the per-sample gradients average to 0 within Monte-Carlo error."""
    gen = torch.Generator().manual_seed(2)
    n = 40_000
    base = torch.tensor([[0.4, -0.3], [0.1, 0.2], [-0.8, 0.5]], dtype=torch.float64)
    x, revealed, kappa = simulate(base, sigma, n, gen)
    logits = base.expand(n, N, K).clone().requires_grad_(True)  # one copy a sample: per-sample gradients
    log_density(logits, x, revealed, kappa, sigma)[0].sum().backward()
    grads = logits.grad.reshape(n, -1)
    z = grads.mean(0) / (grads.std(0) / math.sqrt(n))
    assert grads.std(0).max() > 0.1  # a real signal per sample
    assert z.abs().max() < 4.5, z


def test_fixed_cutoff_form_is_not_a_likelihood():
    """Holding kappa fixed and adding only the re-mask term biases the score (what made it hurt)."""
    gen = torch.Generator().manual_seed(3)
    n, sigma = 200_000, 1.0
    base = torch.tensor([[0.4, -0.3], [0.1, 0.2], [-0.8, 0.5]], dtype=torch.float64)
    x, revealed, kappa = simulate(base, sigma, n, gen)
    logits = base.expand(n, N, K).clone().requires_grad_(True)
    log_density(logits, x, revealed, kappa, sigma, "candidate1_fixed_cutoff")[0].sum().backward()
    grads = logits.grad.reshape(n, -1)
    z = grads.mean(0) / (grads.std(0) / math.sqrt(n))
    assert z.abs().max() > 6


@pytest.mark.parametrize("noise", [0.0, 0.7])
def test_remask_term_equals_brute_force_enumeration(noise):
    torch.manual_seed(0)
    p_, n, k = 2, 4, 3
    logp = torch.log_softmax(torch.randn(p_, n, k) * 2, dim=-1)
    tokens = torch.randint(0, k, (p_, n))
    reveal = torch.tensor([[0, 1, 2, 1], [1, 1, 3, 0]])
    step = torch.tensor([1, 1])
    cutoff = torch.log(torch.tensor([0.45, 0.3]))
    sigma = torch.full((p_,), noise)
    masked, revealed = reveal >= step[:, None], reveal == step[:, None]
    got, units = transition_terms(logp, tokens, masked, revealed, cutoff, sigma, "candidate1_fixed_cutoff")
    probs = logp.exp().double()
    for row in range(p_):
        expected = 0.0
        for i in range(n):
            if reveal[row, i] == step[row]:
                expected += math.log(probs[row, i, tokens[row, i]])
            elif reveal[row, i] > step[row]:  # still masked after the step: re-masked
                mass = 0.0
                for v in range(k):  # enumerate the vocabulary
                    gap = float(cutoff[row]) - math.log(probs[row, i, v])
                    below = (gap > 0) if noise == 0 else math.exp(-math.exp(-gap / noise))
                    mass += float(probs[row, i, v]) * below
                expected += math.log(mass)
        assert got[row].sum().item() == pytest.approx(expected, abs=1e-5)
        assert units[row, :n].tolist() == (reveal[row] >= step[row]).tolist() and not units[row, n]
    cand2, _ = transition_terms(logp, tokens, masked, revealed, cutoff, sigma, "candidate2")
    assert (got.sum(1) < cand2.sum(1)).all()  # the re-masking term is a real (log) probability < 0


def test_remask_probability_matches_the_samplers_mechanism_by_monte_carlo():
    """P(log p(x) + sigma * g < cutoff) with x ~ p, g ~ Gumbel, simulated as the sampler does."""
    gen = torch.Generator().manual_seed(0)
    logp = torch.log(torch.tensor([[[0.6, 0.25, 0.1, 0.05]]]))
    cutoff, sigma = torch.tensor([math.log(0.3)]), torch.tensor([0.8])
    n = 400_000
    x = torch.multinomial(logp.exp()[0, 0], n, replacement=True, generator=gen)
    g = -torch.log(-torch.log(torch.rand(n, generator=gen)))
    simulated = ((logp[0, 0, x] + sigma * g) < cutoff).double().mean()
    exact = remask_logprob(logp, cutoff, sigma).exp()[0, 0]
    assert exact.item() == pytest.approx(simulated.item(), abs=4e-3)
    assert 0.05 < exact.item() < 0.95


def test_extreme_values_give_finite_terms_and_gradients():
    logits = torch.tensor([[[30.0, -30.0], [-30.0, 30.0], [0.0, 0.0]]], requires_grad=True)
    for cutoff in (-200.0, 0.0, 200.0):
        for sigma in (1e-6, 0.3, 50.0):
            terms, _ = transition_terms(torch.log_softmax(logits, -1), torch.tensor([[1, 0, 1]]), torch.ones(1, 3, dtype=torch.bool),
                                        torch.tensor([[True, True, False]]), torch.tensor([cutoff]),
                                        torch.tensor([sigma]), "candidate1")
            (grad,) = torch.autograd.grad(terms.sum(), logits)
            assert torch.isfinite(terms).all() and torch.isfinite(grad).all(), (cutoff, sigma)

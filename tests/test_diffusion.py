"""The MD4 objective against closed forms and an exact-conditional oracle."""

import itertools
import math

import numpy as np
import pytest
import torch

import maskdiff
from maskdiff.objectives import mask_tokens, stratified_times
from maskdiff.schedules import EPS

SCHEDULES = ["linear", "cosine", "poly2", "poly0.5", "geometric", "loglinear"]


def masked_ce_by_count(toy, x):
    """S_k: the summed -log p(x_i | unmasked) over all masks with k masked positions, k = 0..L.

    x [L] -> [L+1], or x [N, L] -> [N, L+1].
    """
    xs = x.reshape(-1, toy.L)
    patterns = torch.tensor(list(itertools.product([0, 1], repeat=toy.L)), dtype=torch.bool)  # [P, L]
    z = torch.where(patterns[None], toy.V, xs[:, None])  # [N, P, L]
    cond = toy.conditionals(z.reshape(-1, toy.L)).view(*z.shape, toy.V)
    ce = -cond.gather(-1, xs[:, None, :, None].expand(*z.shape, 1)).squeeze(-1).log()  # [N, P, L]
    per_pattern = (ce * patterns[None]).sum(-1)  # [N, P]
    counts = patterns.sum(-1)
    S = torch.stack([per_pattern[:, counts == k].sum(-1) for k in range(toy.L + 1)], dim=-1).numpy()
    return S.reshape(*x.shape[:-1], toy.L + 1)


def expected_masked_ce(S, m):
    """f(m) = E[sum of masked CE] when every token is masked with probability m."""
    L = S.shape[-1] - 1
    return sum(S[..., k] * m**k * (1 - m) ** (L - k) for k in range(L + 1))


def exact_continuous_bound(S, m_lo=EPS, m_hi=1 - EPS):
    """integral of w(t) f dt = integral of f(m)/m dm over the masking probabilities the schedule covers.

    f(m)/m is a polynomial, so Gauss-Legendre with enough nodes is exact.
    """
    nodes, weights = np.polynomial.legendre.leggauss(32)
    m = (m_hi - m_lo) / 2 * nodes + (m_hi + m_lo) / 2
    f = sum(S[..., k, None] * m**k * (1 - m) ** (S.shape[-1] - 1 - k) for k in range(S.shape[-1]))
    return (m_hi - m_lo) / 2 * np.sum(weights * f / m, axis=-1)


def exact_discrete_bound(S, schedule, T):
    total = 0.0
    for i in range(1, T + 1):
        a_t = schedule.alpha(torch.tensor(i / T, dtype=torch.float64)).item()
        a_s = schedule.alpha(torch.tensor((i - 1) / T, dtype=torch.float64)).item()
        total += (a_s - a_t) / (1 - a_t) * expected_masked_ce(S, 1 - a_t)
    return total


def mc_nelbo(model, x, n, timesteps=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    values = model.nelbo(x[None].repeat(n, 1), timesteps=timesteps, generator=gen).double()
    return values.mean().item(), values.std().item() / math.sqrt(n)


X = [torch.tensor([0, 1, 2, 0]), torch.tensor([2, 2, 1, 1])]


def test_exact_continuous_bound_is_minus_log_likelihood(toy):
    """With exact conditionals the continuous-time NELBO is -log p(x) (up to the eps clamp)."""
    for x in X:
        S = masked_ce_by_count(toy, x)
        full = exact_continuous_bound(S, 0.0, 1.0)
        assert full == pytest.approx(-toy.log_prob(x[None]).item(), rel=1e-9)
        assert exact_continuous_bound(S) == pytest.approx(full, abs=5e-3)


@pytest.mark.parametrize("name", SCHEDULES)
def test_oracle_nelbo_equals_minus_log_p_for_every_schedule(toy, name):
    model = maskdiff.MaskedDiffusion(toy.denoiser, schedule=maskdiff.schedules.get(name), vocab_size=toy.V)
    for x in X:
        target = exact_continuous_bound(masked_ce_by_count(toy, x))
        mean, stderr = mc_nelbo(model, x, 4000)
        assert abs(mean - target) < 4 * stderr + 1e-3, (mean, stderr, target)
        assert abs(target + toy.log_prob(x[None]).item()) < 5e-3


def test_oracle_nelbo_detects_a_wrong_denoiser(toy):
    """The same check fails for a denoiser that ignores context (so the test has teeth)."""
    marginals = toy.marginals().log()
    model = maskdiff.MaskedDiffusion(lambda z, t: marginals.expand(z.shape[0], -1, -1), "linear", toy.V)
    x = X[0]
    mean, stderr = mc_nelbo(model, x, 4000)
    assert abs(mean + toy.log_prob(x[None]).item()) > 10 * stderr


def test_uniform_logits_give_L_log_V_in_expectation():
    V, L, B = 7, 16, 8000
    model = maskdiff.MaskedDiffusion(lambda z, t: torch.zeros(*z.shape, V), "cosine", V)
    x = torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(1))
    values = model.nelbo(x, generator=torch.Generator().manual_seed(2)).double()
    expected = L * math.log(V) * (1 - 2 * EPS)
    assert abs(values.mean().item() - expected) < 4 * values.std().item() / math.sqrt(B)


@pytest.mark.parametrize("timesteps", [None, 10])
def test_loss_from_logits_closed_form_for_uniform_logits(timesteps):
    V, L = 5, 6
    schedule = maskdiff.schedules.get("linear")
    model = maskdiff.MaskedDiffusion(lambda z, t: torch.zeros(*z.shape, V), schedule, V)
    x0 = torch.arange(L).remainder(V)[None].repeat(3, 1)
    z = x0.clone()
    z[0, :2] = V
    z[1, :] = V
    t = torch.tensor([0.3, 0.8, 0.5], dtype=torch.float64) if timesteps is None else torch.tensor([0.3, 0.8, 0.5]).double()
    logits = torch.zeros(3, L, V)
    got = model.loss_from_logits(logits, x0, z, t, timesteps=timesteps)
    n_masked = torch.tensor([2.0, 6.0, 0.0], dtype=torch.float64)
    if timesteps is None:
        weight = -schedule.dalpha(t) / (1 - schedule.alpha(t))
    else:
        weight = timesteps * (schedule.alpha(t - 0.1) - schedule.alpha(t)) / (1 - schedule.alpha(t))
    torch.testing.assert_close(got.double(), weight * n_masked * math.log(V), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_discrete_bound_is_above_and_approaches_the_continuous_one(toy, name):
    """Averaged over x ~ p (for a single x an imperfect T-step model may beat -log p(x))."""
    schedule = maskdiff.schedules.get(name)
    S = masked_ce_by_count(toy, toy.table)  # [N, L+1]
    p = toy.probs.numpy()
    continuous = np.sum(p * exact_continuous_bound(S))
    entropy = -np.sum(p * np.log(p))
    assert continuous == pytest.approx(entropy, abs=5e-3)
    gaps = [np.sum(p * exact_discrete_bound(S, schedule, T)) - continuous for T in (1, 2, 4, 16, 64, 1024)]
    assert all(g > 0 for g in gaps)
    assert all(a > b for a, b in zip(gaps, gaps[1:]))
    assert gaps[-1] < 0.01 * gaps[0] and gaps[-1] < 2e-3


def test_discrete_nelbo_estimate_matches_its_exact_value(toy):
    schedule = maskdiff.schedules.get("linear")
    model = maskdiff.MaskedDiffusion(toy.denoiser, schedule, toy.V)
    S = masked_ce_by_count(toy, X[1])
    for T in (1, 4):
        mean, stderr = mc_nelbo(model, X[1], 4000, timesteps=T, seed=T)
        assert abs(mean - exact_discrete_bound(S, schedule, T)) < 4 * stderr + 1e-6


def test_stratified_times_cover_the_unit_interval():
    t = stratified_times(8, torch.Generator().manual_seed(0), "cpu")
    assert t.shape == (8,) and t.min() >= 0 and t.max() < 1
    gaps = torch.sort(t).values.diff()
    torch.testing.assert_close(gaps, torch.full((7,), 1 / 8), rtol=0, atol=1e-6)


def test_forward_masking_rate_is_one_minus_alpha():
    x0 = torch.zeros(4, 20000, dtype=torch.long)
    alpha = torch.tensor([0.0, 0.25, 0.5, 1.0])
    z = mask_tokens(x0, alpha, 9, torch.Generator().manual_seed(0))
    rate = (z == 9).double().mean(1)
    torch.testing.assert_close(rate, 1 - alpha.double(), atol=0.015, rtol=0)
    assert set(z.unique().tolist()) <= {0, 9}


def test_nelbo_is_reproducible_with_a_generator(toy):
    model = maskdiff.MaskedDiffusion(toy.denoiser, "linear", toy.V)
    x = X[0][None].repeat(16, 1)
    a = model.nelbo(x, generator=torch.Generator().manual_seed(5))
    b = model.nelbo(x, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)

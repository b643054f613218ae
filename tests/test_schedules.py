"""Masking schedules: ranges, monotonicity and derivatives against autograd."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import maskdiff
from maskdiff.errors import MaskdiffError
from maskdiff.schedules import EPS

NAMES = ["linear", "cosine", "poly2", "poly3", "poly0.5", "geometric", "loglinear"]


@pytest.mark.parametrize("name", NAMES)
def test_dalpha_matches_autograd_in_float64(name):
    schedule = maskdiff.schedules.get(name)
    t = torch.linspace(0.01, 0.99, 99, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(schedule.alpha(t).sum(), t)
    analytic = schedule.dalpha(t.detach())
    assert analytic.dtype == torch.float64
    torch.testing.assert_close(analytic, grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_alpha_decreases_from_one_minus_eps_to_eps(name):
    schedule = maskdiff.schedules.get(name)
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    alpha = schedule.alpha(t)
    assert torch.all(alpha[1:] <= alpha[:-1])
    assert alpha.min() >= EPS - 1e-12 and alpha.max() <= 1 - EPS + 1e-12
    assert alpha[0] > 0.99 and alpha[-1] < 0.01


def test_closed_forms():
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    scale = 1 - 2 * EPS
    torch.testing.assert_close(maskdiff.schedules.get("linear").alpha(t), scale * (1 - t) + EPS)
    torch.testing.assert_close(maskdiff.schedules.get("poly2").alpha(t), scale * (1 - t**2) + EPS)
    torch.testing.assert_close(maskdiff.schedules.get("cosine").alpha(t), scale * (1 - torch.cos(math.pi / 2 * (1 - t))) + EPS)
    # the linear schedule's weight -alpha'/(1-alpha) is 1/t up to eps
    w = maskdiff.schedules.get("linear").weight(torch.tensor([0.5], dtype=torch.float64))
    assert abs(w.item() - 2.0) < 1e-3


def test_unknown_schedule_is_a_clear_error():
    with pytest.raises(MaskdiffError, match="unknown schedule"):
        maskdiff.schedules.get("quadratic")


@settings(max_examples=200, deadline=None)
@given(t=st.floats(0, 1), power=st.floats(0.2, 8))
def test_poly_alpha_in_range_and_dalpha_negative(t, power):
    schedule = maskdiff.schedules.Poly(power)
    tt = torch.tensor([t], dtype=torch.float64)
    alpha = schedule.alpha(tt).item()
    assert EPS - 1e-12 <= alpha <= 1 - EPS + 1e-12
    if 0 < t:
        assert schedule.dalpha(tt).item() <= 0

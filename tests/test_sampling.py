"""Samplers against the distributions they must draw from, using the exact-conditional oracle."""

import pytest
import torch

import maskdiff
from maskdiff.errors import MaskdiffError
from maskdiff.sampling import categorical, iterate, time_grid


def empirical(toy, samples):
    index = (samples * (toy.V ** torch.arange(toy.L - 1, -1, -1))).sum(-1)
    return torch.bincount(index, minlength=toy.table.shape[0]).double() / samples.shape[0]


def tv(p, q):
    return 0.5 * (p - q).abs().sum().item()


def product_of_marginals(toy):
    marg = toy.marginals()  # [L, V]
    return torch.stack([marg[torch.arange(toy.L), row].prod() for row in toy.table])


def oracle_model(toy, schedule="cosine"):
    return maskdiff.MaskedDiffusion(toy.denoiser, schedule=schedule, vocab_size=toy.V)


def test_ancestral_sampling_with_many_steps_draws_from_p(toy):
    n = 20000
    samples = oracle_model(toy).sample(n, toy.L, steps=256, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (n, toy.L) and samples.max() < toy.V
    distance = tv(empirical(toy, samples), toy.probs)
    assert distance < 0.04, distance
    # the same samples are far from the product of marginals: the check can fail
    assert tv(empirical(toy, samples), product_of_marginals(toy)) > 4 * distance


def test_one_step_draws_from_the_product_of_marginals(toy):
    samples = oracle_model(toy).sample(20000, toy.L, steps=1, generator=torch.Generator().manual_seed(1))
    assert tv(empirical(toy, samples), product_of_marginals(toy)) < 0.04


def test_given_positions_are_kept_and_the_rest_follows_the_conditional(toy):
    n = 20000
    given = torch.full((n, toy.L), toy.V)
    given[:, 0], given[:, 2] = 2, 1
    samples = oracle_model(toy, "linear").sample(n, toy.L, steps=128, given=given, generator=torch.Generator().manual_seed(2))
    assert (samples[:, 0] == 2).all() and (samples[:, 2] == 1).all()
    compatible = (toy.table[:, 0] == 2) & (toy.table[:, 2] == 1)
    conditional = toy.probs * compatible
    conditional = conditional / conditional.sum()
    assert tv(empirical(toy, samples), conditional) < 0.03


def test_iterate_yields_monotone_unmasking_and_ends_without_masks(toy):
    states = list(iterate(oracle_model(toy), 64, toy.L, 20, generator=torch.Generator().manual_seed(3)))
    assert len(states) == 21
    assert (states[0] == toy.V).all() and not (states[-1] == toy.V).any()
    for before, after in zip(states, states[1:]):
        unmasked = before != toy.V
        assert (after[unmasked] == before[unmasked]).all()


def test_sampling_skips_the_network_once_nothing_is_masked(toy):
    toy.calls = 0
    oracle_model(toy).sample(1, toy.L, steps=500, generator=torch.Generator().manual_seed(4))
    assert toy.calls <= toy.L


def test_same_seed_same_samples(toy):
    model = oracle_model(toy)
    a = model.sample(32, toy.L, steps=10, generator=torch.Generator().manual_seed(7))
    b = model.sample(32, toy.L, steps=10, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_time_grids():
    for kind in ("cosine", "uniform"):
        grid = time_grid(10, kind)
        assert grid[0] == 1 and grid[-1] == 0 and torch.all(grid.diff() < 0)
    with pytest.raises(MaskdiffError):
        time_grid(0)


def test_categorical_float64_gumbel_matches_softmax():
    logits = torch.tensor([0.0, 1.0, -2.0, 0.5])
    draws = categorical(logits.expand(200000, 4), torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).double() / draws.numel()
    torch.testing.assert_close(freq, torch.softmax(logits.double(), 0), atol=0.005, rtol=0)
    assert torch.equal(categorical(logits[None], None, temperature=0), torch.tensor([1]))


def test_bad_sampler_input_is_a_clear_error(toy):
    model = oracle_model(toy)
    with pytest.raises(MaskdiffError, match="steps"):
        model.sample(2, toy.L, steps=0)
    with pytest.raises(MaskdiffError, match="outside"):
        model.sample(2, toy.L, steps=4, given=torch.full((2, toy.L), toy.V + 1))
    with pytest.raises(MaskdiffError, match="shape"):
        model.sample(2, toy.L, steps=4, given=torch.full((3, toy.L), toy.V))
    with pytest.raises(MaskdiffError, match="method"):
        model.sample(2, toy.L, steps=4, method="nonsense")

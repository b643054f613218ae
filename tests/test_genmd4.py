"""GenMD4 against MD4, exact expectations over all masks, and the toy distribution's oracle."""

import itertools
import json
import math

import pytest
import torch

import maskdiff
from maskdiff.errors import MaskdiffError
from maskdiff.objectives import mask_tokens, stratified_times
from maskdiff.objectives.genmd4 import GenMD4, inverse_softplus
from tests.test_sampling import empirical, product_of_marginals, tv


class FixedDenoiser:
    """A deterministic, imperfect denoiser: logits are a random function of the masked sequence."""

    def __init__(self, vocab_size, length, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.own = torch.randn(length, vocab_size + 1, vocab_size, generator=gen)
        self.context = torch.randn(length, vocab_size + 1, vocab_size, generator=gen) / length

    def __call__(self, z, t):
        positions = torch.arange(z.shape[1])
        own = self.own[positions, z]  # [B, L, V]
        context = self.context[positions, z].sum(1, keepdim=True)  # [B, 1, V]
        return own + context + torch.sin(3 * t)[:, None, None]


def set_powers(model, powers):
    with torch.no_grad():
        model.raw_w.copy_(torch.tensor([inverse_softplus(p) for p in powers]))


def posterior_oracle(toy, model):
    """q(x_i = v | z_t): with state-dependent masks the masking pattern itself tells about x."""
    one_hot = torch.nn.functional.one_hot(toy.table, toy.V).double()  # [N, L, V]

    def denoiser(z, t):
        masked_chance = 1 - model.schedule.alpha(t.double()).detach()  # [B, V]
        compatible = ((z[:, None, :] == toy.table[None]) | (z[:, None, :] == toy.V)).all(-1)  # [B, N]
        chance_of_masks = masked_chance[:, toy.table]  # [B, N, L]: chance that each table entry is masked
        weight = torch.where(z[:, None, :] == toy.V, chance_of_masks, 1.0).prod(-1)
        posterior = compatible * toy.probs[None] * weight
        posterior = posterior / posterior.sum(-1, keepdim=True)
        return torch.einsum("bn,nlv->blv", posterior, one_hot).clamp_min(1e-300).log()

    return denoiser


# ---------------------------------------------------------------- reduces to MD4
@pytest.mark.parametrize("power", [1.0, 2.0, 0.5])
def test_equal_powers_give_md4_with_the_poly_schedule(power):
    V, L, B = 5, 6, 64
    denoiser = FixedDenoiser(V, L)
    gen_model = GenMD4(denoiser, V, power_init=power, t1=0.0)
    md4 = maskdiff.MaskedDiffusion(denoiser, schedule=f"poly{power:g}", vocab_size=V)
    x0 = torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(1))

    # same logits, same masks, same t
    t = stratified_times(B, torch.Generator().manual_seed(2), "cpu")
    z_t = mask_tokens(x0, md4.schedule.alpha(t), V, torch.Generator().manual_seed(3))
    logits = denoiser(z_t, t)
    expected = md4.loss_from_logits(logits, x0, z_t, t)
    assert torch.allclose(gen_model.loss_from_logits(logits, x0, z_t, t), expected, rtol=1e-5, atol=1e-5)
    grid_t = torch.randint(1, 9, (B,), generator=torch.Generator().manual_seed(4)) / 8
    z_grid = mask_tokens(x0, md4.schedule.alpha(grid_t), V, torch.Generator().manual_seed(5))
    logits = denoiser(z_grid, grid_t)
    assert torch.allclose(
        gen_model.loss_from_logits(logits, x0, z_grid, grid_t, timesteps=8),
        md4.loss_from_logits(logits, x0, z_grid, grid_t, timesteps=8),
        rtol=1e-5,
        atol=1e-5,
    )

    # the whole estimate, drawn with the same generator: MD4 plus GenMD4's closed-form boundary terms
    for timesteps in (None, 8):
        mine = gen_model.nelbo(x0, timesteps=timesteps, generator=torch.Generator().manual_seed(6))
        theirs = md4.nelbo(x0, timesteps=timesteps, generator=torch.Generator().manual_seed(6))
        assert torch.allclose(mine - gen_model.boundary_terms(x0), theirs, rtol=1e-5, atol=1e-5)


def test_each_value_is_masked_with_its_own_schedule():
    V, L = 4, 64
    model = GenMD4(FixedDenoiser(V, L), V, t1=0.0)
    set_powers(model, [0.5, 1.0, 2.0, 4.0])
    x0 = torch.arange(V).repeat_interleave(L // V)[None].repeat(2000, 1)
    t = torch.full((2000,), 0.5)
    z = mask_tokens(x0, model.keep_probability(x0, t), V, torch.Generator().manual_seed(0))
    masked_share = [(z[x0 == v] == V).double().mean().item() for v in range(V)]
    # masked with probability t^w (up to eps): 0.71, 0.5, 0.25, 0.06
    assert masked_share == pytest.approx([0.5**w for w in (0.5, 1.0, 2.0, 4.0)], abs=0.01)


# ---------------------------------------------------------------- the oracle
def test_oracle_bound_is_minus_log_p(toy):
    """With the exact posterior the continuous bound is -log p(x) in expectation."""
    model = GenMD4(None, toy.V, t1=0.0)
    set_powers(model, [0.8, 1.5, 3.0])
    model.denoiser = posterior_oracle(toy, model)
    n = 4000
    for x in (torch.tensor([0, 1, 2, 0]), torch.tensor([2, 2, 1, 1])):
        values = model.nelbo(x[None].repeat(n, 1), generator=torch.Generator().manual_seed(0)).double()
        mean, stderr = values.mean().item(), values.std().item() / math.sqrt(n)
        # the eps clamp and the boundary terms leave a gap of about 2 L eps log V = 1e-3 nats
        assert abs(mean - toy.log_prob(x[None]).item() * -1) < 4 * stderr + 3e-3, (mean, stderr)


def test_oracle_discrete_bound_is_above_the_entropy_and_tightens_with_more_steps(toy):
    """Exact expectations over x ~ p and all masks: the T-step bound exceeds H(p) and falls towards it.

    (Pointwise the T-step bound is only above -log p_model(x) of the T-step model, not -log p(x).)
    """
    model = GenMD4(None, toy.V, t1=0.0)
    set_powers(model, [0.8, 1.5, 3.0])
    model.denoiser = posterior_oracle(toy, model)
    entropy = -(toy.probs * toy.probs.log()).sum().item()
    with torch.no_grad():
        bounds = []
        for T in (2, 8, 32):
            per_x = sum(expected_over_masks(model, toy.table, i / T, timesteps=T) for i in range(1, T + 1)) / T
            bounds.append((toy.probs * (per_x + model.boundary_terms(toy.table))).sum().item())
    assert bounds[0] > bounds[1] > bounds[2] > entropy
    assert bounds[2] - entropy < 0.05


def test_an_imperfect_denoiser_gives_a_looser_bound(toy):
    model = GenMD4(FixedDenoiser(toy.V, toy.L), toy.V, t1=0.0)
    set_powers(model, [0.8, 1.5, 3.0])
    x = torch.tensor([0, 1, 2, 0])[None].repeat(2000, 1)
    values = model.nelbo(x, generator=torch.Generator().manual_seed(0)).double()
    assert values.mean() > -toy.log_prob(x[:1]).item() + 0.5


# ---------------------------------------------------------------- the RLOO gradient
def expected_over_masks(model, x0, t, timesteps=None):
    """E over all 2^L masks of the integral term at time t for each x0 [N, L], differentiable in w.  -> [N]"""
    n, length = x0.shape
    patterns = torch.tensor(list(itertools.product([False, True], repeat=length)))  # [P, L]
    x = x0[:, None].expand(-1, len(patterns), -1).reshape(-1, length)
    z = torch.where(patterns.repeat(n, 1), model.mask_id, x)
    times = torch.full((len(x),), t)
    probability = model.log_q(x, z, times).exp()
    losses = model.loss_from_logits(model.denoiser(z, times), x, z, times, timesteps)
    return (probability * losses).view(n, -1).sum(-1)


def exact_objective(model, x0, t):
    """The expected bound at time t for one sequence x0 [L], boundary terms included."""
    return expected_over_masks(model, x0[None], t)[0] + model.boundary_terms(x0[None])[0]


def test_rloo_gradient_is_unbiased_and_the_score_term_matters():
    V, L = 3, 4
    model = GenMD4(FixedDenoiser(V, L, seed=3), V, t1=0.01)
    set_powers(model, [0.7, 1.3, 2.5])
    x0 = torch.tensor([0, 2, 1, 2])
    for t in (0.3, 0.8):
        exact = torch.autograd.grad(exact_objective(model, x0, t), model.raw_w)[0]
        model.draw_times = lambda batch, device, timesteps=None, generator=None, t=t: torch.full((batch,), t)
        gen = torch.Generator().manual_seed(0)
        chunks, size = 40, 2000
        full, pathwise = [], []
        for _ in range(chunks):
            loss = model.train_loss(x0[None].repeat(size, 1), generator=gen).mean()
            full.append(torch.autograd.grad(loss, model.raw_w)[0])
            pathwise.append(torch.autograd.grad(model.nelbo(x0[None].repeat(size, 1), generator=gen).mean(), model.raw_w)[0])
        del model.draw_times
        for estimates, unbiased in ((torch.stack(full), True), (torch.stack(pathwise), False)):
            mean = estimates.mean(0)
            stderr = estimates.std(0) / math.sqrt(chunks)
            z_scores = ((mean - exact).abs() / stderr).max().item()
            if unbiased:
                assert z_scores < 4.5, (t, mean, exact, stderr)
            else:  # without the score-function term the gradient is wrong: the test can fail
                assert z_scores > 10, (t, mean, exact, stderr)


def test_train_loss_value_is_the_bound_and_its_gradient_reaches_w_and_the_network():
    V, L, n = 3, 8, 4000
    model = GenMD4(maskdiff.Transformer(maskdiff.ModelConfig(n_layers=1, d_model=16, n_heads=2, time_conditioning=True), V), V)
    x0 = torch.randint(0, V, (n, L), generator=torch.Generator().manual_seed(0))
    surrogate = model.train_loss(x0, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        bound = model.nelbo(x0, generator=torch.Generator().manual_seed(2))
    # the RLOO term is zero in value: both estimate the same bound
    spread = math.sqrt(surrogate.detach().var() / n + bound.var() / n)
    assert abs(surrogate.mean().item() - bound.mean().item()) < 4 * spread
    surrogate.mean().backward()
    assert model.raw_w.grad.abs().sum() > 0
    assert model.denoiser.head.weight.grad.abs().sum() > 0  # (the head starts at zero, so only it gets a gradient)


def test_training_writes_the_learned_powers_and_reloads_them(corpus_file, tmp_path):
    from maskdiff.checkpoint import load_run
    from maskdiff.presets import get_preset
    from maskdiff.training import train

    cfg = get_preset("genmd4-tiny").with_overrides(
        [
            f"data.path={corpus_file}",
            "data.seq_len=32",
            "train.batch_size=4",
            "train.steps=4",
            "train.eval_every=0",
            "train.warmup_steps=1",
            "model.n_layers=1",
            "model.d_model=32",
            "train.eval_sequences=4",
            "train.lr=0.05",
        ]
    )
    result = train(cfg, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "token_powers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    powers = json.loads((tmp_path / "run" / "token_powers.json").read_text())
    run = load_run(tmp_path / "run")
    assert isinstance(run.model, GenMD4)
    assert list(powers.values()) == pytest.approx(run.model.w.tolist())
    assert len(powers) == run.tokenizer.vocab_size and "␣" in powers
    assert any(abs(w - 1.0) > 1e-3 for w in powers.values())  # w trained
    assert result.valid.bits_per_token > 0


# ---------------------------------------------------------------- the sampler
def genmd4_oracle_model(toy, powers=(0.6, 1.5, 3.0)):
    model = GenMD4(None, toy.V)
    set_powers(model, powers)
    model.denoiser = posterior_oracle(toy, model)
    return model


@pytest.mark.slow
def test_many_steps_draw_from_p(toy):
    n = 6000
    samples = genmd4_oracle_model(toy).sample(n, toy.L, steps=256, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (n, toy.L) and samples.max() < toy.V
    distance = tv(empirical(toy, samples), toy.probs)
    assert distance < 0.06, distance
    assert tv(empirical(toy, samples), product_of_marginals(toy)) > 3 * distance


def test_mean_rule_is_the_same_transition(toy):
    model = genmd4_oracle_model(toy)
    ancestral = model.sample(300, toy.L, steps=64, generator=torch.Generator().manual_seed(1))
    mean = model.sample(300, toy.L, steps=64, method="mean", generator=torch.Generator().manual_seed(1))
    assert torch.equal(ancestral, mean)


def test_reveal_order_follows_the_powers(toy):
    """A value with a large w stays unmasked longest forward, so it is revealed first in reverse."""
    model = genmd4_oracle_model(toy, powers=(0.3, 1.0, 6.0))
    from maskdiff.sampling import iterate

    first_revealed = torch.zeros(toy.V)
    for step in iterate(model, 3000, toy.L, 64, generator=torch.Generator().manual_seed(0)):
        if step.index and step.revealed.any():
            first_revealed += torch.bincount(step.z[step.revealed], minlength=toy.V)
            break
    assert first_revealed.argmax().item() == 2


def test_cache_skip_gives_the_same_samples_with_fewer_network_calls(toy):
    model = genmd4_oracle_model(toy)
    calls = []
    oracle = model.denoiser
    model.denoiser = lambda z, t: calls.append(1) or oracle(z, t)
    cached = model.sample(8, toy.L, steps=200, generator=torch.Generator().manual_seed(3))
    with_cache = len(calls)
    uncached = model.sample(8, toy.L, steps=200, generator=torch.Generator().manual_seed(3), cache=False)
    assert torch.equal(cached, uncached)
    assert with_cache < 0.7 * (len(calls) - with_cache), (with_cache, len(calls) - with_cache)


@pytest.mark.parametrize("method", ["low_confidence", "random", "threshold"])
def test_other_rules_end_without_masks(toy, method):
    samples = genmd4_oracle_model(toy).sample(32, toy.L, steps=8, method=method, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (32, toy.L) and samples.max() < toy.V and samples.min() >= 0


def test_bad_arguments_are_clear_errors():
    with pytest.raises(MaskdiffError, match="power_init"):
        GenMD4(None, 3, power_init=0.0)
    with pytest.raises(MaskdiffError, match="t1"):
        GenMD4(None, 3, t1=1.0)
    with pytest.raises(MaskdiffError, match="vocab_size"):
        GenMD4(None, 0)


def test_chain_rule_likelihood_of_a_genmd4_model_is_a_distribution(toy):
    """Left-to-right decoding with any GenMD4 denoiser defines a distribution: it sums to 1 over all sequences."""
    from maskdiff.evaluation.chain_rule import chain_rule_log_likelihood

    model = GenMD4(FixedDenoiser(toy.V, toy.L), toy.V)
    set_powers(model, [0.6, 1.5, 3.0])
    log_p = chain_rule_log_likelihood(model, toy.table, batch_size=64)
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def test_bound_is_computed_in_float32_under_bf16_autocast():
    """The extra term is a small difference of large rates near t1; bf16 matmuls would destroy it."""
    V, L, B = 50, 16, 32
    model = GenMD4(FixedDenoiser(V, L), V)
    set_powers(model, torch.linspace(0.6, 3.0, V).tolist())
    x0 = torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(0))
    t = torch.linspace(1e-3, 0.05, B)
    z = mask_tokens(x0, model.keep_probability(x0, t).detach(), V, torch.Generator().manual_seed(1))
    logits = FixedDenoiser(V, L)(z, t)
    plain = model.loss_from_logits(logits, x0, z, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model.loss_from_logits(logits, x0, z, t)
    assert torch.allclose(mixed.float(), plain, rtol=1e-5, atol=1e-4)

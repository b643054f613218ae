"""Samplers against the distributions they must draw from, using the exact-conditional oracle."""

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import ToyDistribution

import maskdiff
from maskdiff.errors import MaskdiffError
from maskdiff.objectives.genmd4 import GenMD4, inverse_softplus
from maskdiff.sampling import SamplerOptions, categorical, fill_after_eos, filter_probs, iterate, stream_seeds, time_grid

GOLDEN = Path(__file__).parent / "golden" / "samples.json"


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


def seed(n):
    return torch.Generator().manual_seed(n)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ancestral", "mean"])
def test_many_steps_draw_from_p(toy, method):
    n = 6000
    samples = oracle_model(toy).sample(n, toy.L, steps=256, method=method, generator=seed(0))
    assert samples.shape == (n, toy.L) and samples.max() < toy.V
    distance = tv(empirical(toy, samples), toy.probs)
    assert distance < 0.06, distance
    # the same samples are far from the product of marginals: the check can fail
    assert tv(empirical(toy, samples), product_of_marginals(toy)) > 3 * distance


def test_random_order_one_token_per_step_draws_from_p(toy):
    """Revealing one uniformly random position per step is an exact chain-rule sampler."""
    samples = oracle_model(toy).sample(6000, toy.L, steps=toy.L, method="random", tokens_per_step=1, generator=seed(5))
    assert tv(empirical(toy, samples), toy.probs) < 0.06


def test_one_step_draws_from_the_product_of_marginals(toy):
    samples = oracle_model(toy).sample(6000, toy.L, steps=1, generator=seed(1))
    assert tv(empirical(toy, samples), product_of_marginals(toy)) < 0.06


def test_given_positions_are_kept_and_the_rest_follows_the_conditional(toy):
    n = 6000
    given = torch.full((n, toy.L), toy.V)
    given[:, 0], given[:, 2] = 2, 1
    samples = oracle_model(toy, "linear").sample(n, toy.L, steps=128, given=given, generator=seed(2))
    assert (samples[:, 0] == 2).all() and (samples[:, 2] == 1).all()
    compatible = (toy.table[:, 0] == 2) & (toy.table[:, 2] == 1)
    conditional = toy.probs * compatible
    conditional = conditional / conditional.sum()
    assert tv(empirical(toy, samples), conditional) < 0.05


@pytest.mark.parametrize("method", ["ancestral", "mean", "low_confidence", "random", "threshold"])
@pytest.mark.parametrize("block_size", [0, 2])
def test_every_rule_reveals_monotonically_and_ends_without_masks(toy, method, block_size):
    states = list(iterate(oracle_model(toy), 64, toy.L, 8, generator=seed(3), method=method, block_size=block_size))
    assert len(states) == 9 and states[-1].index == 8
    assert (states[0].z == toy.V).all() and not (states[-1].z == toy.V).any()
    for before, after in zip(states, states[1:]):
        unmasked = before.z != toy.V
        assert (after.z[unmasked] == before.z[unmasked]).all()
        assert torch.equal(after.revealed, (before.z == toy.V) & (after.z != toy.V))


def test_block_decoding_goes_left_to_right(toy):
    states = list(iterate(oracle_model(toy), 16, toy.L, 4, generator=seed(4), block_size=2))
    # after the first block's steps the left half is revealed and the right half untouched
    assert not (states[2].z[:, :2] == toy.V).any() and (states[2].z[:, 2:] == toy.V).all()


def test_low_confidence_at_temperature_zero_is_deterministic(toy):
    model = oracle_model(toy)
    a = model.sample(8, toy.L, steps=4, method="low_confidence", temperature=0, generator=seed(1))
    b = model.sample(8, toy.L, steps=4, method="low_confidence", temperature=0, generator=seed(2))
    assert torch.equal(a, b) and (a == a[0]).all()


def test_threshold_reveals_at_least_one_token_per_step(toy):
    states = list(iterate(oracle_model(toy), 32, toy.L, toy.L, method="threshold", threshold=1.0, generator=seed(6)))
    for step in states[1:]:
        assert (step.revealed.sum(-1) >= 1).all()


def test_cache_skip_gives_the_same_samples_with_fewer_network_calls(toy):
    model = oracle_model(toy)
    runs = {}
    for cache in (True, False):
        toy.calls = 0
        samples = model.sample(4, toy.L, steps=200, generator=seed(8), cache=cache)
        runs[cache] = (samples, toy.calls)
    assert torch.equal(runs[True][0], runs[False][0])
    assert runs[False][1] == 200 and runs[True][1] <= toy.L * 4


def test_samples_do_not_depend_on_the_batch_size(toy):
    model = oracle_model(toy)
    small = model.sample(3, toy.L, steps=10, generator=seed(9))
    large = model.sample(12, toy.L, steps=10, generator=seed(9))
    assert torch.equal(small, large[:3])
    assert torch.equal(small, model.sample(3, toy.L, steps=10, generator=seed(9)))


@pytest.mark.parametrize("method", ["ancestral", "low_confidence", "threshold"])
def test_rows_of_different_seeds_in_one_batch_equal_their_runs_alone(toy, method):
    """What a server batching requests relies on: each row's stream seed (stream_seeds) makes it
    independent of its batch-mates, prompts (given rows) differing per row included."""
    model = oracle_model(toy)
    given = torch.tensor([[1, 3, 3, 3], [3, 3, 0, 3]])
    alone = [
        model.sample(2, 4, 6, method=method, given=given[:1].expand(2, -1), generator=seed(1)),
        model.sample(3, 4, 6, method=method, given=given[1:].expand(3, -1), generator=seed(2)),
    ]
    seeds = torch.cat([stream_seeds(seed(1), 2), stream_seeds(seed(2), 3)])
    together = model.sample(5, 4, 6, method=method, given=torch.cat([given[:1].expand(2, -1), given[1:].expand(3, -1)]), seeds=seeds)
    assert torch.equal(together, torch.cat(alone))
    assert torch.equal(stream_seeds(seed(2), 2, first=1), stream_seeds(seed(2), 3)[1:])  # samples 1..2 of seed 2
    with pytest.raises(MaskdiffError, match="seeds has shape"):
        model.sample(2, 4, 6, seeds=seeds)


def test_cfg_with_zero_weight_equals_plain_conditional_sampling(toy):
    model = oracle_model(toy)
    given = torch.full((16, toy.L), toy.V)
    given[:, 0] = 1
    plain = model.sample(16, toy.L, steps=8, given=given, generator=seed(10))
    guided = model.sample(16, toy.L, steps=8, given=given, generator=seed(10), cfg=0.0)
    assert torch.equal(plain, guided)


def test_cfg_batches_both_passes_and_moves_towards_the_prompt(toy):
    calls = []

    def denoiser(z, t):
        calls.append(z.shape[0])
        return toy.denoiser(z, t)

    model = maskdiff.MaskedDiffusion(denoiser, "cosine", toy.V)
    given = torch.full((2000, toy.L), toy.V)
    given[:, 0] = 2
    guided = model.sample(2000, toy.L, steps=toy.L, given=given, generator=seed(11), cfg=3.0, method="random", tokens_per_step=1)
    assert all(c % 2 == 0 for c in calls)  # conditional and unconditional rows in one call
    plain = model.sample(2000, toy.L, steps=toy.L, given=given, generator=seed(11), method="random", tokens_per_step=1)
    # guidance sharpens p(x | prompt) relative to p(x): the most prompt-specific value becomes more frequent
    cond = toy.conditionals(given[:1])[0, 1]
    marg = toy.marginals()[1]
    favoured = int((cond / marg).argmax())
    assert (guided[:, 1] == favoured).float().mean() > (plain[:, 1] == favoured).float().mean()


def test_eos_is_suppressed_before_min_length_and_truncates_after():
    V, L, eos = 4, 10, 3
    model = maskdiff.MaskedDiffusion(lambda z, t: torch.zeros(*z.shape, V), "linear", V)
    out = model.sample(200, L, steps=10, generator=seed(12), eos_id=eos, min_length=5, truncate_after_eos=True)
    assert not (out[:, :5] == eos).any()
    first = torch.where((out == eos).any(-1), (out == eos).long().argmax(-1), L)
    after = torch.arange(L)[None] >= first[:, None]
    assert (out[after] == eos).all()
    assert torch.equal(fill_after_eos(torch.tensor([[0, 3, 1, 3, 2]]), 3), torch.tensor([[0, 3, 3, 3, 3]]))


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    torch.testing.assert_close(filter_probs(logits, top_k=2), torch.tensor([0.625, 0.375, 0, 0], dtype=torch.float64))
    torch.testing.assert_close(filter_probs(logits, top_p=0.7), torch.tensor([0.625, 0.375, 0, 0], dtype=torch.float64))
    torch.testing.assert_close(filter_probs(logits, top_p=0.1), torch.tensor([1.0, 0, 0, 0], dtype=torch.float64))
    assert filter_probs(logits, temperature=0).argmax() == 0


def test_inverse_cdf_draws_match_the_distribution_in_float64():
    probs = torch.tensor([0.2, 0.5, 1e-12, 0.3 - 1e-12], dtype=torch.float64)
    u = torch.rand(400000, generator=seed(0), dtype=torch.float64)
    draws = categorical(probs.expand(u.numel(), 4), u)
    freq = torch.bincount(draws, minlength=4).double() / draws.numel()
    torch.testing.assert_close(freq, probs, atol=0.004, rtol=0)
    cdf = probs.cumsum(0)
    u = torch.stack([torch.tensor(0.0, dtype=torch.float64), cdf[1] + 5e-13, torch.tensor(1 - 1e-16, dtype=torch.float64)])
    assert categorical(probs.expand(3, 4), u).tolist() == [0, 2, 3]  # a 1e-12 sliver of probability is reachable


def test_time_grids():
    for kind in ("cosine", "uniform"):
        grid = time_grid(10, kind)
        assert grid[0] == 1 and grid[-1] == 0 and torch.all(grid.diff() < 0)
    with pytest.raises(MaskdiffError):
        time_grid(0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps": 0}, "steps"),
        ({"given": "too-big-id"}, "outside"),
        ({"given": "wrong-shape"}, "shape"),
        ({"method": "nonsense"}, "method"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"temperature": -1.0}, "temperature"),
        ({"tokens_per_step": 2}, "tokens_per_step"),
        ({"block_size": 1, "steps": 2}, "need at least"),
        ({"min_length": 3}, "need eos_id"),
        ({"colour": "red"}, "unknown sampler option"),
    ],
)
def test_bad_sampler_input_is_a_clear_error(toy, kwargs, message):
    kwargs = dict(kwargs)
    steps = kwargs.pop("steps", 4)
    if kwargs.get("given") == "too-big-id":
        kwargs["given"] = torch.full((2, toy.L), toy.V + 1)
    elif kwargs.get("given") == "wrong-shape":
        kwargs["given"] = torch.full((3, toy.L), toy.V)
    with pytest.raises(MaskdiffError, match=message):
        oracle_model(toy).sample(2, toy.L, steps=steps, **kwargs)


def test_options_validate_when_built():
    with pytest.raises(MaskdiffError, match="top_p.*temperature|temperature.*top_p"):
        SamplerOptions(top_p=2.0, temperature=-1.0)


def test_counter_streams_match_a_reference_splitmix64_and_are_uniform():
    from maskdiff.sampling.streams import SampleStreams, splitmix64

    mask = (1 << 64) - 1

    def reference(x):
        x &= mask
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
        return x ^ (x >> 31)

    values = [0, 1, 12345, (1 << 63) - 1, -1, -(1 << 63), 0x9E3779B97F4A7C15 - (1 << 64)]
    got = splitmix64(torch.tensor(values, dtype=torch.long)).tolist()
    assert [g & mask for g in got] == [reference(v) for v in values]

    streams = SampleStreams(3, seed(0))
    u = torch.cat([streams.uniform(50000) for _ in range(4)], dim=1)
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.003 and abs(u.var().item() - 1 / 12) < 0.002
    assert not torch.equal(u[0], u[1])
    again = SampleStreams(3, seed(0))
    assert torch.equal(torch.cat([again.uniform(50000) for _ in range(4)], dim=1), u)


# ---------------------------------------------------------------- golden samples
def golden_models():
    """Small fixed models: the toy oracle (MD4 and GenMD4 with unequal powers), a class-conditional
    variant of it, and a one-layer Transformer in float64 whose weights are all drawn from a seed
    (float64 so that the samples do not depend on the CPU's float32 kernels)."""
    toy = ToyDistribution(vocab_size=3, length=6, seed=1)
    genmd4 = GenMD4(toy.denoiser, toy.V)
    with torch.no_grad():
        genmd4.raw_w.copy_(torch.tensor([inverse_softplus(p) for p in (0.5, 1.0, 3.0)]))
    bias = torch.randn(2, toy.L, toy.V, generator=seed(20), dtype=torch.float64)

    def class_conditional(z, t, labels=None):
        logits = toy.denoiser(z, t)
        if labels is None:
            return logits
        return logits + torch.where(labels[:, None, None] >= 0, bias[labels.clamp_min(0)], 0.0)

    V = 5
    net = maskdiff.Transformer(maskdiff.ModelConfig(n_layers=1, d_model=16, n_heads=2, time_conditioning=False), V)
    net = net.double().eval()
    gen = seed(21)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=gen, dtype=torch.float64) * 0.3)
    return {
        "toy": (maskdiff.MaskedDiffusion(toy.denoiser, "cosine", toy.V), toy.L),
        "genmd4": (genmd4, toy.L),
        "labels": (maskdiff.MaskedDiffusion(class_conditional, "linear", toy.V), toy.L),
        "transformer": (maskdiff.MaskedDiffusion(net, "cosine", V), 8),
    }


def prompt(length, mask_id, fixed):
    given = torch.full((6, length), mask_id)
    for position, value in fixed.items():
        given[:, position] = value
    return given


# name -> (model, steps, options); 6 samples each
GOLDEN_CASES = {
    "ancestral": ("toy", 5, {}),
    "mean": ("toy", 5, {"method": "mean"}),
    "low_confidence": ("toy", 5, {"method": "low_confidence"}),
    "random": ("toy", 5, {"method": "random"}),
    "threshold": ("toy", 5, {"method": "threshold"}),
    "ancestral 24 steps": ("toy", 24, {}),
    "mean 24 steps": ("toy", 24, {"method": "mean"}),
    "ancestral uniform grid top_p": ("toy", 6, {"grid": "uniform", "top_p": 0.7}),
    "mean top_k temperature": ("toy", 6, {"method": "mean", "top_k": 2, "temperature": 0.7}),
    "ancestral temperature 0": ("toy", 6, {"temperature": 0}),
    "low_confidence temperature 0": ("toy", 5, {"method": "low_confidence", "temperature": 0}),
    "threshold temperature 0": ("toy", 5, {"method": "threshold", "temperature": 0, "threshold": 0.6}),
    "random top_p": ("toy", 5, {"method": "random", "top_p": 0.8}),
    "low_confidence tokens_per_step 1": ("toy", 6, {"method": "low_confidence", "tokens_per_step": 1}),
    "random tokens_per_step 2": ("toy", 4, {"method": "random", "tokens_per_step": 2}),
    "threshold 0.5": ("toy", 5, {"method": "threshold", "threshold": 0.5}),
    "ancestral block_size 2": ("toy", 7, {"block_size": 2}),
    "mean block_size 4": ("toy", 6, {"method": "mean", "block_size": 4}),
    "low_confidence block_size 4": ("toy", 6, {"method": "low_confidence", "block_size": 4}),
    "random block_size 3": ("toy", 6, {"method": "random", "block_size": 3, "tokens_per_step": 1}),
    "threshold block_size 2": ("toy", 6, {"method": "threshold", "block_size": 2, "threshold": 0.7}),
    "ancestral no cache": ("toy", 24, {"cache": False}),
    "low_confidence no cache": ("toy", 8, {"method": "low_confidence", "cache": False}),
    "ancestral cfg prompt": ("toy", 6, {"cfg": 1.5, "given": {0: 2, 3: 1}}),
    "low_confidence cfg prompt": ("toy", 6, {"method": "low_confidence", "cfg": 2.0, "given": {1: 0}}),
    "threshold cfg prompt": ("toy", 6, {"method": "threshold", "cfg": 1.0, "threshold": 0.6, "given": {5: 1}}),
    "eos min_length truncate": ("toy", 6, {"eos_id": 2, "min_length": 3, "truncate_after_eos": True}),
    "labels cfg": ("labels", 6, {"cfg": 2.0, "labels": [0, 1, 0, 1, 0, 1]}),
    "labels low_confidence": ("labels", 6, {"method": "low_confidence", "labels": [1, 1, 0, 0, 1, 0]}),
    "genmd4 ancestral": ("genmd4", 6, {}),
    "genmd4 ancestral 24 steps": ("genmd4", 24, {}),
    "genmd4 mean": ("genmd4", 6, {"method": "mean"}),
    "genmd4 low_confidence": ("genmd4", 6, {"method": "low_confidence"}),
    "genmd4 random": ("genmd4", 6, {"method": "random"}),
    "genmd4 threshold": ("genmd4", 6, {"method": "threshold", "threshold": 0.6}),
    "genmd4 low_confidence tokens_per_step 2": ("genmd4", 4, {"method": "low_confidence", "tokens_per_step": 2}),
    "genmd4 random block_size 3": ("genmd4", 6, {"method": "random", "block_size": 3}),
    "genmd4 threshold no cache": ("genmd4", 6, {"method": "threshold", "cache": False}),
    "genmd4 ancestral cfg prompt": ("genmd4", 8, {"cfg": 1.0, "given": {2: 0}}),
    "transformer ancestral": ("transformer", 6, {}),
    "transformer low_confidence temperature 0": ("transformer", 6, {"method": "low_confidence", "temperature": 0}),
    "transformer threshold cfg prompt": ("transformer", 6, {"method": "threshold", "threshold": 0.3, "cfg": 1.0, "given": {0: 4}}),
    "transformer random top_k block_size 4": ("transformer", 6, {"method": "random", "top_k": 3, "block_size": 4}),
}


def as_text(z, mask_id):
    return ["".join("_" if v == mask_id else str(v) for v in row) for row in z.tolist()]


def golden_samples():
    """Every state of every golden case as text (one character per position, _ for masks) and the NFE after each step."""
    models = golden_models()
    out = {}
    for name, (model_name, steps, options) in GOLDEN_CASES.items():
        model, length = models[model_name]
        options = dict(options)
        if "given" in options:
            options["given"] = prompt(length, model.mask_id, options["given"])
        states = list(model.iterate(6, length, steps, generator=seed(30), **options))
        out[name] = {"states": [as_text(step.z, model.mask_id) for step in states], "nfe": [step.nfe for step in states]}
    return out


def test_samples_match_the_golden_file():
    """Every rule and option draws exactly the samples it drew when the file was written (same seed, same models).

    Regenerate (only after an intended change to what the samplers draw) with MASKDIFF_UPDATE_GOLDEN=1.
    """
    got = golden_samples()
    if os.environ.get("MASKDIFF_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(got, indent=1) + "\n")
    expected = json.loads(GOLDEN.read_text())
    assert sorted(got) == sorted(expected)
    changed = [name for name in GOLDEN_CASES if got[name] != expected[name]]
    assert not changed, f"samples changed: {changed}"


def test_logprobs_are_each_tokens_log_probability_under_the_prediction_that_revealed_it(toy):
    model = oracle_model(toy)
    states = list(iterate(model, 6, toy.L, toy.L, method="low_confidence", tokens_per_step=1, generator=seed(21)))
    assert states[0].logprobs is not None and states[0].logprobs.isnan().all()
    for before, after in zip(states, states[1:]):
        # the exact conditionals given what was unmasked before the step: what the oracle denoiser predicts
        expected = toy.conditionals(before.z).gather(-1, after.z.clamp_max(toy.V - 1).unsqueeze(-1)).squeeze(-1).log()
        assert after.revealed.sum() == 6 and torch.allclose(after.logprobs[after.revealed], expected[after.revealed])
        kept = ~after.revealed & ~(before.z == toy.V)
        assert torch.equal(after.logprobs[kept], before.logprobs[kept])  # a settled token keeps the figure of its reveal
    assert torch.isfinite(states[-1].logprobs).all() and (states[-1].logprobs <= 0).all()


def test_remasked_tokens_lose_their_logprobs_until_revealed_again(toy):
    states = list(iterate(oracle_model(toy), 64, toy.L, 12, method="remdm", eta=0.5, generator=seed(22)))
    remasks = 0
    for step in states[1:]:
        if step.remasked is not None:
            again = step.remasked & ~step.revealed
            remasks += int(again.sum())
            assert step.logprobs[again].isnan().all()
    assert remasks > 0 and torch.isfinite(states[-1].logprobs).all()

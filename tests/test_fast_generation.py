"""Fast generation: block decoding on a KV cache, the factor rule and the token cap, ReMDM remasking,
mixed-length batches with per-row streams, and rows that stop at their end of text."""

import pytest
import torch
from conftest import ToyDistribution
from test_rules import context, fake
from test_sampling import empirical, oracle_model, product_of_marginals, seed, tv
from tiny_run import train_tiny

import maskdiff
from maskdiff.cli import main
from maskdiff.errors import MaskdiffError
from maskdiff.objectives.genmd4 import GenMD4, inverse_softplus
from maskdiff.sampling import fill_after_eos, row_seeds
from maskdiff.sampling.rules import Factor, Threshold

V = 6


def transformer(dtype=torch.float32) -> maskdiff.Transformer:
    """A small transformer whose weights are all drawn from a seed (peaked, position-dependent predictions);
    time-conditioned in float32 (the time features are float32, so float64 networks go without)."""
    conditioned = dtype == torch.float32
    net = maskdiff.Transformer(maskdiff.ModelConfig(n_layers=2, d_model=32, n_heads=2, time_conditioning=conditioned), V)
    net = net.to(dtype).eval()
    gen = seed(7)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=gen, dtype=dtype) * 0.3)
    return net


def transformer_model(kind: str, dtype=torch.float32):
    if kind == "md4":
        return maskdiff.MaskedDiffusion(transformer(dtype=dtype), "cosine", V)
    model = GenMD4(transformer(dtype=dtype), V)
    with torch.no_grad():
        model.raw_w.copy_(torch.tensor([inverse_softplus(p) for p in (0.5, 1.0, 2.0, 3.0, 1.5, 0.8)]))
    return model


def states(model, n, length, steps, **options):
    return list(model.iterate(n, length, steps, generator=seed(11), **options))


def assert_same_states(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x.z, y.z) and x.nfe == y.nfe


# ---------------------------------------------------------------- KV cache
@pytest.mark.parametrize("kind", ["md4", "genmd4"])
@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("rule", [{}, {"method": "low_confidence"}, {"method": "factor", "factor": 2.0}])
def test_cache_refreshed_every_step_equals_no_cache_bit_for_bit(kind, mode, rule):
    model = transformer_model(kind)
    plain = states(model, 5, 24, 12, block_size=8, **rule)
    cached = states(model, 5, 24, 12, block_size=8, kv_cache=mode, refresh=1, **rule)
    assert_same_states(plain, cached)
    assert cached[-1].stats.full_calls == cached[-1].nfe  # every call ran the whole sequence


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_cache_refreshed_every_step_with_guidance_and_a_prompt(mode):
    model = transformer_model("md4")
    given = torch.full((4, 20), model.mask_id)
    given[:, :3] = torch.tensor([1, 4, 2])
    options = {"block_size": 5, "cfg": 1.5, "given": given, "method": "threshold", "threshold": 0.5}
    assert_same_states(states(model, 4, 20, 12, **options), states(model, 4, 20, 12, kv_cache=mode, refresh=1, **options))


@pytest.mark.parametrize("mode, width", [("prefix", lambda start, length: length - start), ("dual", lambda start, length: 8)])
def test_cache_runs_the_window_between_full_passes(monkeypatch, mode, width):
    model = transformer_model("md4")
    net = model.denoiser
    calls = []
    original = net.forward_block

    def spy(z, t, cache, rows, window=None):
        calls.append((z.shape[1], window))
        return original(z, t, cache, rows, window)

    monkeypatch.setattr(net, "forward_block", spy)
    final = states(model, 3, 32, 16, block_size=8, method="low_confidence", tokens_per_step=2, kv_cache=mode, refresh=3)[-1]
    assert not (final.z == model.mask_id).any()
    full = [c for c in calls if c[1] is None]
    windows = [c for c in calls if c[1] is not None]
    # 4 blocks of 4 steps: full passes at steps 0 and 3 of each block, windows at steps 1 and 2
    assert len(full) == 8 and len(windows) == 8 and final.stats.full_calls == 8 and final.nfe == 16
    assert all(w == width(win[0], 32) and win[1] - win[0] == w for w, win in windows)
    assert {win[0] for _, win in windows} == {0, 8, 16, 24}


def test_a_window_on_an_unchanged_sequence_sees_what_the_full_pass_saw():
    net = transformer(dtype=torch.float64)
    z = torch.randint(0, V + 1, (3, 16), generator=seed(1))
    t = torch.full((3,), 0.4, dtype=torch.float64)
    cache = net.new_block_cache(3, 16)
    full = net.forward_block(z, t, cache, torch.arange(3))
    assert torch.equal(full, net(z, t))  # the full pass is the uncached network, bit for bit
    rows = torch.tensor([0, 2])
    window = net.forward_block(z[rows, 4:9], t[rows], cache, rows, (4, 9))
    torch.testing.assert_close(window, full[rows, 4:9], rtol=0, atol=1e-12)
    # a changed position outside the window is not seen until the next full pass
    changed = z.clone()
    changed[:, 0] = (changed[:, 0] + 1) % V
    assert not torch.allclose(net(changed, t)[rows, 4:9], full[rows, 4:9])
    torch.testing.assert_close(net.forward_block(changed[rows, 4:9], t[rows], cache, rows, (4, 9)), window, rtol=0, atol=0)


# ---------------------------------------------------------------- factor rule and token cap
def test_factor_rule_reveals_what_its_inequality_says():
    confidence = [
        [0.99, 0.3, 0.9, 0.75, 0.95],  # sorted .99 .95 .9 .75 .3: 2(.01) 3(.05) 4(.1) 5(.25) -> n = 3 at f = 1
        [0.4, 0.3, 0.2, 0.1, 0.6],  # 2(.4) = 0.8 < 1 -> n = 1; then 3(.6) = 1.8
        [0.2, 0.3, 0.1, 0.1, 0.1],  # 2(.7) = 1.4: none admitted, the most confident one anyway
        [0.99, 0.99, 0.99, 0.2, 0.1],  # the unmasked first position does not count
    ]
    masked = [[True] * 5, [True] * 5, [True] * 5, [False, True, True, True, True]]
    reveal = Factor(1.0).reveal(context(masked), fake(confidence))
    assert reveal.tolist() == [
        [True, False, True, False, True],
        [False, False, False, False, True],
        [False, True, False, False, False],
        [False, True, True, False, False],
    ]
    # a larger factor admits more: row 0 at f = 1.3 also takes 0.75 (5 * 0.25 = 1.25 < 1.3)
    assert Factor(1.3).reveal(context(masked), fake(confidence))[0].tolist() == [True, False, True, True, True]


def test_token_cap_limits_threshold_and_factor_rules():
    confidence = [[0.99, 0.98, 0.97, 0.96, 0.5]]
    masked = [[True] * 5]
    assert Threshold(0.9).reveal(context(masked), fake(confidence)).sum() == 4
    assert Threshold(0.9, max_tokens_per_step=2).reveal(context(masked), fake(confidence)).tolist() == [[True, True, False, False, False]]
    assert Factor(1.0).reveal(context(masked), fake(confidence)).sum() == 4
    assert Factor(1.0, max_tokens_per_step=3).reveal(context(masked), fake(confidence)).tolist() == [[True, True, True, False, False]]


@pytest.mark.parametrize("method", ["threshold", "factor"])
def test_token_cap_holds_in_every_step_but_a_blocks_last(toy, method):
    options = {"method": method, "max_tokens_per_step": 1, "threshold": 0.01, "factor": 100.0}
    run = states(oracle_model(toy), 64, toy.L, 4, block_size=2, **options)
    for step in run[1:]:
        if step.index % 2:  # the first of each block's two steps
            assert (step.revealed.sum(-1) == 1).all()
    uncapped = states(oracle_model(toy), 64, toy.L, 4, block_size=2, method=method, threshold=0.01, factor=100.0)
    assert (uncapped[1].revealed.sum(-1) == 2).all()  # without the cap the whole block goes in one step
    assert run[-1].tokens_per_evaluation < uncapped[-1].tokens_per_evaluation


def test_tokens_per_evaluation_counts_reveals_per_network_call_of_a_sample(toy):
    final = states(oracle_model(toy), 32, toy.L, 8, method="factor", factor=100.0)[-1]
    assert final.stats.reveals == 32 * toy.L
    assert final.tokens_per_evaluation == final.stats.reveals / final.stats.evaluations == toy.L  # everything in one call


# ---------------------------------------------------------------- ReMDM
@pytest.mark.parametrize("remask", ["cap", "rescale", "loop"])
@pytest.mark.parametrize("model_kind", ["md4", "genmd4"])
def test_remasking_off_is_the_ancestral_sampler_exactly(toy, remask, model_kind):
    if model_kind == "md4":
        model = oracle_model(toy)
    else:
        model = GenMD4(toy.denoiser, toy.V)
        with torch.no_grad():
            model.raw_w.copy_(torch.tensor([inverse_softplus(p) for p in (0.5, 1.0, 3.0)]))
    for options in ({}, {"block_size": 2}):
        ancestral = states(model, 16, toy.L, 12, **options)
        remdm = states(model, 16, toy.L, 12, method="remdm", eta=0.0, remask=remask, **options)
        assert_same_states(ancestral, remdm)
        assert all(s.remasked is None for s in remdm[1:])


@pytest.mark.parametrize("remask, eta", [("cap", 0.05), ("rescale", 0.05), ("loop", 0.05)])
def test_remasking_samplers_draw_from_p(toy, remask, eta):
    n = 5000
    run = states(oracle_model(toy), n, toy.L, 48, method="remdm", eta=eta, remask=remask)
    samples = run[-1].z
    remasked = sum(int(s.remasked.sum()) for s in run[1:] if s.remasked is not None)
    assert remasked > n  # it did remask: more than one token per sample on average
    distance = tv(empirical(toy, samples), toy.probs)
    assert distance < 0.06, distance
    assert tv(empirical(toy, samples), product_of_marginals(toy)) > 3 * distance


def test_remasking_keeps_given_positions_and_stays_in_the_block(toy):
    given = torch.full((200, toy.L), toy.V)
    given[:, 1] = 2
    run = states(oracle_model(toy), 200, toy.L, 24, given=given, method="remdm", eta=0.5, remask="rescale", block_size=2)
    assert (run[-1].z[:, 1] == 2).all() and not (run[-1].z == toy.V).any()
    remasked = torch.stack([s.remasked for s in run[1:] if s.remasked is not None])
    assert remasked.any() and not remasked[..., 1].any()
    assert not remasked[:12, :, 2:].any() and not remasked[12:, :, :2].any()  # block 1 in steps 1-12, block 2 after


def test_loop_schedule_holds_alpha_in_its_window(toy):
    from maskdiff.sampling import time_grid
    from maskdiff.sampling.rules import Remasking, hold_time

    rule = Remasking(0.1, "loop", t_on=0.6, t_off=0.2, alpha_on=0.8)
    schedule = maskdiff.schedules.get("linear")
    grid = time_grid(10, "uniform")
    warped = rule.warp(grid, schedule)
    held = hold_time(schedule, 0.8)
    assert abs(float(schedule.alpha(torch.tensor(held, dtype=torch.float64))) - 0.8) < 1e-9
    inside = (grid >= 0.2) & (grid <= 0.6)
    assert torch.allclose(warped[inside], torch.tensor(held, dtype=torch.float64))
    assert warped[0] == 1 and warped[-1] == 0 and torch.all(warped.diff() <= 0)
    p_reveal, sigma = rule.transition(schedule.alpha(warped[5]), schedule.alpha(warped[6]), float(grid[5]), float(grid[6]))
    assert sigma is not None and float(sigma) == pytest.approx(0.1)
    assert float(p_reveal) == pytest.approx(0.1 * 0.8 / 0.2)  # sigma alpha / (1 - alpha): reveals balance remasks
    assert rule.transition(schedule.alpha(warped[1]), schedule.alpha(warped[2]), float(grid[1]), float(grid[2]))[1] is None


# ---------------------------------------------------------------- mixed-length batches, per-row streams, end of text
def mixed_prompts(mask_id, length):
    given = torch.full((3, length), mask_id)
    given[0, :1] = torch.tensor([2])
    given[1, :5] = torch.tensor([1, 0, 3, 3, 1])[: min(5, length)] % (mask_id)
    # row 2: no prompt at all
    return given


@pytest.mark.parametrize(
    "case",
    ["toy", "transformer prefix", "transformer dual eos"],
)
def test_mixed_length_prompts_give_each_row_what_it_gets_alone(toy, case):
    if case == "toy":
        model, length, options = oracle_model(toy), toy.L, {"method": "low_confidence"}
    else:
        model, length = transformer_model("md4", torch.float64), 16
        options = {"block_size": 4, "kv_cache": case.split()[1], "refresh": 2, "method": "threshold", "threshold": 0.3}
        if "eos" in case:
            options.update(eos_id=5, truncate_after_eos=True)
    given = mixed_prompts(model.mask_id, length)
    batch = model.sample(3, length, 8, given=given, seeds=row_seeds([100, 101, 102]), **options)
    for i in range(3):
        alone = model.sample(1, length, 8, given=given[i : i + 1], generator=seed(100 + i), **options)
        assert torch.equal(batch[i], alone[0]), i
    assert (batch[1, :5] == given[1, :5]).all() and batch[0, 0] == given[0, 0]


def test_one_seed_per_row_is_checked(toy):
    with pytest.raises(MaskdiffError, match=r"seeds has shape \(2,\), expected \(3,\)"):
        oracle_model(toy).sample(3, toy.L, 4, seeds=row_seeds([0, 1]))


def test_finished_rows_stop_at_the_end_of_their_block_with_the_same_output():
    toy = ToyDistribution(vocab_size=3, length=8, seed=2)
    model = oracle_model(toy)
    eos = 0
    stopped = states(model, 64, toy.L, 8, block_size=2, eos_id=eos, truncate_after_eos=True)
    full = states(model, 64, toy.L, 8, block_size=2, eos_id=eos)
    assert torch.equal(stopped[-1].z, fill_after_eos(full[-1].z, eos))
    assert stopped[-1].stats.evaluations < full[-1].stats.evaluations  # finished rows cost nothing more
    # after the first block a row with eos in it is finished: its rest is eos already
    after_block = stopped[2].z
    finished = (after_block[:, :2] == eos).any(-1)
    assert finished.any() and (after_block[finished][:, 2:] == eos).all()


# ---------------------------------------------------------------- options and the command line
@pytest.mark.parametrize(
    "options, message",
    [
        ({"kv_cache": "prefix"}, "needs block_size"),
        ({"kv_cache": "triple", "block_size": 2}, "unknown kv_cache"),
        ({"refresh": 2}, "refresh applies"),
        ({"refresh": -1, "kv_cache": "dual", "block_size": 2}, "refresh must be"),
        ({"method": "remdm", "eta": 1.5}, "eta must be"),
        ({"method": "remdm", "eta": 0.1, "remask": "sometimes"}, "unknown remask"),
        ({"method": "remdm", "t_on": 0.1, "t_off": 0.2}, "t_off < t_on"),
        ({"method": "factor", "factor": 0.0}, "factor must be"),
        ({"method": "threshold", "max_tokens_per_step": -1}, "max_tokens_per_step must be"),
        ({"max_tokens_per_step": 2}, "applies to the threshold and factor rules"),
        ({"eta": 0.2}, "applies to the remdm rule"),
        ({"kv_cache": "dual", "block_size": 2}, "needs the bidirectional transformer"),
    ],
)
def test_bad_fast_generation_options_are_clear_errors(toy, options, message):
    with pytest.raises(MaskdiffError, match=message):
        oracle_model(toy).sample(2, toy.L, 4, **options)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from conftest import make_corpus

    folder = tmp_path_factory.mktemp("fastgen")
    corpus = folder / "corpus.txt"
    corpus.write_text(make_corpus(20_000), encoding="utf-8")
    return train_tiny(folder / "run", corpus, steps=2)


def test_sample_command_with_cache_factor_remasking_and_several_prompts(tiny_run, capsys):
    base = ["sample", "--checkpoint", str(tiny_run), "--steps", "8", "--length", "24", "--quiet", "--seed", "3"]
    assert main([*base, "--block-size", "8", "--cache", "dual", "--refresh", "2", "--method", "factor", "--factor", "2"]) == 0
    out, err = capsys.readouterr()
    assert "tokens revealed per evaluation" in err and len(out.split("-" * 40)) == 4
    assert main([*base, "--method", "remdm", "--eta", "0.1", "--remask", "loop"]) == 0
    capsys.readouterr()
    assert main([*base, "--prompt", "The ", "--prompt", "And so the "]) == 0
    out, _ = capsys.readouterr()
    texts = out[:-1].split("\n" + "-" * 40 + "\n")
    assert len(texts) == 2 and texts[0].startswith("The ") and texts[1].startswith("And so the ")
    # sample 1 of the batch is what the second prompt gives alone with seed + 1
    assert main([*base, "--prompt", "And so the ", "--num-samples", "1", "--seed", "4"]) == 0
    assert capsys.readouterr()[0][:-1] == texts[1]
    assert main([*base, "--cache", "prefix"]) == 1
    assert "needs --block-size" in capsys.readouterr()[1]  # the CLI names the flag


def test_load_sample_takes_a_list_of_prompts_and_seeds(tiny_run):
    run = maskdiff.load(tiny_run, precision="fp32")
    texts = run.sample(length=20, steps=6, prompt=["A", "Bee b"], seed=[5, 6], block_size=5, kv_cache="prefix")
    assert len(texts) == 2 and texts[0].startswith("A") and texts[1].startswith("Bee b")
    assert run.sample(length=20, steps=6, prompt="Bee b", seed=6, block_size=5, kv_cache="prefix") == texts[1:]

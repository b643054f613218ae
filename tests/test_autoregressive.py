"""The autoregressive baseline: a causal transformer with a KV cache, its exact likelihood and generation."""

import itertools
import json

import pytest
import torch
from conftest import lose_checkpoints_after
from safetensors.torch import load_file

from maskdiff.checkpoint import CHECKPOINTS, load_run
from maskdiff.cli import main
from maskdiff.config import ModelConfig, RunConfig
from maskdiff.errors import MaskdiffError
from maskdiff.evaluation import chain_rule_log_likelihood, evaluate_nelbo
from maskdiff.metrics import read_metrics
from maskdiff.models import build_model
from maskdiff.nets.transformer import Transformer
from maskdiff.objectives import Autoregressive
from maskdiff.presets import TEXT_PRESETS, get_preset
from maskdiff.training import train

V = 11


def causal_net(**kw):
    torch.manual_seed(0)
    net = Transformer(ModelConfig(n_layers=2, d_model=32, n_heads=2, causal=True, **kw), V)
    with torch.no_grad():  # a fresh head is zero: perturb every weight so positions matter
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


# ---------------------------------------------------------------- the causal network
def test_changing_a_later_token_never_changes_an_earlier_position():
    net = causal_net()
    z = torch.randint(0, V + 1, (2, 12))
    t = torch.zeros(2)
    base = net(z, t)
    for i in range(12):
        changed = z.clone()
        changed[:, i] = (z[:, i] + 1) % (V + 1)
        out = net(changed, t)
        assert torch.equal(out[:, :i], base[:, :i]), i  # bit for bit: the earlier rows never see position i
        assert not torch.allclose(out[:, i:], base[:, i:])


def test_the_kv_cache_gives_the_logits_of_the_whole_prefix():
    net = causal_net(time_conditioning=True)
    z = torch.randint(0, V + 1, (3, 20))
    t = torch.full((3,), 0.3)
    with torch.no_grad():
        full = net(z, t)
        cache = net.new_cache(20)
        chunks = [(0, 5), *((i, i + 1) for i in range(5, 12)), (12, 20)]  # a prompt, single tokens, a chunk
        pieces = [net.forward_cached(z[:, a:b], t, cache) for a, b in chunks]
    assert cache.length == 20
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-5, atol=1e-5)


def test_the_first_cached_chunk_is_the_forward_pass_of_that_prefix_bit_for_bit():
    net = causal_net()
    z = torch.randint(0, V + 1, (2, 9))
    with torch.no_grad():
        assert torch.equal(net.forward_cached(z, torch.zeros(2), net.new_cache(16)), net(z, torch.zeros(2)))


# ---------------------------------------------------------------- the objective and its exact likelihood
def arm(vocab=V, **kw):
    """An Autoregressive model over a small causal transformer with perturbed (non-uniform) weights."""
    cfg = RunConfig().with_overrides(["diffusion.objective=ar", "model.causal=true", "model.n_layers=2", "model.d_model=32", "model.n_heads=2"])
    for key, value in kw.items():
        setattr(cfg.model, key, value)
    model = build_model(cfg, vocab, seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def test_the_likelihood_is_the_sum_of_next_token_log_probabilities_by_hand():
    model = arm()
    x = torch.randint(0, V, (3, 10))
    with torch.no_grad():
        nll = model.nelbo(x)
        inputs = torch.cat([torch.full((3, 1), V), x[:, :-1]], dim=1)  # BOS = V, then x shifted right
        log_probs = torch.log_softmax(model.predict(inputs).double(), dim=-1)
    by_hand = -sum(log_probs[:, i, :].gather(-1, x[:, i, None]).squeeze(-1) for i in range(10))
    torch.testing.assert_close(nll.double(), by_hand, rtol=1e-6, atol=0)  # nll: a float32 cross-entropy
    assert model.estimator == "exact" and nll.shape == (3,)
    # timesteps and generator are accepted and ignored; training minimises the same number
    with torch.no_grad():
        assert torch.equal(model.nelbo(x, timesteps=7, generator=torch.Generator().manual_seed(3)), nll)
        assert torch.equal(model.train_loss(x), nll)


def test_the_likelihood_is_a_normalised_distribution_over_all_sequences():
    model = arm(vocab=3)
    every = torch.tensor(list(itertools.product(range(3), repeat=5)))  # all 243 sequences
    with torch.no_grad():
        total = torch.exp(-model.nelbo(every).double()).sum()
    assert total.item() == pytest.approx(1.0, abs=1e-5)


def test_the_objective_needs_a_causal_transformer():
    with pytest.raises(MaskdiffError, match=r"diffusion.objective=ar needs model.causal=true"):
        RunConfig().with_overrides(["diffusion.objective=ar"])
    with pytest.raises(MaskdiffError, match="needs model.architecture=transformer"):
        RunConfig().with_overrides(["model.architecture=unet", "data.format=idx", "data.image_size=4", "data.seq_len=16", "diffusion.objective=ar"])
    with pytest.raises(MaskdiffError, match="needs a causal network"):
        Autoregressive(Transformer(ModelConfig(n_layers=1, d_model=16, n_heads=2), V), V)
    cfg = RunConfig().with_overrides(["diffusion.objective=ar", "model.causal=true"])
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_evaluation_reports_the_exact_likelihood_and_refuses_monte_carlo_options():
    model = arm()
    x = torch.randint(0, V, (6, 12))
    result = evaluate_nelbo(model, x, batch_size=4)
    with torch.no_grad():
        expected = model.nelbo(x).double().mean().item() / 12
    assert result.estimator == "exact" and result.nats_per_token == pytest.approx(expected)
    assert result.bits_per_token_mc_stderr == 0.0 and result.samples_per_sequence == 1 and result.timesteps is None
    assert evaluate_nelbo(model, x, batch_size=4, seed=9) == result  # nothing random
    with pytest.raises(MaskdiffError, match="exact .* neither --mc-samples > 1 nor --timesteps"):
        evaluate_nelbo(model, x, samples=2)
    with pytest.raises(MaskdiffError, match="neither --mc-samples > 1 nor --timesteps"):
        evaluate_nelbo(model, x, timesteps=10)
    with pytest.raises(MaskdiffError, match="--chain-rule is for masked diffusion models"):
        chain_rule_log_likelihood(model, x)


# ---------------------------------------------------------------- generation
def draw(model, n=4, length=24, seed=0, **kw):
    return model.sample(n, length, steps=0, generator=torch.Generator().manual_seed(seed), **kw)


@pytest.mark.parametrize("options", [{}, {"temperature": 0.7, "top_p": 0.9}, {"top_k": 3, "temperature": 1.3}, {"temperature": 0}])
def test_kv_cache_generation_gives_the_tokens_of_recomputing_the_prefix(options):
    model = arm()
    prompt = torch.full((4, 24), V)
    prompt[:, :5] = torch.tensor([1, 2, 3, 4, 5])
    for seed in range(3):
        for given in (None, prompt):
            cached = draw(model, seed=seed, given=given, **options)
            recomputed = draw(model, seed=seed, given=given, cache=False, **options)
            assert torch.equal(cached, recomputed), (seed, options)
            assert (cached < V).all()
    assert torch.equal(draw(model, given=prompt)[:, :5], prompt[:, :5])


def test_every_state_one_network_call_per_generated_token():
    model = arm()
    given = torch.full((2, 10), V)
    given[:, :3] = 7
    states = list(model.iterate(2, 10, steps=256, given=given, generator=torch.Generator().manual_seed(0)))  # steps is ignored
    assert [s.index for s in states] == list(range(8)) and {s.total for s in states} == {7}
    assert [s.nfe for s in states] == list(range(8))  # the prompt in one call, then one call per token
    assert states[0].t == 1.0 and states[-1].t == 0.0
    for s in states[1:]:
        generated = 3 + s.index
        assert (s.z[:, :generated] < V).all() and (s.z[:, generated:] == V).all()  # not yet generated: the mask id
        assert s.revealed.sum().item() == 2 and s.revealed[:, generated - 1].all()


def test_a_sample_is_the_same_alone_or_in_a_batch():
    model = arm()
    batch = draw(model, n=5, seed=3, top_p=0.95)
    for i in range(5):
        # sample i of a batch uses stream i: alone it is the last of a batch of i + 1
        assert torch.equal(draw(model, n=i + 1, seed=3, top_p=0.95)[i], batch[i])


def test_prompts_of_different_lengths_in_one_batch():
    model = arm()
    given = torch.full((3, 12), V)
    given[0, :2], given[1, :6] = torch.tensor([1, 2]), torch.arange(6)
    states = list(model.iterate(3, 12, steps=1, given=given, generator=torch.Generator().manual_seed(1)))
    final = states[-1].z
    assert states[-1].total == 12 and states[-1].nfe == 12  # from the shortest prompt (none) on
    assert torch.equal(final[0, :2], given[0, :2]) and torch.equal(final[1, :6], given[1, :6]) and (final < V).all()


def test_a_row_stops_at_eos_and_the_network_stops_when_every_row_has():
    model = arm()
    eos = 4
    with torch.no_grad():
        model.denoiser.head.bias[eos] = 50.0  # eos whenever it is allowed
    states = list(model.iterate(3, 16, steps=1, generator=torch.Generator().manual_seed(0), eos_id=eos, min_length=5, truncate_after_eos=True))
    final = states[-1].z
    assert (final[:, :5] != eos).all() and (final[:, 5:] == eos).all()
    assert states[-1].nfe == 6 and len(states) == 17  # positions 0..5 called the network, then every row had stopped
    # without truncate_after_eos the model goes on after eos (min_length still keeps eos out of the start)
    free = list(model.iterate(3, 16, steps=1, generator=torch.Generator().manual_seed(0), eos_id=eos, min_length=5))[-1]
    assert free.nfe == 16 and (free.z[:, :5] != eos).all()
    # an eos in a prompt stops its row too; the other row goes on (and stops at once here)
    given = torch.full((2, 8), V)
    given[0, :2] = torch.tensor([1, eos])
    out = model.sample(2, 8, 1, given=given, eos_id=eos, truncate_after_eos=True)
    assert torch.equal(out[0], torch.tensor([1, eos, eos, eos, eos, eos, eos, eos])) and out[1, 0] == eos


def test_options_that_only_diffusion_has_are_refused():
    model = arm()
    given = torch.full((1, 10), V)
    given[0, :2], given[0, 6:] = 1, 2  # free positions before fixed ones: an infill template
    cases = [
        ({"method": "low_confidence"}, "reveal rule of the diffusion models"),
        ({"cfg": 1.0}, "classifier-free guidance"),
        ({"block_size": 4}, "block_size is for diffusion models"),
        ({"labels": torch.tensor([0])}, "no class labels"),
        ({"given": given}, "infill template"),
        ({"nonsense": 1}, "unknown sampler option"),
    ]
    for kw, message in cases:
        with pytest.raises(MaskdiffError, match=message):
            model.iterate(1, 10, 8, **kw)


# ---------------------------------------------------------------- presets, the command line, resume
TINY = ["model.n_layers=1", "model.d_model=32", "data.seq_len=32", "train.batch_size=4", "train.log_every=2", "train.precision=fp32"]


def cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_every_text_preset_has_an_autoregressive_twin(capsys):
    code, out, _ = cli(capsys, "presets")
    assert code == 0
    for name in TEXT_PRESETS:
        cfg = get_preset(f"ar-{name}")
        assert f"ar-{name}" in out and cfg.objective.name == "ar" and cfg.model.causal
        base = get_preset(name)  # the same network (made causal), data and training
        assert (cfg.data, cfg.train) == (base.data, base.train)
        assert {k: v for k, v in vars(cfg.model).items() if k != "causal"} == {k: v for k, v in vars(base.model).items() if k != "causal"}


@pytest.mark.slow
def test_train_eval_and_sample_an_autoregressive_run_from_the_command_line(corpus_file, tmp_path, capsys):
    run_dir = str(tmp_path / "ar")
    sets = [arg for item in [*TINY, "train.steps=6", "train.eval_every=3"] for arg in ("--set", item)]
    code, out, err = cli(capsys, "train", "--preset", "ar-tiny", "--data", str(corpus_file), "--out", run_dir, "--quiet", *sets)
    assert code == 0, err
    assert "validation NLL" in out and "perplexity =" in out

    base = ["eval", "--checkpoint", run_dir, "--max-sequences", "8", "--quiet"]
    code, out, _ = cli(capsys, *base, "--json")
    result = json.loads(out)
    assert code == 0 and result["estimator"] == "exact" and result["bits_per_token_mc_stderr"] == 0.0 and result["num_tokens"] == 8 * 32
    assert 0 < result["bits_per_token"] < 8 and result["perplexity"] == pytest.approx(2 ** result["bits_per_token"])
    code, out, _ = cli(capsys, *base)
    assert code == 0 and "exact NLL (autoregressive)" in out and "perplexity:" in out
    for extra, message in [(["-k", "4"], "neither --mc-samples > 1 nor --timesteps"), (["--chain-rule"], "--chain-rule is for masked diffusion")]:
        code, _, err = cli(capsys, *base, *extra)
        assert code == 1 and len(err.strip().splitlines()) == 1 and message in err, err

    sample = ["sample", "--checkpoint", run_dir, "--num-samples", "3", "--quiet"]
    code, out, err = cli(capsys, *sample, "--prompt", "The ", "--length", "20", "--top-p", "0.9")
    texts = out[:-1].split("\n" + "-" * 40 + "\n")
    assert code == 0 and len(texts) == 3 and all(t.startswith("The ") and len(t) == 20 for t in texts)
    assert "16 network evaluations" in err  # the prompt in one call, then one per token
    code, out, err = cli(capsys, *sample, "--length", "12", "--no-cache", "--show-steps")
    assert code == 0 and "--- step 0/12" in err and "_" * 12 in err
    code, out, _ = cli(capsys, *sample, "--length", "30", "--eos", "\n")
    assert code == 0 and all("\n" not in t for t in out[:-1].split("\n" + "-" * 40 + "\n"))
    for extra, message in [
        (["--infill", "the [[5]] and"], "infill template"),
        (["--method", "random"], "reveal rule"),
        (["--prompt", "a", "--cfg", "1"], "cfg"),
    ]:
        code, _, err = cli(capsys, *sample, *extra)
        assert code == 1 and len(err.strip().splitlines()) == 1 and message in err, err


@pytest.mark.slow
def test_resuming_an_autoregressive_run_reproduces_it_exactly(corpus_file, tmp_path):
    cfg = get_preset("ar-tiny").with_overrides(
        [
            f"data.path={corpus_file}",
            *TINY,
            "model.n_layers=2",
            "train.steps=8",
            "train.checkpoint_every=4",
            "train.keep_checkpoints=5",
            "train.eval_every=4",
        ]
    )
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    train(cfg, straight, progress=False)
    train(cfg, interrupted, progress=False)
    lose_checkpoints_after(interrupted, 4)
    train(cfg, interrupted, resume=True, progress=False)
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(straight / CHECKPOINTS / "step-000008" / name)
        b = load_file(interrupted / CHECKPOINTS / "step-000008" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    key = lambda r: (r["step"], r["train_loss"], r["valid_bits"], r["lr"], r["grad_norm"])  # noqa: E731
    assert [key(r) for r in read_metrics(straight / "metrics.csv")] == [key(r) for r in read_metrics(interrupted / "metrics.csv")]
    run = load_run(straight)
    assert run.model.estimator == "exact" and run.config.model.causal

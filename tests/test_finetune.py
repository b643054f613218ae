"""Conditional fine-tuning: prompt/response pairs, the objectives' loss mask, and `maskdiff finetune` end to end."""

import json

import pytest
import torch
from conftest import lose_checkpoints_after

import maskdiff
from maskdiff.checkpoint import load_run
from maskdiff.cli import main
from maskdiff.config import RunConfig
from maskdiff.data import FORMATS, prepare_data, split_batch
from maskdiff.data.pairs import encode_pairs, read_pairs
from maskdiff.errors import MaskdiffError
from maskdiff.evaluation import evaluate_nelbo
from maskdiff.models import build_model
from maskdiff.objectives import GenMD4, MaskedDiffusion
from maskdiff.tokenizer import CharTokenizer
from maskdiff.training import finetune_config
from maskdiff.training.state import TrainState
from maskdiff.training.step import train_step

TOKENIZER = CharTokenizer(list("#abcdefgh"))  # '#' is the end of text
EOS = 0  # its id


def pairs_file(tmp_path, rows, name="pairs.jsonl"):
    path = tmp_path / name
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows), encoding="utf-8")
    return path


def encoded(tmp_path, rows, seq_len=8):
    path = pairs_file(tmp_path, rows)
    return encode_pairs(read_pairs(path), TOKENIZER, "#", seq_len, path)


# ---------------------------------------------------------------- the data: padding and the loss mask
def test_an_example_is_prompt_response_eos_padded_with_eos_and_the_loss_mask_covers_the_response_and_one_eos(tmp_path):
    ids, mask = encoded(tmp_path, [{"prompt": "ab", "response": "cde"}, {"prompt": "", "response": "f"}, {"prompt": "abcdefg", "response": ""}])
    a, b, c, d, e, f, g = range(1, 8)
    assert ids.tolist() == [[a, b, c, d, e, EOS, EOS, EOS], [f, EOS, EOS, EOS, EOS, EOS, EOS, EOS], [a, b, c, d, e, f, g, EOS]]
    assert mask.int().tolist() == [[0, 0, 1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 1]]
    # the scored eos is the first after the response; padding is never scored
    assert ((ids == EOS) & mask).sum(-1).tolist() == [1, 1, 1]
    assert FORMATS.get("pairs").modality == "text"


def test_the_batches_carry_the_loss_mask_and_resume_where_they_left_off(tmp_path):
    rows = [{"prompt": "a" * (i % 3), "response": "bcd"[: 1 + i % 3]} for i in range(40)]
    cfg = RunConfig().with_overrides(["data.format=pairs", f"data.path={pairs_file(tmp_path, rows)}", "data.eos=#", "data.seq_len=8"])
    tokenizer, splits = prepare_data(cfg.data)
    assert tokenizer.chars == ["#", "a", "b", "c", "d"]  # a new run's vocabulary: the pairs' characters and the end of text
    assert len(splits.examples("valid")[0]) == 2 and len(splits.examples("test")[0]) == 2 and len(splits.examples("train")[0]) == 36
    stream = FORMATS.get("pairs").batches(splits, cfg.data, 0, 5, 7)
    next(stream)
    state = stream.state_dict()
    x0, extra = split_batch(next(stream))
    assert set(extra) == {"loss_mask"} and x0.shape == extra["loss_mask"].shape == (5, 8)
    stream.load_state_dict(state)
    again, extra_again = split_batch(next(stream))
    assert torch.equal(again, x0) and torch.equal(extra_again["loss_mask"], extra["loss_mask"])


# ---------------------------------------------------------------- the objectives: what is masked and what is scored
class Recorder:
    """A denoiser that remembers every input it sees and predicts uniform logits."""

    def __init__(self, vocab):
        self.vocab, self.inputs = vocab, []

    def __call__(self, z, t):
        self.inputs.append(z.clone())
        return torch.zeros(*z.shape, self.vocab, requires_grad=True)


@pytest.mark.parametrize("objective", ["md4", "genmd4"])
def test_a_diffusion_model_never_masks_a_prompt_or_padding_token(tmp_path, objective):
    ids, mask = encoded(tmp_path, [{"prompt": "ab", "response": "cde"}, {"prompt": "abcd", "response": "e"}, {"prompt": "", "response": "fgh"}])
    x0, loss_mask = ids.repeat(64, 1), mask.repeat(64, 1)
    recorder = Recorder(TOKENIZER.vocab_size)
    model = MaskedDiffusion(recorder, vocab_size=TOKENIZER.vocab_size) if objective == "md4" else GenMD4(recorder, TOKENIZER.vocab_size)
    generator = torch.Generator().manual_seed(0)
    model.train_loss(x0, generator=generator, loss_mask=loss_mask).sum().backward()
    model.nelbo(x0, generator=generator, loss_mask=loss_mask)
    model.nelbo(x0, timesteps=10, generator=generator, loss_mask=loss_mask)
    assert len(recorder.inputs) == 3
    for z in recorder.inputs:
        z = z.view(-1, *x0.shape)  # GenMD4 trains on two maskings at once
        masked = z == model.mask_id
        assert not (masked & ~loss_mask).any()  # prompt and padding: always the given tokens
        assert torch.equal(torch.where(masked, x0, z), x0.expand_as(z))
        assert masked.any()
    every_draw = torch.cat([z.view(-1, *x0.shape) for z in recorder.inputs]) == model.mask_id
    assert torch.equal(every_draw.any(0).any(0), loss_mask[:3].any(0))  # every response position and its eos get masked
    # without a loss mask the prompt is masked too (so the check above has teeth)
    recorder.inputs.clear()
    model.nelbo(x0, generator=generator)
    assert ((recorder.inputs[0] == model.mask_id) & ~loss_mask).any()


def test_the_conditional_bound_of_an_oracle_is_minus_log_p_of_the_response_given_the_prompt(toy):
    model = MaskedDiffusion(toy.denoiser, "cosine", toy.V)
    x = torch.tensor([2, 0, 1, 1])
    loss_mask = torch.tensor([False, False, True, True])  # the first two tokens are the prompt
    values = model.nelbo(x[None].repeat(4000, 1), generator=torch.Generator().manual_seed(0), loss_mask=loss_mask[None].repeat(4000, 1)).double()
    mean, stderr = values.mean().item(), values.std().item() / 4000**0.5
    prompt_marginal = toy.probs[(toy.table[:, :2] == x[:2]).all(-1)].sum().log().item()
    target = -toy.log_prob(x[None]).item() + prompt_marginal  # -log p(x3, x4 | x1, x2)
    assert abs(mean - target) < 4 * stderr + 2e-3, (mean, stderr, target)
    assert abs(target + toy.log_prob(x[None]).item()) > 0.5  # the unconditional value differs: the mask matters


def arm(vocab):
    cfg = RunConfig().with_overrides(["diffusion.objective=ar", "model.causal=true", "model.n_layers=1", "model.d_model=16", "model.n_heads=2"])
    model = build_model(cfg, vocab, seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def test_the_autoregressive_loss_covers_the_response_tokens_only_by_hand(tmp_path):
    ids, mask = encoded(tmp_path, [{"prompt": "abc", "response": "de"}, {"prompt": "a", "response": "fgh"}])
    model = arm(TOKENIZER.vocab_size)
    with torch.no_grad():
        loss = model.train_loss(ids, loss_mask=mask)
        log_probs = torch.log_softmax(model.predict(model.shift_right(ids)).double(), dim=-1)  # position i predicts ids[i]
    # row 0: "d" (position 3), "e" (4) and the eos (5); row 1: "f", "g", "h" (1..3) and the eos (4)
    by_hand = [-sum(log_probs[row, i, ids[row, i]] for i in positions) for row, positions in ((0, (3, 4, 5)), (1, (1, 2, 3, 4)))]
    torch.testing.assert_close(loss.double(), torch.stack(by_hand))
    # padding after the eos is not scored: another value there changes nothing (a causal model never sees it before)
    changed = ids.clone()
    changed[0, 6:] = 3
    with torch.no_grad():
        assert torch.equal(model.nelbo(changed, loss_mask=mask), model.nelbo(ids, loss_mask=mask))
        assert not torch.equal(model.nelbo(ids), model.nelbo(ids, loss_mask=mask))
    # evaluation reports it per scored token: 3 + 4 of the 16 tokens
    result = evaluate_nelbo(model, ids, loss_masks=mask)
    assert result.num_tokens == 7 and result.nats_per_token == pytest.approx(loss.double().sum().item() / 7)


def test_a_training_step_minimises_the_loss_per_scored_token(tmp_path):
    rows = [{"prompt": "ab", "response": "c" * (1 + i % 4)} for i in range(40)]
    overrides = ["data.format=pairs", f"data.path={pairs_file(tmp_path, rows)}", "data.eos=#", "data.seq_len=16", "train.batch_size=6"]
    cfg = RunConfig().with_overrides([*overrides, "model.n_layers=1", "model.d_model=16", "model.n_heads=2", "train.precision=fp32"])
    tokenizer, splits = prepare_data(cfg.data)
    state = TrainState.create(cfg, tokenizer.vocab_size, splits, torch.device("cpu"))
    batch = next(state.batches)
    noise = torch.Generator().set_state(state.noise.get_state())
    with torch.no_grad():
        per_sequence = state.model(batch["x0"], generator=noise, loss_mask=batch["loss_mask"])
    outcome = train_step(state, [batch])
    scored = int(batch["loss_mask"].sum())
    assert scored < batch["x0"].numel() / 2  # most positions are prompt or padding
    assert outcome.loss.item() == pytest.approx(per_sequence.sum().item() / scored, rel=1e-6)


# ---------------------------------------------------------------- bad input: one line each
@pytest.mark.parametrize(
    "rows, message",
    [
        (['{"prompt": "a", "response": "b"}', '{"prompt": "a" "response": "b"}'], r"pairs.jsonl:2: not valid JSON \(Expecting ',' delimiter"),
        (['["a", "b"]'], r"pairs.jsonl:1: expected a JSON object with fields 'prompt' and 'response', got list"),
        (['{"prompt": "a"}'], r"pairs.jsonl:1: missing field 'response'"),
        (["{}"], r"pairs.jsonl:1: missing fields 'prompt' and 'response'"),
        (['{"prompt": "a", "response": 3}'], r"pairs.jsonl:1: field 'response' must be a string, got int"),
        ([""], r"holds no examples"),
        (
            ['{"prompt": "a", "response": "xyé"}', '{"prompt": "x", "response": "b"}'],
            r"has 4 characters the tokenizer cannot encode: 'x' x2, 'y' x1, 'é' x1 \(first on line 1\)",
        ),
        (['{"prompt": "a", "response": "b#"}'], r"pairs.jsonl:1: the response contains the end-of-text character '#'"),
        (
            ['{"prompt": "abcdef", "response": "gh"}'],
            r"pairs.jsonl:1: prompt and response take 9 tokens with the end of text, more than data.seq_len=8",
        ),
    ],
)
def test_bad_pairs_are_refused_in_one_line_naming_the_line(tmp_path, rows, message):
    with pytest.raises(MaskdiffError, match=message) as caught:
        encoded(tmp_path, rows)
    assert "\n" not in str(caught.value)


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(MaskdiffError, match="pairs file .*nope.jsonl' does not exist"):
        read_pairs(tmp_path / "nope.jsonl")


def test_fine_tuning_keeps_the_network_and_names_what_set_may_change(tmp_path):
    source = RunConfig().with_overrides(["train.lr=0.002"])
    cfg = finetune_config(source, tmp_path / "p.jsonl", "#", ["train.steps=7"])
    assert (cfg.data.format, cfg.data.eos, cfg.train.steps, cfg.train.lr, cfg.model) == ("pairs", "#", 7, pytest.approx(2e-4), source.model)
    with pytest.raises(MaskdiffError, match=r"--set may change train\.\*.*not model\.d_model, diffusion\.objective"):
        finetune_config(source, tmp_path / "p.jsonl", "#", ["model.d_model=8", "diffusion.objective=ar", "train.lr=1"])
    with pytest.raises(MaskdiffError, match="data.format=pairs needs data.eos"):
        finetune_config(source, tmp_path / "p.jsonl", "##")
    with pytest.raises(MaskdiffError, match="data.eos applies to data.format=pairs"):
        RunConfig().with_overrides(["data.eos=#"])


# ---------------------------------------------------------------- `maskdiff finetune` end to end
SMALL = ["model.n_layers=1", "model.d_model=32", "data.seq_len=32", "train.batch_size=4", "train.log_every=1", "train.precision=fp32"]


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def sets(*overrides):
    return [arg for item in overrides for arg in ("--set", item)]


@pytest.fixture
def qa_pairs(tmp_path):
    """40 pairs over the characters of the test corpus: the answer to every question is "Yes." """
    return pairs_file(tmp_path, [{"prompt": f"{w} is it? ", "response": "Yes."} for w in ["The king", "A lady", "Her lord", "Thy heart"] * 10])


@pytest.fixture(params=["tiny", "ar-tiny"])
def source_run(request, corpus_file, tmp_path, capsys):
    """A 4-step run of a masked diffusion model or an autoregressive one on the test corpus."""
    run = tmp_path / request.param
    code, out, _ = cli(capsys, "train", "--preset", request.param, "--data", corpus_file, "--out", run, "--quiet", *sets(*SMALL, "train.steps=4"))
    assert code == 0, out
    return run


@pytest.mark.slow
def test_a_fine_tuning_run_starts_from_the_source_weights_and_resumes_bit_exactly(source_run, qa_pairs, tmp_path, capsys):
    # one thread for every part: the automatic choice follows the machine's load, and bit-exactness needs the same reductions
    args = ["finetune", "--checkpoint", source_run, "--data", qa_pairs, "--eos", "\n", "--quiet", "--threads", "1"]
    args += sets("train.steps=6", "train.checkpoint_every=3", "train.eval_every=3")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    code, out, err = cli(capsys, *args, "--out", whole)
    assert code == 0 and "done: 6 steps" in out, err
    record = json.loads((whole / "finetune.json").read_text())
    assert record["source_step"] == 4 and record["weights"] == "ema.safetensors" and record["eos"] == "\n"
    assert (whole / "tokenizer.json").read_text() == (source_run / "tokenizer.json").read_text()
    assert RunConfig.load(whole / "config.json").data.eos == "\n"

    # the starting weights are the source's EMA
    cfg = RunConfig.load(whole / "config.json")
    tokenizer, splits = prepare_data(cfg.data, load_run(source_run).tokenizer)
    state = TrainState.create(cfg, tokenizer.vocab_size, splits, torch.device("cpu"))
    state.start_from(source_run / "checkpoints" / "step-000004", "ema")
    source = load_run(source_run).model.state_dict()
    assert all(torch.equal(value, source[key]) for key, value in state.model.state_dict().items())

    # interrupted after step 3 and resumed: the same weights, bit for bit
    assert cli(capsys, *args, "--out", parts)[0] == 0
    lose_checkpoints_after(parts, 3)
    code, out, err = cli(capsys, "finetune", "--out", parts, "--resume", "--quiet", "--threads", "1")
    assert code == 0 and "done: 6 steps" in out, err
    for name in ("model.safetensors", "ema.safetensors"):
        assert (whole / "checkpoints/step-000006" / name).read_bytes() == (parts / "checkpoints/step-000006" / name).read_bytes()
    # a resume may not change the data or the end of text
    code, _, err = cli(capsys, "finetune", "--out", parts, "--resume", "--eos", ".", "--set", "train.steps=8")
    assert code == 1 and "data.eos ('\\n' in the run, '.' asked)" in err and err.count("\n") == 1
    code, out, _ = cli(capsys, "finetune", "--out", parts, "--resume", "auto", "--quiet")
    assert code == 0 and "already finished 6" in out
    # evaluation scores the responses of the held-out examples: "Yes." and its end of text, 5 tokens each
    code, out, _ = cli(capsys, "eval", "--checkpoint", whole, "--json")
    assert code == 0 and json.loads(out)["num_tokens"] == 5 * json.loads(out)["num_sequences"] == 10
    code, _, err = cli(capsys, "eval", "--checkpoint", whole, "--length", 16)
    assert code == 1 and "trained on prompt/response pairs" in err and err.count("\n") == 1


@pytest.mark.slow
def test_samples_of_a_fine_tuned_run_stop_at_its_end_of_text(source_run, qa_pairs, tmp_path, capsys):
    out = tmp_path / "ft"
    code, stdout, err = cli(
        capsys, "finetune", "--checkpoint", source_run, "--data", qa_pairs, "--eos", "\n", "--out", out, "--quiet",
        *sets("train.steps=300", "train.lr=0.01", "train.warmup_steps=5", "train.eval_every=0", "train.ema_decay=0"),
    )  # fmt: skip
    assert code == 0, err
    # no --eos: the run's own end of text cuts the samples; the model has learned to say "Yes." and stop.
    # --length 19 leaves room for a response of 5 after the prompt's 14 (its end of text included); a
    # masked diffusion model is given the padding after it, as in training, and an autoregressive one
    # stops at the end of text
    prompt = "A lady is it? "
    code, stdout, _ = cli(
        capsys, "sample", "--checkpoint", out, "--prompt", prompt, "--length", 19, "--temperature", 0, "--num-samples", 2, "--quiet"
    )
    assert code == 0
    assert stdout.split("\n" + "-" * 40 + "\n") == [f"{prompt}Yes.", f"{prompt}Yes.\n"]
    run = maskdiff.load(out)
    assert run.sample(2, length=21, prompt="The king is it? ", temperature=0) == ["The king is it? Yes."] * 2
    # the same without the cut: the end of text follows "Yes."
    assert run.sample(1, length=21, prompt="The king is it? ", temperature=0, truncate_after_eos=False) == ["The king is it? Yes.\n"]


@pytest.mark.slow
def test_bad_fine_tuning_input_is_one_line(source_run, qa_pairs, tmp_path, capsys):
    bad_json = pairs_file(tmp_path, ['{"prompt": "a", "response": "b"}', "{oops"], "bad.jsonl")
    cases = [
        (["--data", tmp_path / "missing.jsonl", "--eos", "\n"], "pairs data '.*missing.jsonl' does not exist"),
        (["--data", bad_json, "--eos", "\n"], r"bad.jsonl:2: not valid JSON"),
        (["--data", qa_pairs], r"--eos CHAR is needed: .*never use: '\\n'"),
        (["--data", qa_pairs, "--eos", "|"], r"the end-of-text character '\|' is not in the run's vocabulary"),
        (["--data", qa_pairs, "--eos", "s"], r"pairs.jsonl:1: the prompt contains the end-of-text character 's'"),
        (["--data", qa_pairs, "--eos", "\n", "--set", "model.d_model=64"], r"--set may change train\.\*"),
        ([], "a new fine-tuning run needs --checkpoint RUN and --data PAIRS"),
    ]
    for extra, message in cases:
        head = ["finetune", "--checkpoint", source_run, "--out", tmp_path / "never"] if extra else ["finetune"]
        code, _, err = cli(capsys, *head, *extra)
        assert code == 1 and err.count("\n") == 1 and "internal error" not in err, err
        assert __import__("re").search(message, err), (message, err)
    assert not (tmp_path / "never").exists()  # a failed start writes nothing


@pytest.mark.parametrize("preset", ["tiny", "ar-tiny"])
def test_a_split_too_small_for_an_error_bar_is_named_and_nan_is_never_printed(preset, tmp_path, capsys):
    from maskdiff.cli.train import report_training
    from maskdiff.presets import get_preset
    from maskdiff.training import train

    pairs = pairs_file(tmp_path, [{"prompt": f"{w} is it? ", "response": "Yes."} for w in ["The king", "A lady", "Her lord", "Thy heart"] * 5])
    cfg = get_preset(preset).with_overrides([f"data.path={pairs}", "data.format=pairs", "data.eos=#", *SMALL, "train.steps=3", "train.eval_every=2"])
    result = train(cfg, tmp_path / "run", progress=True)  # 20 pairs: one validation example
    report_training(result, "finetune")
    out, err = capsys.readouterr()
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "validation split holds 1 sequence" in warnings[0]
    assert "nan" not in out.lower() and "nan" not in err.lower()
    assert result.valid.num_sequences == 1
    if preset == "ar-tiny":  # one exact value: no error bar at all, and it says so
        assert "no error bar" in out
    # `maskdiff eval` on the one-example test split says so too, in one line
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "gives 1 sequence: too few for an error bar" in err
    assert "nan" not in out.lower()

"""The trainer: loss falls, resume is bit-exact, and a golden loss curve guards the math."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import lose_checkpoints_after
from safetensors.torch import load_file

from maskdiff import distributed
from maskdiff.checkpoint import CHECKPOINTS, list_checkpoints, load_run, load_state
from maskdiff.data import prepare_data
from maskdiff.errors import MaskdiffError
from maskdiff.metrics import read_metrics
from maskdiff.presets import get_preset
from maskdiff.training import TrainState, lr_factor, train, train_step

GOLDEN = Path(__file__).parent / "golden" / "tiny_loss.json"


def quick(corpus, *overrides):
    """The tiny preset on the test corpus, with short sequences and small batches."""
    base = [
        f"data.path={corpus}",
        "data.seq_len=64",
        "train.batch_size=8",
        "train.log_every=5",
        "train.eval_every=0",
        "train.precision=fp32",
        "train.warmup_steps=5",
    ]
    return get_preset("tiny").with_overrides(base + list(overrides))


@pytest.mark.slow
def test_loss_falls(corpus_file, tmp_path):
    cfg = quick(corpus_file, "train.steps=60", "model.n_layers=2", "model.d_model=64", "train.lr=3e-3")
    result = train(cfg, tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    losses = [float(r["train_bits"]) for r in rows if r["train_bits"]]
    assert losses[-1] < losses[0] - 1.0, losses
    assert result.valid.bits_per_token < losses[0]
    assert (tmp_path / "run" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((tmp_path / "run" / "tensorboard").iterdir())


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_run_exactly(corpus_file, tmp_path):
    cfg = quick(
        corpus_file,
        "train.steps=12",
        "train.checkpoint_every=6",
        "train.keep_checkpoints=5",
        "train.eval_every=4",
        "train.log_every=2",
        "model.n_layers=2",
        "model.d_model=64",
    )
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    train(cfg, straight, progress=False)
    train(cfg, interrupted, progress=False)
    lose_checkpoints_after(interrupted, 6)
    train(cfg, interrupted, resume=True, progress=False)

    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(straight / CHECKPOINTS / "step-000012" / name)
        b = load_file(interrupted / CHECKPOINTS / "step-000012" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows_a = read_metrics(straight / "metrics.csv")
    rows_b = read_metrics(interrupted / "metrics.csv")
    key = lambda r: (r["step"], r["train_loss"], r["valid_bits"], r["lr"], r["grad_norm"])  # noqa: E731
    assert [key(r) for r in rows_a] == [key(r) for r in rows_b]


def test_training_refuses_to_overwrite_a_run_and_resume_needs_one(corpus_file, tmp_path):
    cfg = quick(corpus_file, "train.steps=2", "model.n_layers=1", "model.d_model=32")
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and "tensorboard" not in p.parts}
    with pytest.raises(MaskdiffError, match="already holds a run"):
        train(cfg, run, progress=False)
    with pytest.raises(MaskdiffError, match="already finished"):
        train(cfg, run, resume=True, progress=False)
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and "tensorboard" not in p.parts}
    assert before == after
    with pytest.raises(MaskdiffError, match="holds no checkpoint"):
        train(cfg, tmp_path / "empty", resume=True, progress=False)


def test_checkpoints_are_pruned_and_the_run_reloads(corpus_file, tmp_path):
    cfg = quick(corpus_file, "train.steps=8", "train.checkpoint_every=2", "train.keep_checkpoints=2", "model.n_layers=1", "model.d_model=32")
    train(cfg, tmp_path / "run", progress=False)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-000006", "step-000008"]
    assert not list((tmp_path / "run" / CHECKPOINTS).glob(".tmp-*"))
    run = load_run(tmp_path / "run")
    assert run.step == 8 and run.config == cfg and run.tokenizer.vocab_size == run.model.vocab_size


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    factors = [lr_factor(s, 10, 100, 0.1) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)


def golden_curve(corpus_file, tmp_path):
    # the network the golden file was made with (the preset's depth has been tuned since)
    cfg = quick(corpus_file, "train.steps=30", "train.ema_decay=0.9", "model.n_layers=4")
    train(cfg, tmp_path / "golden", progress=False)
    return [float(r["train_loss"]) for r in read_metrics(tmp_path / "golden" / "metrics.csv") if r["train_loss"]]


@pytest.mark.slow
def test_golden_loss_curve_of_the_tiny_preset(corpus_file, tmp_path):
    """Silent changes to the objective, the model or the trainer move this curve.

    Regenerate (only after an intended change) with MASKDIFF_UPDATE_GOLDEN=1.
    """
    curve = golden_curve(corpus_file, tmp_path)
    if os.environ.get("MASKDIFF_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps({"train_loss": curve}, indent=1) + "\n")
    expected = json.loads(GOLDEN.read_text())["train_loss"]
    assert curve == pytest.approx(expected, rel=2e-3)


@pytest.mark.slow
def test_torchrun_two_processes_train_and_resume_exactly(corpus_file, tmp_path):
    """DDP over gloo on the CPU: a run interrupted after a checkpoint resumes to the same weights."""
    args = [
        "--data",
        str(corpus_file),
        "--quiet",
        "--set",
        "train.steps=4",
        "--set",
        "train.checkpoint_every=2",
        "--set",
        "train.keep_checkpoints=5",
        "--set",
        "model.n_layers=1",
        "--set",
        "model.d_model=32",
        "--set",
        "data.seq_len=32",
        "--set",
        "train.batch_size=4",
        "--set",
        "train.grad_accum=2",
        "--set",
        "train.log_every=1",
        "--set",
        "train.precision=fp32",
    ]

    def torchrun(*extra):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "maskdiff", "train", *args, *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc

    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    out = torchrun("--out", str(straight)).stdout
    assert out.count("done: 4 steps") == 1  # only rank 0 reports
    torchrun("--out", str(interrupted))
    lose_checkpoints_after(interrupted, 2)
    torchrun("--out", str(interrupted), "--resume")
    a = load_file(straight / CHECKPOINTS / "step-000004" / "model.safetensors")
    b = load_file(interrupted / CHECKPOINTS / "step-000004" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    state = torch.load(straight / CHECKPOINTS / "step-000004" / "state.pt", weights_only=True)
    # one stream per process, all in the same state: every process draws the whole batch and trains on its rows
    assert len(state["data"]) == 2 and torch.equal(state["data"][0]["generator"], state["data"][1]["generator"])


def assert_same(a, b, where="state"):
    """Nested dicts, lists and tensors (as state_dict()s hold them) are equal, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def test_train_state_saves_and_restores_every_part(corpus_file, tmp_path):
    cfg = quick(corpus_file, "train.steps=10", "train.ema_decay=0.9", "model.n_layers=1", "model.d_model=32", "model.dropout=0.1")
    tokenizer, splits = prepare_data(cfg.data)
    ctx, device = distributed.Context(), torch.device("cpu")
    state = TrainState.create(cfg, tokenizer.vocab_size, splits, device)
    for _ in range(3):
        outcome = train_step(state, [next(state.batches), next(state.batches)], grad_clip=cfg.train.grad_clip)
        assert outcome.applied
    checkpoint = state.save(tmp_path / "run", ctx, keep=2)
    assert checkpoint == tmp_path / "run" / CHECKPOINTS / "step-000003"
    assert set(load_state(checkpoint)) == {"step", "optimizer", "scheduler", "data", "noise_generator", "torch_rng", "ema_updates", "skipped_steps"}
    rng = torch.get_rng_state()

    torch.rand(100)  # the global RNG moves on; restore() must bring it back
    fresh = TrainState.create(cfg, tokenizer.vocab_size, splits, device)
    fresh.restore(checkpoint, ctx)
    assert torch.equal(torch.get_rng_state(), rng)
    assert (fresh.step, fresh.skipped_steps, fresh.ema.updates) == (state.step, state.skipped_steps, state.ema.updates) == (3, 0, 3)
    assert_same(fresh.model.state_dict(), state.model.state_dict(), "model")
    assert_same(fresh.ema.module.state_dict(), state.ema.module.state_dict(), "ema")
    assert_same(fresh.optimizer.state_dict(), state.optimizer.state_dict(), "optimizer")
    assert_same(fresh.scheduler.state_dict(), state.scheduler.state_dict(), "scheduler")
    assert_same(fresh.batches.state_dict(), state.batches.state_dict(), "data")
    assert torch.equal(fresh.noise.get_state(), state.noise.get_state())

    # one more step from each (from the same global RNG: dropout draws from it) ends in the same place
    batch, fresh_batch = next(state.batches), next(fresh.batches)
    assert torch.equal(batch, fresh_batch)
    a = train_step(state, [batch], grad_clip=cfg.train.grad_clip)
    torch.set_rng_state(rng)
    b = train_step(fresh, [fresh_batch], grad_clip=cfg.train.grad_clip)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.grad_norm, b.grad_norm)
    assert_same(fresh.model.state_dict(), state.model.state_dict(), "model after a step")
    assert_same(fresh.ema.module.state_dict(), state.ema.module.state_dict(), "ema after a step")
    assert_same(fresh.optimizer.state_dict(), state.optimizer.state_dict(), "optimizer after a step")
    assert fresh.scheduler.get_last_lr() == state.scheduler.get_last_lr() and fresh.step == state.step == 4


def test_a_checkpoint_without_skipped_steps_still_resumes(corpus_file, tmp_path):
    """state.pt of runs saved before the skipped-step count existed restores with a count of 0."""
    cfg = quick(corpus_file, "train.steps=4", "train.checkpoint_every=2", "model.n_layers=1", "model.d_model=32")
    train(cfg, tmp_path / "run", progress=False)
    checkpoint = tmp_path / "run" / CHECKPOINTS / "step-000004"
    saved = load_state(checkpoint)
    del saved["skipped_steps"]
    torch.save(saved, checkpoint / "state.pt")
    tokenizer, splits = prepare_data(cfg.data)
    state = TrainState.create(cfg, tokenizer.vocab_size, splits, torch.device("cpu"))
    state.skipped_steps = 7
    state.restore(checkpoint, distributed.Context())
    assert (state.step, state.skipped_steps) == (4, 0)


# ---------------------------------------------------------------- what a run reports
def test_the_end_of_training_bound_agrees_with_eval_within_its_error_bars(corpus_file, tmp_path):
    from maskdiff.evaluation import evaluate_checkpoint

    cfg = quick(corpus_file, "train.steps=6", "model.n_layers=1", "model.d_model=32", "data.seq_len=32")
    result = train(cfg, tmp_path / "run", progress=False)
    final = result.valid
    assert final.samples_per_sequence == cfg.train.final_eval_samples == 8
    assert final.how_estimated() == "8 Monte Carlo draws each"
    # `maskdiff eval -k 32` on the same split: the same sequences and weights, so the two differ
    # only by their Monte Carlo errors
    again, _ = evaluate_checkpoint(tmp_path / "run", split="valid", mc_samples=32, precision="fp32")
    assert again.num_sequences == final.num_sequences
    both = (final.bits_per_token_mc_stderr**2 + again.bits_per_token_mc_stderr**2) ** 0.5
    assert abs(final.bits_per_token - again.bits_per_token) < 3 * both, (final, again)
    # an exact likelihood takes one pass, whatever the setting
    ar = get_preset("ar-tiny").with_overrides(
        [f"data.path={corpus_file}", "data.seq_len=32", "model.n_layers=1", "model.d_model=32", "train.steps=2"]
    )
    exact = train(ar.with_overrides(["train.eval_every=0", "train.precision=fp32", "train.batch_size=4"]), tmp_path / "ar", progress=False).valid
    assert exact.samples_per_sequence == 1 and exact.how_estimated() == "one pass each"


def test_in_a_log_the_run_writes_a_plain_line_per_logged_step_and_quiet_keeps_the_header(corpus_file, tmp_path, capsys):
    from maskdiff.cli import main

    cfg = quick(corpus_file, "train.steps=6", "train.log_every=2", "model.n_layers=1", "model.d_model=32", "data.seq_len=32")
    train(cfg, tmp_path / "run", progress=True)  # under pytest stderr is a file, not a terminal
    out, err = capsys.readouterr()
    assert "\r" not in err and "█" not in err  # no progress bar redraws
    lines = [line for line in err.splitlines() if line.startswith("train: step")]
    assert [line.split(":")[1].strip() for line in lines] == ["step 2/6", "step 4/6", "step 6/6"]
    assert all("loss" in line and "bits/char" in line and "tok/s" in line for line in lines)
    assert "parameters" in out and "fp32" in out

    sets = [arg for item in ["train.steps=2", "model.n_layers=1", "model.d_model=32", "train.precision=fp32"] for arg in ("--set", item)]
    assert main(["train", "--data", str(corpus_file), "--out", str(tmp_path / "quiet"), "--quiet", *sets]) == 0
    out, err = capsys.readouterr()
    header = [line for line in out.splitlines() if line.startswith("maskdiff: run folder")]
    assert len(header) == 1 and "parameters" in header[0] and "fp32" in header[0]
    assert "train: step" not in err

"""Runs survive interruption, corruption and bad steps with nothing lost."""

import errno
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import maskdiff.checkpoint as checkpoint_module
from maskdiff.checkpoint import CHECKPOINTS, latest_checkpoint, list_checkpoints, load_run, verify_checkpoint
from maskdiff.errors import MaskdiffError
from maskdiff.metrics import read_metrics
from maskdiff.objectives import MaskedDiffusion
from maskdiff.presets import get_preset
from maskdiff.training import train

SMALL = [
    "model.n_layers=1",
    "model.d_model=32",
    "data.seq_len=32",
    "train.batch_size=4",
    "train.log_every=1",
    "train.eval_every=0",
    "train.precision=fp32",
    "train.warmup_steps=2",
    "train.keep_checkpoints=10",
]

pytestmark = pytest.mark.slow  # every test here trains runs and damages or interrupts them


def config(corpus, *overrides):
    return get_preset("tiny").with_overrides([f"data.path={corpus}", *SMALL, *overrides])


def weights(run, step):
    return load_file(run / CHECKPOINTS / f"step-{step:06d}" / "model.safetensors")


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def run_with_two_checkpoints(corpus_file, tmp_path):
    run = tmp_path / "run"
    train(config(corpus_file, "train.steps=4", "train.checkpoint_every=2"), run, progress=False)
    return run


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_newest_checkpoint_is_detected_and_the_previous_one_used(run_with_two_checkpoints, damage, capsys):
    run = run_with_two_checkpoints
    file = run / CHECKPOINTS / "step-000004" / "model.safetensors"
    data = bytearray(file.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
        file.write_bytes(bytes(data))
    elif damage == "truncate":
        file.write_bytes(bytes(data[: len(data) // 2]))
    else:
        file.unlink()
    assert verify_checkpoint(file.parent) is not None
    loaded = load_run(run)
    assert loaded.step == 2
    assert "damaged" in capsys.readouterr().err
    with pytest.raises(MaskdiffError, match="damaged"):
        load_run(file.parent)  # asked for by name: refused, not replaced


def test_resume_after_corruption_redoes_the_lost_steps_exactly(corpus_file, run_with_two_checkpoints, tmp_path):
    run = run_with_two_checkpoints
    reference = weights(run, 4)
    (run / CHECKPOINTS / "step-000004" / "state.pt").write_bytes(b"garbage")
    train(config(corpus_file, "train.steps=4", "train.checkpoint_every=2"), run, resume=True, progress=False)
    assert same(weights(run, 4), reference)


def test_a_non_finite_step_is_skipped_and_counted(corpus_file, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = MaskedDiffusion.train_loss

    def sometimes_nan(self, x0, generator=None):
        calls["n"] += 1
        loss = original(self, x0, generator)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(MaskedDiffusion, "train_loss", sometimes_nan)
    result = train(config(corpus_file, "train.steps=6"), tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert [r["skipped_steps"] for r in rows if r["skipped_steps"]][-1] == "1"
    assert all(torch.isfinite(w).all() for w in weights(tmp_path / "run", 6).values())
    assert result.steps == 6 and all(r["train_loss"] != "nan" for r in rows)


def test_too_many_non_finite_steps_stop_the_run_and_keep_the_last_good_checkpoint(corpus_file, tmp_path, monkeypatch):
    cfg = config(corpus_file, "train.steps=20", "train.checkpoint_every=2", "train.max_bad_steps=3")
    calls = {"n": 0}
    original = MaskedDiffusion.train_loss

    def breaks_after_four(self, x0, generator=None):
        calls["n"] += 1
        loss = original(self, x0, generator)
        return loss * float("inf") if calls["n"] > 4 else loss

    monkeypatch.setattr(MaskedDiffusion, "train_loss", breaks_after_four)
    with pytest.raises(MaskdiffError, match="3 steps in a row had a non-finite"):
        train(cfg, tmp_path / "run", progress=False)
    # skipped steps never change the weights: every checkpoint holds the last good ones
    good = latest_checkpoint(tmp_path / "run", verify=True)
    assert good is not None and same(weights(tmp_path / "run", int(good.name[5:])), weights(tmp_path / "run", 4))
    assert all(torch.isfinite(w).all() for w in weights(tmp_path / "run", 4).values())


def test_a_failed_save_is_reported_and_the_previous_checkpoint_stays(corpus_file, tmp_path, monkeypatch):
    original = checkpoint_module.save_file
    count = {"n": 0}

    def disk_fills_up(tensors, path, *args, **kwargs):
        count["n"] += 1
        if count["n"] > 2:  # model + ema of the first checkpoint succeed
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(tensors, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "save_file", disk_fills_up)
    with pytest.raises(MaskdiffError, match="No space left on device.*previous checkpoint .*step-000002 is intact"):
        train(config(corpus_file, "train.steps=4", "train.checkpoint_every=2"), tmp_path / "run", progress=False)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-000002"]
    assert verify_checkpoint(tmp_path / "run" / CHECKPOINTS / "step-000002") is None
    assert not list((tmp_path / "run" / CHECKPOINTS).glob(".tmp-*"))


def launch(corpus, out, steps, *extra):
    args = [f"--set={o}" for o in SMALL + [f"train.steps={steps}", "train.checkpoint_every=5"]]
    # the same thread count as the in-process run it is compared with: the CLI's automatic choice
    # takes 1 thread on a busy machine, and another reduction order changes the last bits
    threads = f"--threads={torch.get_num_threads()}"
    cmd = [sys.executable, "-m", "maskdiff", "train", "--data", str(corpus), "--out", str(out), "--quiet", threads, *args, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(run, proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(list_checkpoints(run)) >= 2:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_an_interrupted_run_resumes_to_the_same_final_weights(corpus_file, tmp_path, how):
    steps = 150
    straight = tmp_path / "straight"
    train(config(corpus_file, f"train.steps={steps}", "train.checkpoint_every=5"), straight, progress=False)

    run = tmp_path / "interrupted"
    proc = launch(corpus_file, run, steps)
    wait_for_checkpoint(run, proc)
    proc.send_signal(getattr(signal, how))
    out, err = proc.communicate(timeout=60)
    if how == "SIGTERM":
        assert proc.returncode == 0, err
        assert "stopped by SIGTERM" in out and "--resume" in out and "Traceback" not in err
    else:
        assert proc.returncode == -signal.SIGKILL
    stopped_at = int(latest_checkpoint(run).name.split("-")[1])
    assert stopped_at < steps

    resumed = launch(corpus_file, run, steps, "--resume")
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert same(weights(run, steps), weights(straight, steps))


def test_resume_auto_starts_or_continues(corpus_file, tmp_path, capsys):
    from maskdiff.cli import main

    argv = ["train", "--data", str(corpus_file), "--out", str(tmp_path / "run"), "--quiet", "--resume", "auto", *[f"--set={o}" for o in SMALL]]
    assert main(argv + ["--set=train.steps=2"]) == 0
    assert main(argv + ["--set=train.steps=4"]) == 0
    assert "done: 4 steps" in capsys.readouterr().out
    assert [p.name for p in list_checkpoints(tmp_path / "run")][-1] == "step-000004"


def test_a_checkpoint_without_manifest_still_loads(run_with_two_checkpoints, capsys):
    """Checkpoints written before manifests existed are used as they are, without warnings."""
    (run_with_two_checkpoints / CHECKPOINTS / "step-000004" / "manifest.json").unlink()
    assert load_run(run_with_two_checkpoints).step == 4
    assert "damaged" not in capsys.readouterr().err

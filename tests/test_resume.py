"""What `--resume` means: the run's own config continues; only how long it runs and how it reports may change."""

import pytest
from conftest import lose_checkpoints_after

from maskdiff.checkpoint import CHECKPOINTS
from maskdiff.cli import main
from maskdiff.config import RESUMABLE_KEYS
from maskdiff.errors import MaskdiffError
from maskdiff.metrics import read_metrics
from maskdiff.presets import get_preset
from maskdiff.training import Outcome, ResumeMode, plan_resume, train

SMALL = [
    "model.n_layers=1",
    "model.d_model=32",
    "data.seq_len=32",
    "train.batch_size=4",
    "train.log_every=1",
    "train.eval_every=0",
    "train.precision=fp32",
    "train.warmup_steps=2",
    "train.lr=0.01",
    "train.ema_decay=0",
]


def config(corpus, *overrides):
    return get_preset("tiny").with_overrides([f"data.path={corpus}", *SMALL, *overrides])


def cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def finished(corpus_file, tmp_path):
    """A finished 4-step run of the tiny preset."""
    run = tmp_path / "run"
    train(config(corpus_file, "train.steps=4"), run, progress=False)
    return run


def test_the_runs_own_preset_is_accepted_and_another_is_refused_naming_both(finished, capsys):
    code, out, _ = cli(capsys, "train", "--out", str(finished), "--resume", "--preset", "tiny", "--quiet", "--set", "train.steps=5")
    assert code == 0 and "done: 5 steps" in out
    code, _, err = cli(capsys, "train", "--out", str(finished), "--resume", "auto", "--preset", "small", "--set", "train.steps=6")
    assert code == 1 and "'tiny'" in err and "'small'" in err and err.count("\n") == 1


def test_a_change_of_shape_or_data_is_refused_in_one_line_naming_each_key_and_both_values(finished, capsys):
    before = sorted(p.name for p in (finished / "checkpoints").iterdir())
    code, _, err = cli(capsys, "train", "--out", str(finished), "--resume", "--set", "model.d_model=64", "--set", "data.seq_len=16")
    assert code == 1 and err.count("\n") == 1 and "internal error" not in err
    assert "model.d_model (32 in the run, 64 asked)" in err and "data.seq_len (32 in the run, 16 asked)" in err
    assert "train.steps" in err  # the message lists what may change
    assert sorted(p.name for p in (finished / "checkpoints").iterdir()) == before
    with pytest.raises(MaskdiffError, match=r"train.batch_size \(4 in the run, 8 asked\)"):  # the library refuses too
        train(config(finished.parent / "corpus.txt", "train.steps=6", "train.batch_size=8"), finished, resume=True, progress=False)
    assert "train.steps" in RESUMABLE_KEYS and "model.d_model" not in RESUMABLE_KEYS


def test_resume_auto_on_a_finished_run_says_so_and_exits_0(finished, capsys):
    code, out, err = cli(capsys, "train", "--out", str(finished), "--resume", "auto", "--quiet", "--set", "train.steps=4")
    assert code == 0 and "already finished 4 of train.steps=4" in out and not err


def lrs(run):
    return {int(r["step"]): float(r["lr"]) for r in read_metrics(run / "metrics.csv") if r.get("lr")}


@pytest.mark.slow
def test_extending_train_steps_continues_the_learning_rate_without_a_jump(corpus_file, tmp_path):
    # a finished run: its learning rate has decayed to the minimum, and stays there
    run = tmp_path / "finished"
    train(config(corpus_file, "train.steps=6"), run, progress=False)
    train(config(corpus_file, "train.steps=9"), run, resume=True, progress=False)
    low = lrs(run)
    assert low[6] == pytest.approx(1e-3) and all(low[s] == pytest.approx(1e-3) for s in (7, 8, 9))
    # a run preempted in mid-decay and resumed with more steps: the rate continues from where it was
    # and decays smoothly to the minimum at the new end
    run = tmp_path / "preempted"
    train(config(corpus_file, "train.steps=12", "train.checkpoint_every=6"), run, progress=False)
    lose_checkpoints_after(run, 6)
    train(config(corpus_file, "train.steps=20", "train.checkpoint_every=6"), run, resume=True, progress=False)
    lr = lrs(run)
    steps = sorted(lr)
    assert steps == list(range(1, 21))
    assert all(lr[a] >= lr[b] - 1e-12 for a, b in zip(steps[2:], steps[3:]))  # no jump up after the warm-up
    assert lr[7] == pytest.approx(lr[6], rel=0.05) and lr[20] == pytest.approx(1e-3)


@pytest.mark.slow
def test_the_metrics_row_after_a_resume_averages_only_the_steps_taken_since(corpus_file, tmp_path):
    every = tmp_path / "every-step"
    train(config(corpus_file, "train.steps=8"), every, progress=False)
    per_step = {int(r["step"]): float(r["train_loss"]) for r in read_metrics(every / "metrics.csv") if r.get("train_loss")}
    run = tmp_path / "resumed"
    train(config(corpus_file, "train.steps=8", "train.log_every=4", "train.checkpoint_every=6"), run, progress=False)
    lose_checkpoints_after(run, 6)
    train(config(corpus_file, "train.steps=8", "train.log_every=4", "train.checkpoint_every=6"), run, resume=True, progress=False)
    rows = {int(r["step"]): float(r["train_loss"]) for r in read_metrics(run / "metrics.csv") if r.get("train_loss")}
    assert sorted(rows) == [4, 8]
    assert rows[8] == pytest.approx((per_step[7] + per_step[8]) / 2, rel=1e-5)


# ------------------------------------------------------------------ the resume plan, computed once
def test_an_empty_folder_is_a_new_run_unless_asked_to_continue(corpus_file, tmp_path):
    cfg = config(corpus_file, "train.steps=4")
    for mode in (ResumeMode.NO, ResumeMode.AUTO):
        plan = plan_resume(tmp_path / "none", mode, cfg)
        assert plan.outcome is Outcome.NEW and plan.config == cfg and plan.checkpoint is None and plan.step == 0
    assert plan_resume(tmp_path / "none", ResumeMode.AUTO, lambda saved: saved).config is None  # a new run's config is the caller's
    plan = plan_resume(tmp_path / "none", ResumeMode.YES, cfg)
    assert plan.outcome is Outcome.REFUSED and "holds no checkpoint and no config.json" in plan.reason
    with pytest.raises(MaskdiffError, match="holds no checkpoint"):
        plan.accepted()
    assert not (tmp_path / "none").exists()  # planning writes nothing


def test_a_finished_run_is_refused_as_new_has_nothing_to_do_in_auto_and_continues_with_more_steps(finished, corpus_file):
    assert "already holds a run" in plan_resume(finished, ResumeMode.NO, config(corpus_file, "train.steps=4")).reason
    refused = plan_resume(finished, ResumeMode.YES, config(corpus_file, "train.steps=4"))
    assert refused.outcome is Outcome.REFUSED and refused.reason == "the run already finished 4 of train.steps=4; raise train.steps to go on"
    done = plan_resume(finished, ResumeMode.AUTO, config(corpus_file, "train.steps=4"))
    assert done.outcome is Outcome.FINISHED and done.step == 4 and done.reason.endswith("already finished 4 of train.steps=4 steps; nothing to do")
    for mode in (ResumeMode.YES, ResumeMode.AUTO):
        more = plan_resume(finished, mode, config(corpus_file, "train.steps=6"))
        assert more.outcome is Outcome.CONTINUE and more.checkpoint is not None and more.checkpoint.name == "step-000004"
        assert more.saved is not None and more.saved.train.steps == 4 and more.config == config(corpus_file, "train.steps=6")
    # the command line's way: changes to the run's own config
    more = plan_resume(finished, ResumeMode.YES, lambda saved: saved.with_overrides(["train.steps=5"]), preset="tiny")
    assert more.outcome is Outcome.CONTINUE and more.config is not None and more.config.train.steps == 5


def test_a_change_a_resume_may_not_make_or_another_preset_is_refused(finished, corpus_file):
    plan = plan_resume(finished, ResumeMode.AUTO, config(corpus_file, "train.steps=6", "model.d_model=64"))
    assert plan.outcome is Outcome.REFUSED and "model.d_model (32 in the run, 64 asked)" in plan.reason
    plan = plan_resume(finished, ResumeMode.YES, lambda saved: saved, preset="small")
    assert plan.outcome is Outcome.REFUSED and "preset 'tiny', not 'small'" in plan.reason


def test_a_run_stopped_before_its_first_checkpoint_is_refused_with_what_to_do(corpus_file, tmp_path):
    run = tmp_path / "early"
    run.mkdir()
    config(corpus_file).save(run / "config.json")
    plan = plan_resume(run, ResumeMode.AUTO, config(corpus_file))
    assert plan.outcome is Outcome.REFUSED and "stopped before its first checkpoint; remove the folder" in plan.reason
    plan = plan_resume(run, ResumeMode.YES, config(corpus_file))
    assert plan.outcome is Outcome.REFUSED and plan.reason == f"cannot resume: {str(run)!r} holds no checkpoint"
    assert "already holds a run" in plan_resume(run, ResumeMode.NO, config(corpus_file)).reason


def test_a_damaged_newest_checkpoint_is_skipped_and_all_damaged_is_refused(corpus_file, tmp_path):
    run = tmp_path / "run"
    train(config(corpus_file, "train.steps=4", "train.checkpoint_every=2"), run, progress=False)
    (run / CHECKPOINTS / "step-000004" / "model.safetensors").write_bytes(b"damaged")
    plan = plan_resume(run, ResumeMode.AUTO, config(corpus_file, "train.steps=4", "train.checkpoint_every=2"))
    assert plan.outcome is Outcome.CONTINUE and plan.checkpoint == run / CHECKPOINTS / "step-000002" and plan.step == 2
    (run / CHECKPOINTS / "step-000002" / "model.safetensors").write_bytes(b"damaged")
    plan = plan_resume(run, ResumeMode.YES, config(corpus_file, "train.steps=4", "train.checkpoint_every=2"))
    assert plan.outcome is Outcome.REFUSED and "every checkpoint" in plan.reason and "is damaged" in plan.reason


def test_train_takes_a_plan_only_for_its_own_folder_and_config(finished, corpus_file, tmp_path):
    plan = plan_resume(finished, ResumeMode.YES, config(corpus_file, "train.steps=5"))
    with pytest.raises(ValueError, match="resume plan"):
        train(config(corpus_file, "train.steps=6"), finished, resume=plan, progress=False)
    with pytest.raises(ValueError, match="resume plan"):
        train(config(corpus_file, "train.steps=5"), tmp_path / "other", resume=plan, progress=False)
    with pytest.raises(MaskdiffError, match="nothing to do"):  # a finished plan trains nothing
        train(config(corpus_file, "train.steps=4"), finished, resume=plan_resume(finished, ResumeMode.AUTO, config(corpus_file, "train.steps=4")))
    result = train(config(corpus_file, "train.steps=5"), finished, resume=plan, progress=False)
    assert result.steps == 5 and result.checkpoint.name == "step-000005"

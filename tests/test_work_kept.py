"""Work is never thrown away: outputs are checked before the work starts, and a late failure keeps the results."""

from pathlib import Path

import pytest
from tiny_run import train_tiny

from maskdiff.cli import main
from maskdiff.errors import MaskdiffError
from maskdiff.presets import get_preset


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from conftest import make_corpus

    folder = tmp_path_factory.mktemp("kept")
    corpus = folder / "corpus.txt"
    corpus.write_text(make_corpus(), encoding="utf-8")
    return train_tiny(folder / "run", corpus)


def cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("target", ["folder", "/proc/maskdiff-samples.txt", "missing-parent-is-fine/x.txt"])
def test_an_unwritable_output_is_refused_before_sampling(run_dir, tmp_path, capsys, monkeypatch, target):
    calls = []
    monkeypatch.setattr("maskdiff.generation.text.run_sampler", lambda *a, **k: calls.append(1) or pytest.fail("sampled"))
    path = tmp_path if target == "folder" else Path(target) if target.startswith("/") else tmp_path / target
    if target.startswith("missing"):
        with pytest.raises(pytest.fail.Exception, match="sampled"):  # a creatable path passes the check
            main(["sample", "--checkpoint", str(run_dir), "--output", str(path), "--steps", "2"])
        assert not path.exists()  # and the check leaves nothing behind
        return
    code, out, err = cli(capsys, "sample", "--checkpoint", str(run_dir), "--output", str(path), "--steps", "2")
    assert code == 1 and not calls and not out and err.count("\n") == 1
    assert ("is a folder" if target == "folder" else "cannot write") in err


def test_a_late_write_failure_prints_the_samples_first(run_dir, tmp_path, capsys, monkeypatch):
    target = tmp_path / "samples.txt"
    real_write = Path.write_text

    def failing_write(self, *args, **kwargs):
        if self == target:
            raise OSError(28, "No space left on device")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", failing_write)
    code, out, err = cli(
        capsys, "sample", "--checkpoint", str(run_dir), "--output", str(target), "--num-samples", "2", "--length", "12", "--steps", "3", "--quiet"
    )
    assert code == 1 and "No space left on device" in err and "printed above" in err
    assert len(out.strip().split("\n" + "-" * 40 + "\n")) == 2  # both samples reached stdout


def test_a_bad_request_fails_before_any_progress_bar(run_dir, capsys):
    code, _, err = cli(capsys, "sample", "--checkpoint", str(run_dir), "--length", "32", "--block-size", "4", "--steps", "2")
    assert code == 1 and err.count("\n") == 1 and "need at least 8 steps" in err and "step" not in err.split("error:")[0]


def test_every_config_problem_is_reported_at_once():
    with pytest.raises(MaskdiffError) as caught:
        get_preset("tiny").with_overrides(["train.nope=1", "model.nada=2", "train.steps=ten", "train.lr=-1", "train.batch_size=0"])
    message = str(caught.value)
    for part in ("train.nope", "model.nada", "train.steps must be int", "train.batch_size must be >= 1"):
        assert part in message, part

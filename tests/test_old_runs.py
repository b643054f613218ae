"""Run folders and config files written by the previous release still load, sample, score and
evaluate as they did (tests/fixtures/release_0, with the figures that release gave)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import maskdiff
from maskdiff import config
from maskdiff.config import RunConfig
from maskdiff.evaluation.evaluate import evaluate_checkpoint
from maskdiff.models import build_model
from maskdiff.objectives import AutoregressiveConfig, GenMD4Config, MD4Config

RELEASE_0 = Path(__file__).parent / "fixtures" / "release_0"
EXPECTED = json.loads((RELEASE_0 / "expected.json").read_text())


@pytest.fixture
def old_runs(tmp_path, monkeypatch):
    """A copy of the fixture (runs read their corpus by its relative path, data.path=corpus.txt)."""
    folder = tmp_path / "release_0"
    shutil.copytree(RELEASE_0, folder)
    monkeypatch.chdir(folder)
    return folder


@pytest.mark.parametrize("name", sorted(p.name for p in (RELEASE_0 / "configs").glob("*.json")))
def test_every_old_config_file_loads_and_builds(name):
    raw = json.loads((RELEASE_0 / "configs" / name).read_text())
    cfg = RunConfig.load(RELEASE_0 / "configs" / name)
    old = raw["diffusion"]
    assert cfg.objective.name == old["objective"]
    expected_type = {"md4": MD4Config, "genmd4": GenMD4Config, "ar": AutoregressiveConfig}[old["objective"]]
    assert type(cfg.objective) is expected_type
    # every setting the objective used is kept; the keys it ignored are gone
    for key in cfg.objective.docs():
        if key != "name":
            assert getattr(cfg.objective, key) == old[key]
    assert vars(cfg.model) == raw["model"]
    assert vars(cfg.data) == raw["data"] and {key: vars(cfg.train)[key] for key in raw["train"]} == raw["train"]
    with torch.device("meta"):
        build_model(cfg, 50)
    assert RunConfig.from_dict(cfg.to_dict()) == cfg  # and it is saved in today's form


@pytest.mark.parametrize("run_name", ["tiny", "ar-tiny"])
def test_an_old_run_folder_samples_scores_and_evaluates_as_before(old_runs, run_name):
    expected = EXPECTED[run_name]
    run = maskdiff.load(run_name, device="cpu", precision="fp32")
    assert run.sample(2, length=16, steps=8, seed=[1, 2]) == expected["samples"]
    score = run.score("the king and the queen", mc_samples=4, seed=0)
    assert vars(score) == pytest.approx(expected["score"])
    result, _ = evaluate_checkpoint(run_name, split="test", mc_samples=expected["eval_mc_samples"], batch_size=8, device="cpu", precision="fp32")
    got = result.to_dict()
    assert got == pytest.approx(expected["eval"])
    assert json.loads(json.dumps(got))["estimator"] == expected["eval"]["estimator"]  # the JSON shape is unchanged


def test_an_old_run_resumes_and_its_config_is_rewritten_in_todays_form(old_runs):
    from maskdiff.training import train

    cfg = RunConfig.load(old_runs / "ar-tiny" / "config.json").with_overrides(["train.steps=3"])
    result = train(cfg, old_runs / "ar-tiny", resume=True, progress=False)
    assert result.steps == 3
    saved = json.loads((old_runs / "ar-tiny" / "config.json").read_text())
    assert "diffusion" not in saved and saved["objective"] == {"name": "ar"}


def test_old_override_spellings_work_for_one_release_with_a_note(capfd, monkeypatch):
    monkeypatch.setattr(config, "_NOTED", set())  # each old spelling is noted once per process: start afresh
    cfg = RunConfig().with_overrides(["diffusion.objective=genmd4", "diffusion.power_init=2", "diffusion.schedule=cosine"])
    assert cfg.objective == GenMD4Config(power_init=2.0)  # the schedule was ignored by GenMD4 then, and still is
    cfg = RunConfig().with_overrides(["diffusion.schedule=cosine"])
    assert cfg.objective == MD4Config(schedule="cosine")
    notes = capfd.readouterr().err.splitlines()
    assert notes and all(line.startswith("maskdiff: note: diffusion.") and "objective." in line for line in notes)
    assert len(notes) == len(set(notes))  # each old spelling is noted once
    # problems are named as they were spelled
    with pytest.raises(maskdiff.MaskdiffError, match="diffusion.objective=ar needs model.causal=true"):
        RunConfig().with_overrides(["diffusion.objective=ar"])
    with pytest.raises(maskdiff.MaskdiffError, match="objective.name=ar needs model.causal=true"):
        RunConfig().with_overrides(["objective.name=ar"])

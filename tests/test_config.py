"""Typed configs: presets, overrides, validation and clear errors."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maskdiff.config import RunConfig, TrainConfig
from maskdiff.errors import MaskdiffError
from maskdiff.presets import PRESETS, get_preset


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_are_valid_and_round_trip_through_json(name, tmp_path):
    cfg = get_preset(name)
    cfg.save(tmp_path / "config.json")
    assert RunConfig.load(tmp_path / "config.json") == cfg


def test_overrides_are_parsed_by_type():
    cfg = get_preset("tiny").with_overrides(
        ["train.steps=200", "train.lr=3e-4", "model.time_conditioning=true", "objective.schedule=cosine", "data.path=x.txt"]
    )
    assert cfg.train.steps == 200 and cfg.train.lr == 3e-4
    assert cfg.model.time_conditioning is True and cfg.objective.schedule == "cosine" and cfg.data.path == "x.txt"


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.stepz=5", "unknown config key 'train.stepz'; did you mean 'train.steps'"),
        ("train.steps=1.5", "train.steps must be int"),
        ("train.steps=abc", "train.steps must be int"),
        ("model.time_conditioning=maybe", "must be bool"),
        ("trainsteps", "not of the form"),
        ("train.steps=0", "train.steps must be >= 1"),
        ("diffusion.schedule=nope", "unknown schedule"),
        ("model.d_model=100", "multiple of 2 \\* model.n_heads"),
    ],
)
def test_bad_overrides_are_clear_errors(override, message):
    with pytest.raises(MaskdiffError, match=message):
        get_preset("tiny").with_overrides([override])


def test_all_problems_are_reported_at_once():
    raw = get_preset("tiny").to_dict()
    raw["train"]["lr"] = -1.0
    raw["train"]["batch_size"] = 0
    raw["model"]["dropout"] = 2.0
    with pytest.raises(MaskdiffError) as err:
        RunConfig.from_dict(raw)
    text = str(err.value)
    assert "train.lr" in text and "train.batch_size" in text and "model.dropout" in text


def test_unknown_preset():
    with pytest.raises(MaskdiffError, match="unknown preset 'huge'"):
        get_preset("huge")


def test_every_field_has_a_doc():
    from maskdiff.config import SECTIONS
    from maskdiff.nets import ARCHITECTURES

    for cls in [*SECTIONS.values(), *(arch.config for _, arch in ARCHITECTURES.items())]:
        assert all(doc for doc in cls.docs().values()), cls


@settings(max_examples=100, deadline=None)
@given(steps=st.integers(-5, 10**7), lr=st.floats(allow_nan=True, allow_infinity=True))
def test_config_parsing_never_crashes_with_anything_but_a_clear_error(steps, lr):
    try:
        cfg = get_preset("tiny").with_overrides([f"train.steps={steps}", f"train.lr={lr}"])
    except MaskdiffError:
        assert steps < 1 or not 0 < lr < float("inf")
    else:
        assert cfg.train.steps == steps and cfg.train.lr == lr and isinstance(cfg.train, TrainConfig)

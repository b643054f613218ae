"""`maskdiff.load`: a trained run from Python, text in and text out."""

import pytest
import torch
from tiny_run import train_tiny

import maskdiff
from maskdiff.errors import MaskdiffError


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from conftest import make_corpus

    folder = tmp_path_factory.mktemp("load")
    corpus = folder / "corpus.txt"
    corpus.write_text(make_corpus(), encoding="utf-8")
    return train_tiny(folder / "run", corpus)


def test_load_sample_infill_and_score_round_trip(run_dir):
    run = maskdiff.load(run_dir)
    assert run.step == 6 and "step=6" in repr(run)
    texts = run.sample(2, length=24, steps=8, prompt="The ", seed=1)
    assert len(texts) == 2 and all(t.startswith("The ") and len(t) == 24 for t in texts)
    assert run.sample(2, length=24, steps=8, prompt="The ", seed=1) == texts  # the seed fixes the samples
    filled = run.infill("Good [[5]] lord", n=3, steps=4)
    assert all(t.startswith("Good ") and t.endswith(" lord") and len(t) == len("Good ") + 5 + len(" lord") for t in filled)
    score = run.score("The king is dead, long live the king.", mc_samples=8)
    assert score.estimator == "nelbo" and score.num_tokens == 37
    assert 0 < score.bits_per_token < 10 and 0 < score.bits_per_token_stderr < score.bits_per_token
    assert run.score("The king is dead, long live the king.", mc_samples=8) == score  # deterministic given the seed


def test_tensors_for_those_who_want_them(run_dir):
    run = maskdiff.load(run_dir)
    given = torch.full((2, 10), run.mask_id)
    given[:, :3] = run.encode("The")
    ids = run.model.sample(2, 10, steps=5, given=given, generator=torch.Generator().manual_seed(0))
    assert ids.shape == (2, 10) and (ids[:, :3] == given[:, :3]).all() and (ids < run.mask_id).all()
    assert run.decode(ids[0]).startswith("The")


def test_bad_input_is_a_clear_error(run_dir, tmp_path):
    run = maskdiff.load(run_dir)
    with pytest.raises(MaskdiffError, match="nothing to score"):
        run.score("")
    with pytest.raises(MaskdiffError, match="no \\[\\[N\\]\\] slot"):
        run.infill("no slot here")
    with pytest.raises(MaskdiffError, match="does not exist"):
        maskdiff.load(tmp_path / "nowhere")


def test_the_public_modules_are_reachable_after_import_maskdiff():
    for name in ("sampling", "objectives", "nets", "data", "evaluation", "generation", "training", "schedules"):
        assert hasattr(maskdiff, name), name
    assert maskdiff.sampling.SamplerOptions and maskdiff.load and maskdiff.Run

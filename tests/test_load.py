"""`maskdiff.load`: a trained run from Python, text in and text out."""

import numpy as np
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


def test_a_length_beyond_the_trained_one_warns_and_one_that_cannot_fit_is_refused_at_once(run_dir, capsys):
    import time

    from maskdiff.cli import main

    run = maskdiff.load(run_dir)
    assert len(run.sample(1, length=40, steps=4)[0]) == 40
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "trained on sequences of 32 tokens" in err and "40 tokens" in err
    run.sample(1, length=32, steps=4)
    assert capsys.readouterr().err == ""  # within the trained length: no word
    start = time.perf_counter()
    with pytest.raises(MaskdiffError, match=r"GiB .* available \(the model was trained on 32 tokens\)"):
        run.sample(1, length=10**9, steps=4)
    assert time.perf_counter() - start < 5  # refused before anything is allocated or sampled
    code = main(["sample", "--checkpoint", str(run_dir), "--length", str(10**9), "--quiet"])
    out, err = capsys.readouterr()
    assert code == 1 and out == "" and err.count("\n") == 1 and "need at least" in err  # one line: the refusal


def test_an_image_run_samples_from_python(tmp_path):
    from test_images import write_blob_dataset

    from maskdiff.generation.images import generate_images
    from maskdiff.training import train

    write_blob_dataset(tmp_path)
    cfg = maskdiff.presets.get_preset("image-tiny").with_overrides(
        [f"data.path={tmp_path}", "data.image_size=8", "data.seq_len=64", "model.num_classes=2", "train.steps=2", "train.batch_size=4"]
        + ["train.eval_every=0"]
    )
    train(cfg, tmp_path / "run", progress=False)
    run = maskdiff.load(tmp_path / "run", precision="fp32")
    images = run.sample(3, steps=6, seed=2, label=1, cfg=1.0)
    assert isinstance(images, torch.Tensor) and images.shape == (3, 8, 8, 1) and images.dtype == torch.uint8
    expected = generate_images(tmp_path / "run", 3, 6, seed=2, label=1, cfg=1.0, precision="fp32", output=tmp_path / "grid.png")
    assert torch.equal(images, torch.from_numpy(expected.images))
    pictures = run.sample(3, steps=6, seed=2, label=1, cfg=1.0, pil=True)
    assert [p.size for p in pictures] == [(8, 8)] * 3 and torch.equal(torch.from_numpy(np.array(pictures[0])), images[0, ..., 0])
    with pytest.raises(MaskdiffError, match="label 5 is out of range"):
        run.sample(1, steps=2, label=5)
    with pytest.raises(MaskdiffError, match="for text runs"):
        run.sample(1, length=10)

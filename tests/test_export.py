"""`maskdiff export hf` then `maskdiff import auto` gives back the same model: identical logits for
an MDM, a GenMD4 and an ARM trained a few steps; big exports are sharded with an index."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_corpus
from tiny_run import train_tiny

import maskdiff
from maskdiff.cli import main
from maskdiff.errors import MaskdiffError
from maskdiff.interop.export import export_hf
from maskdiff.interop.importer import import_checkpoint


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(make_corpus(8_000))
    return path


@pytest.mark.parametrize("preset", ["tiny", "genmd4-tiny", "ar-tiny"])
def test_export_then_import_gives_identical_logits(tmp_path, corpus, preset):
    run_dir = train_tiny(tmp_path / "run", corpus, steps=4, preset=preset)
    assert main(["export", "hf", str(run_dir), "--out", str(tmp_path / "hf")]) == 0
    files = {p.name for p in (tmp_path / "hf").iterdir()}
    assert {"config.json", "model.safetensors", "maskdiff_tokenizer.json", "README.md"} <= files
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "maskdiff" and config["maskdiff"]["preset"] == preset
    card = (tmp_path / "hf" / "README.md").read_text()
    assert preset in card and "4 steps" in card
    assert main(["import", "auto", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    before, after = maskdiff.load(run_dir, precision="fp32"), maskdiff.load(tmp_path / "back", precision="fp32")
    ids = torch.randint(0, before.mask_id + 1, (3, 32), generator=torch.Generator().manual_seed(0))
    assert torch.equal(before.logits(ids), after.logits(ids))
    assert before.config.to_dict() == after.config.to_dict()
    assert before.score("To be or not", seed=1).nats == after.score("To be or not", seed=1).nats  # GenMD4's exponents came too


def test_a_large_export_is_sharded_with_an_index_and_reads_back(tmp_path, corpus):
    run_dir = train_tiny(tmp_path / "run", corpus, steps=2)
    export_hf(run_dir, tmp_path / "hf", shard_bytes=20_000)  # a tiny limit stands in for 5 GB
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((tmp_path / "hf" / s).is_file() for s in shards) and not (tmp_path / "hf" / "model.safetensors").exists()
    import_checkpoint("auto", tmp_path / "hf", tmp_path / "back")
    ids = torch.arange(20)[None] % 10
    assert torch.equal(maskdiff.load(run_dir).logits(ids), maskdiff.load(tmp_path / "back").logits(ids))


def test_export_refuses_an_existing_folder_and_leaves_it_alone(tmp_path, corpus):
    run_dir = train_tiny(tmp_path / "run", corpus, steps=2)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "mine.txt").write_text("keep")
    with pytest.raises(MaskdiffError, match="already exists"):
        export_hf(run_dir, tmp_path / "hf")
    assert [p.name for p in (tmp_path / "hf").iterdir()] == ["mine.txt"]

"""`maskdiff prepare` and the tokens data format: tokenizers, shards, the validation split, checks, and a run on them."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from conftest import make_corpus

import maskdiff
from maskdiff import assets
from maskdiff.bpe import EOT, byte_symbols, gpt2, resolve_tokenizer
from maskdiff.cli import main
from maskdiff.data.prepare import prepare
from maskdiff.data.shards import META, RandomWindows, read_prepared
from maskdiff.errors import MaskdiffError
from maskdiff.presets import PRESETS, TOKEN_PRESETS, get_preset, parameter_count

needs_gpt2 = pytest.mark.skipif(not assets.files("gpt2"), reason="GPT-2 ranks not fetched (python -m maskdiff.assets fetch gpt2)")

# documents with what breaks careless tokenizers: non-ASCII, emoji, runs of spaces and newlines, CRLF, tabs, digits
ODD = "naïve café — ½ 日本語 😀😀 \r\n\r\n   x  y\t\tz 1234567 ...!!! 'S 'll it's\n\n\n  trailing spaces   "


def write_corpus(folder, documents: int = 12, chars: int = 3000):
    """A folder of text files and a JSONL file: ``documents`` documents in all, in the order prepare reads them."""
    folder.mkdir()
    texts = [make_corpus(chars, seed=i) + (ODD if i % 3 == 0 else "") for i in range(documents)]
    half = documents // 2
    for i, text in enumerate(texts[:half]):
        (folder / f"doc{i:02d}.txt").write_text(text, encoding="utf-8")
    rows = [json.dumps({"text": text, "id": i}, ensure_ascii=False) for i, text in enumerate(texts[half:])]
    (folder / "rest.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return texts


def documents_of(tokens: np.ndarray, tokenizer) -> list[str]:
    """The documents of a packed split: decode the pieces between end-of-text tokens."""
    ends = np.flatnonzero(tokens == tokenizer.eot_id)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [tokenizer.decode(tokens[s:e].tolist()) for s, e in zip(starts, ends)]


def read_split(out, split: str) -> np.ndarray:
    meta = json.loads((out / META).read_text())
    return np.concatenate([np.fromfile(out / s["file"], dtype=np.dtype(meta["dtype"])) for s in meta["shards"][split]])


def round_trip(tmp_path, texts, **options):
    out = tmp_path / "prepared"
    prepared = prepare([str(tmp_path / "corpus")], out, **options)
    tokenizer, _ = read_prepared(out)
    train, valid = documents_of(read_split(out, "train"), tokenizer), documents_of(read_split(out, "valid"), tokenizer)
    assert sorted(train + valid) == sorted(texts)  # every document back, exactly
    assert len(valid) == prepared.meta["documents"]["valid"] == round(0.05 * len(texts)) or len(valid) == 1
    return prepared, tokenizer


# ---------------------------------------------------------------- tokenizers
@needs_gpt2
def test_gpt2_from_the_offline_ranks_is_gpt2():
    tokenizer = gpt2()
    assert tokenizer.vocab_size == 50257 and tokenizer.eot_id == 50256
    assert tokenizer.encode("Hello world").tolist() == [15496, 995]  # GPT-2's well-known ids
    assert tokenizer.encode(" Hello, world!" + EOT).tolist() == [18435, 11, 995, 0, 50256]
    assert tokenizer.decode(tokenizer.encode(ODD)) == ODD
    assert len(set(byte_symbols())) == 256


@needs_gpt2
def test_gpt2_encodes_exactly_as_tiktoken_with_the_same_ranks():
    tiktoken_load = pytest.importorskip("tiktoken.load")
    tiktoken = pytest.importorskip("tiktoken")
    ranks_file = next(p for p in assets.files("gpt2") if p.name == "gpt2.tiktoken")
    pattern = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""  # GPT-2's
    reference = tiktoken.Encoding("gpt2", pat_str=pattern, mergeable_ranks=tiktoken_load.load_tiktoken_bpe(str(ranks_file)), special_tokens={})
    text = make_corpus(60_000, seed=3) + ODD
    assert gpt2().encode(text).tolist() == reference.encode_ordinary(text)


def test_an_unavailable_tokenizer_says_how_to_provide_it_locally(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKDIFF_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(assets.importlib.metadata, "files", lambda dist: None)  # no installed package either
    with pytest.raises(MaskdiffError, match=re.escape("python -m maskdiff.assets fetch gpt2")):
        resolve_tokenizer("gpt2")
    with pytest.raises(MaskdiffError, match="save_pretrained") as error:
        resolve_tokenizer("meta-llama/Llama-2-7b-hf")
    assert "\n" not in str(error.value)


def test_a_tokenizers_file_and_folder_work_and_need_an_end_of_text(tmp_path):
    write_corpus(tmp_path / "corpus", documents=4, chars=2000)
    prepare([str(tmp_path / "corpus")], tmp_path / "p", train_vocab=300)
    source = tmp_path / "p" / "tokenizer.json"  # a tokenizers JSON file
    assert resolve_tokenizer(str(source)).eot == EOT and resolve_tokenizer(str(tmp_path / "p")).vocab_size == 300
    raw = json.loads(source.read_text())
    raw["added_tokens"] = []  # no end of text any more
    del raw["model"]["vocab"][EOT]
    (tmp_path / "plain.json").write_text(json.dumps(raw))
    with pytest.raises(MaskdiffError, match="--eot TOKEN"):
        resolve_tokenizer(str(tmp_path / "plain.json"))
    assert resolve_tokenizer(str(tmp_path / "plain.json"), eot="Ġthe").eot == "Ġthe"


# ---------------------------------------------------------------- prepare
@needs_gpt2
def test_prepare_round_trips_text_with_gpt2(tmp_path):
    texts = write_corpus(tmp_path / "corpus")
    prepared, tokenizer = round_trip(tmp_path, texts, tokenizer="gpt2", shard_tokens=1500)
    meta = prepared.meta
    assert meta["dtype"] == "uint16" and meta["tokenizer"]["name"] == "gpt2" and meta["tokenizer"]["eot_id"] == 50256
    assert len(meta["shards"]["train"]) > 1 and all(s["tokens"] <= 1500 for s in meta["shards"]["train"])
    assert sum(s["tokens"] for s in meta["shards"]["train"]) == meta["tokens"]["train"]
    assert meta["documents"]["train"] + meta["documents"]["valid"] == len(texts)


def test_prepare_round_trips_text_with_a_trained_bpe(tmp_path):
    texts = write_corpus(tmp_path / "corpus")
    prepared, tokenizer = round_trip(tmp_path, texts, train_vocab=400)
    assert tokenizer.vocab_size == 400 and prepared.meta["tokenizer"]["name"] == "bpe-400"


def test_uint32_shards_for_a_vocabulary_beyond_uint16(tmp_path):
    texts = write_corpus(tmp_path / "corpus", documents=4, chars=500)
    from maskdiff.data import shards

    assert shards.token_dtype(65_536) == np.uint16 and shards.token_dtype(65_537) == np.uint32
    original = shards.token_dtype
    try:
        shards.token_dtype = lambda vocab_size: np.dtype("<u4")  # as for a vocabulary of more than 65,536 tokens
        import maskdiff.data.prepare as prepare_module

        prepare_module.token_dtype = shards.token_dtype
        _, tokenizer = round_trip(tmp_path, texts, train_vocab=300)
    finally:
        shards.token_dtype = prepare_module.token_dtype = original
    assert json.loads((tmp_path / "prepared" / META).read_text())["dtype"] == "uint32"


def test_two_prepares_give_the_same_validation_split_and_another_seed_another(tmp_path):
    write_corpus(tmp_path / "corpus", documents=40, chars=400)
    metas = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        metas.append(prepare([str(tmp_path / "corpus")], tmp_path / name, train_vocab=300, seed=seed, valid_fraction=0.1).meta)
    assert (tmp_path / "a" / "valid-00000.bin").read_bytes() == (tmp_path / "b" / "valid-00000.bin").read_bytes()
    assert metas[0]["shards"] == metas[1]["shards"] and metas[0]["documents"]["valid"] == 4
    assert metas[2]["shards"]["valid"][0]["sha256"] != metas[0]["shards"]["valid"][0]["sha256"]
    capped = prepare([str(tmp_path / "corpus")], tmp_path / "d", train_vocab=300, valid_fraction=0.1, valid_tokens=50).meta
    assert capped["tokens"]["valid"] == 50


def test_one_document_is_split_by_tokens(tmp_path):
    (tmp_path / "one.txt").write_text(make_corpus(5000), encoding="utf-8")
    meta = prepare([str(tmp_path / "one.txt")], tmp_path / "out", train_vocab=300, valid_fraction=0.1).meta
    total = meta["tokens"]["train"] + meta["tokens"]["valid"]
    assert meta["tokens"]["valid"] == round(0.1 * total) and meta["documents"] == {"train": 1, "valid": 1}


def test_prepare_refuses_a_non_empty_folder_and_never_leaves_a_half_written_one(tmp_path, capsys):
    write_corpus(tmp_path / "corpus", documents=4, chars=500)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    base = ["prepare", "--train-bpe", "300", "--data", str(tmp_path / "corpus"), "--quiet"]
    assert main([*base, "--out", str(out)]) == 1 and "not empty; pass --overwrite" in capsys.readouterr().err
    assert main([*base, "--out", str(out), "--overwrite"]) == 1 and "did not write" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"
    fresh = tmp_path / "fresh"
    assert main([*base, "--out", str(fresh)]) == 0 and "next: maskdiff train --preset bpe-tiny" in capsys.readouterr().out
    first = (fresh / META).read_text()
    assert main([*base, "--out", str(fresh), "--overwrite", "--seed", "5"]) == 0 and (fresh / META).read_text() != first
    # a bad document fails the prepare: nothing appears, and an earlier prepared folder stays as it was
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    before = (fresh / META).read_text()
    code = main(["prepare", "--train-bpe", "300", "--data", str(tmp_path / "bad.jsonl"), "--out", str(fresh), "--overwrite", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "bad.jsonl:2" in err and "'text'" in err and len(err.strip().splitlines()) == 1
    assert (fresh / META).read_text() == before
    assert main(["prepare", "--train-bpe", "300", "--data", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "never"), "--quiet"]) == 1
    assert not (tmp_path / "never").exists() and not list(tmp_path.glob(".never*"))


def test_datasets_and_hub_names(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    texts = [make_corpus(400, seed=i) for i in range(10)]
    datasets.Dataset.from_dict({"body": texts, "n": list(range(10))}).save_to_disk(str(tmp_path / "saved"))
    out = tmp_path / "out"
    meta = prepare([str(tmp_path / "saved")], out, train_vocab=300, text_field="body").meta
    tokenizer, _ = read_prepared(out)
    assert sorted(documents_of(read_split(out, "train"), tokenizer) + documents_of(read_split(out, "valid"), tokenizer)) == sorted(texts)
    assert meta["sources"] == [str(tmp_path / "saved")]
    with pytest.raises(MaskdiffError, match="no column 'text'; it has body, n"):
        prepare([str(tmp_path / "saved")], tmp_path / "x", train_vocab=300)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MaskdiffError, match=r"hub is off.*save_to_disk"):
        prepare(["someone/web-text"], tmp_path / "y", train_vocab=300)
    with pytest.raises(MaskdiffError, match="does not exist"):
        prepare(["missing/file.txt"], tmp_path / "z", train_vocab=300)


# ---------------------------------------------------------------- reading, training, and a run's commands
@pytest.fixture
def prepared(tmp_path):
    write_corpus(tmp_path / "corpus", documents=10, chars=3000)
    prepare([str(tmp_path / "corpus")], tmp_path / "data", train_vocab=300, shard_tokens=2000)
    return tmp_path / "data"


def test_random_windows_lie_in_one_shard_and_resume(prepared):
    _, splits = read_prepared(prepared)
    assert len(splits.shards) > 2
    windows = RandomWindows(splits.shards, 16, 64, seed=0, random_length=0.0, eot_id=splits.eot_id)
    inside = {tuple(w) for s in splits.shards for w in np.lib.stride_tricks.sliding_window_view(np.asarray(s, dtype=np.int64), 16)}
    assert all(tuple(row) in inside for row in next(windows).tolist())  # never across a shard boundary
    state = windows.state_dict()
    expected = next(windows)
    resumed = RandomWindows(splits.shards, 16, 64, seed=123, random_length=0.0, eot_id=splits.eot_id)
    resumed.load_state_dict(state)
    assert torch.equal(next(resumed), expected)


def test_random_lengths_pad_with_the_end_of_text_and_score_only_the_kept_part(prepared):
    _, splits = read_prepared(prepared)
    windows = RandomWindows(splits.shards, 32, 4000, seed=0, random_length=0.25, eot_id=splits.eot_id)
    batch = next(windows)
    x0, keep = batch["x0"], batch["loss_mask"]
    lengths = keep.sum(-1)
    cut = lengths < 32
    assert 0.2 < cut.float().mean() < 0.3  # about the asked fraction
    assert (keep == (torch.arange(32)[None] < lengths[:, None])).all()  # a prefix is kept
    assert (x0[~keep] == splits.eot_id).all() and lengths.min() >= 1
    assert abs(lengths[cut].float().mean().item() - 16) < 1.5  # lengths uniform on 1..31
    assert not isinstance(next(RandomWindows(splits.shards, 32, 4, 0, 0.0, splits.eot_id)), dict)


def test_a_damaged_shard_is_refused_before_training_starts_naming_it(prepared, tmp_path, capsys):
    base = ["train", "--preset", "bpe-tiny", "--set", f"data.path={prepared}", "--set", "train.steps=1", "--quiet"]
    shard = prepared / "train-00001.bin"
    data = shard.read_bytes()
    shard.write_bytes(data[:-2])  # truncated
    assert main([*base, "--out", str(tmp_path / "run1")]) == 1
    err = capsys.readouterr().err
    assert "train-00001.bin" in err and "bytes instead of" in err and not (tmp_path / "run1").exists()
    shard.write_bytes(data[:10] + bytes([data[10] ^ 1]) + data[11:])  # altered, same size
    assert main([*base, "--out", str(tmp_path / "run2")]) == 1
    err = capsys.readouterr().err
    assert "train-00001.bin" in err and "checksum" in err and not (tmp_path / "run2").exists()


def test_train_eval_and_sample_on_prepared_tokens_with_the_checkpoint_only(prepared, tmp_path, capsys):
    run = tmp_path / "run"
    settings = ["model.n_layers=1", "model.d_model=32", "data.seq_len=32", "train.batch_size=4", "train.steps=4", "train.eval_sequences=4"]
    code = main(["train", "--preset", "bpe-tiny", "--out", str(run), "--quiet", "--set", f"data.path={prepared}", *[f"--set={s}" for s in settings]])
    out = capsys.readouterr().out
    assert code == 0 and "bits/token" in out
    assert json.loads((run / "tokenizer.json").read_text())["type"] == "bpe"
    assert main(["eval", "--checkpoint", str(run), "--max-sequences", "4", "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["unit"] == "token" and "validation split" in result["data"] and result["num_tokens"] == 4 * 32
    assert main(["eval", "--checkpoint", str(run), "--data", str(prepared), "--max-sequences", "2", "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["num_sequences"] == 2
    code = main(["sample", "--checkpoint", str(run), "--prompt", "The king", "--length", "12", "--num-samples", "2", "--steps", "4", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and out.count("The king") == 2
    loaded = maskdiff.load(run)
    assert loaded.decode(loaded.encode("The queen, " + EOT)) == "The queen, " + EOT
    # a folder prepared with another tokenizer is refused for this run
    other = tmp_path / "other"
    prepare([str(prepared.parent / "corpus")], other, train_vocab=280)
    assert main(["eval", "--checkpoint", str(run), "--data", str(other), "--quiet"]) == 1
    assert "not with this run's tokenizer" in capsys.readouterr().err


def test_token_presets_and_their_autoregressive_twins():
    for name in TOKEN_PRESETS:
        cfg = get_preset(name)
        assert cfg.data.format == "tokens" and f"ar-{name}" in PRESETS
        twin = get_preset(f"ar-{name}")
        assert twin.model.causal and twin.objective.name == "ar" and twin.data == cfg.data
    small = get_preset("md4-small")
    assert (small.model.n_layers, small.model.d_model, small.data.seq_len) == (12, 768, 1024)
    assert (get_preset("md4-medium").model.n_layers, get_preset("md4-medium").model.d_model) == (24, 1024)
    # SMDM's sizes are non-embedding parameters without the output layer: 16 * layers * width^2
    smdm = get_preset("smdm-113m")
    assert smdm.model.mlp == "swiglu" and smdm.model.norm == "rmsnorm"
    head = (smdm.model.d_model + 1) * 50257  # the output layer's weights and biases
    assert abs(parameter_count(smdm) - head - 113e6) / 113e6 < 0.01


def test_a_text_file_given_as_prepared_data_suggests_the_prepare_command_that_reads_it(tmp_path, capsys):
    text = tmp_path / "en.txt"
    text.write_text("Some English text.\n")
    code = main(["train", "--preset", "bpe-tiny", "--data", str(text), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert f"maskdiff prepare --tokenizer gpt2 --data {text} --out DIR" in err and "--out en.txt" not in err
    code = main(["train", "--preset", "bpe-tiny", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "does not exist" in err and f"--out {tmp_path / 'missing'}" in err

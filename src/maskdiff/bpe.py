"""Byte-level BPE tokenizers on Hugging Face ``tokenizers``: GPT-2's (offline), any tokenizers
file or model folder, or a new one trained on the user's corpus.

:class:`BPETokenizer` is the kind of tokenizer a run on prepared token shards records
(``type: "bpe"`` in its tokenizer.json, which embeds the whole tokenizers JSON), so sampling,
evaluation and prompts need nothing but the run folder. :func:`resolve_tokenizer` turns what a
user types after ``maskdiff prepare --tokenizer`` into one.

GPT-2 works offline: its BPE ranks (``gpt2.tiktoken``: every token's bytes, base64, and its
rank) come from a registry package (:mod:`maskdiff.assets`, ``gpt2``), and the merges that a
tokenizers BPE model needs are derived from them: a token of rank r is the merge of the two
parts that BPE, using only the tokens ranked below r, makes of its bytes.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from maskdiff import assets
from maskdiff.errors import MaskdiffError

EOT = "<|endoftext|>"  # GPT-2's end of text, and the one a trained BPE gets
EOT_CANDIDATES = (EOT, "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "[SEP]")  # looked for in a given tokenizer, in this order


class BPETokenizer:
    """A Hugging Face ``tokenizers`` tokenizer with a named end-of-text token; ids 0..V-1."""

    kind = "bpe"
    unit = "token"  # "bits per token"

    def __init__(self, tokenizer: Tokenizer, name: str, eot: str):
        self.tokenizer, self.name, self.eot = tokenizer, name, eot
        eot_id = tokenizer.token_to_id(eot)
        if eot_id is None:
            raise MaskdiffError(f"tokenizer {name!r} has no end-of-text token {eot!r}")
        self.eot_id: int = eot_id

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> torch.Tensor:
        """text -> LongTensor [n] (the end-of-text token where its text appears)."""
        return torch.tensor(self.tokenizer.encode(text, add_special_tokens=False).ids, dtype=torch.long)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of many texts, encoded in parallel by the tokenizers library's threads."""
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        """ids (any iterable of ints in 0..V-1) -> text, special tokens included."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def labels(self) -> list[str]:
        """Every token's text, for plots."""
        return [self.decode([i]) for i in range(self.vocab_size)]

    def to_dict(self) -> dict:
        return {"type": self.kind, "name": self.name, "eot": self.eot, "tokenizer": json.loads(self.tokenizer.to_str())}

    @classmethod
    def from_dict(cls, raw: dict) -> BPETokenizer:
        return cls(Tokenizer.from_str(json.dumps(raw["tokenizer"])), raw.get("name", "bpe"), raw["eot"])

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False) + "\n", encoding="utf-8")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BPETokenizer) and self.eot == other.eot and self.tokenizer.to_str() == other.tokenizer.to_str()

    __hash__ = None  # type: ignore[assignment]  # mutable wrapper, compared by content


# ---------------------------------------------------------------- GPT-2 from its ranks
def byte_symbols() -> list[str]:
    """The printable character that byte-level BPE writes for each byte 0..255: the byte itself
    where it is a visible Latin-1 character, else one of 256 + n (GPT-2's convention, which the
    tokenizers library's ByteLevel pre-tokenizer and decoder use)."""
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in visible:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def read_ranks(path: Path) -> dict[bytes, int]:
    """A tiktoken ranks file: one ``base64(token bytes) rank`` per line."""
    ranks = {}
    for line in path.read_text(encoding="ascii").splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def merge_of(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two parts whose merge makes ``token``: BPE on its bytes with the tokens ranked below it."""
    rank = ranks[token]
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best, at = rank, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1], rank)
            if r < best:
                best, at = r, i
        if at < 0:
            break
        parts[at : at + 2] = [parts[at] + parts[at + 1]]
    if len(parts) != 2:
        raise MaskdiffError(f"the ranks file cannot make token {token!r} from two lower-ranked tokens")
    return parts[0], parts[1]


def from_ranks(ranks: dict[bytes, int], name: str, eot: str = EOT) -> BPETokenizer:
    """A byte-level BPE with GPT-2's splitting of text into words, from tiktoken-style ranks; the
    end-of-text token gets the next id."""
    symbols = byte_symbols()

    def text(token: bytes) -> str:
        return "".join(symbols[b] for b in token)

    vocab = {text(token): rank for token, rank in ranks.items()}
    merges = [tuple(text(part) for part in merge_of(token, ranks)) for token, _ in sorted(ranks.items(), key=lambda item: item[1]) if len(token) > 1]
    tokenizer = Tokenizer(models.BPE(vocab, merges))  # type: ignore[arg-type]
    byte_level(tokenizer)
    tokenizer.add_special_tokens([eot])
    return BPETokenizer(tokenizer, name, eot)


def byte_level(tokenizer: Tokenizer) -> None:
    """GPT-2's pre-tokenizer (its word-splitting pattern, bytes as symbols, no prefix space) and decoder."""
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()


def gpt2() -> BPETokenizer:
    """GPT-2's tokenizer (50,257 tokens, ``<|endoftext|>`` = 50256) from the offline ranks file."""
    found = [p for p in assets.files("gpt2") if p.name == "gpt2.tiktoken"]
    if not found:
        raise MaskdiffError(
            f"the gpt2 tokenizer needs GPT-2's BPE ranks, which are not on this machine; {assets.fetch_hint('gpt2')}, "
            "or pass a tokenizers JSON file or model folder as --tokenizer"
        )
    return gpt2_from(found[0])


@functools.lru_cache(maxsize=2)
def gpt2_from(ranks_file: Path) -> BPETokenizer:
    """GPT-2's tokenizer from a ranks file, built once per process (deriving the merges takes a second or two)."""
    return from_ranks(read_ranks(ranks_file), "gpt2")


# ---------------------------------------------------------------- training, files and names
def train_bpe(texts: Iterable[str], vocab_size: int, count: int | None = None, progress: bool = False) -> BPETokenizer:
    """A new byte-level BPE of ``vocab_size`` tokens (the 256 bytes, merges, and ``<|endoftext|>``)
    trained on ``texts`` with the tokenizers library; ``count`` is how many texts, for its progress bar."""
    if vocab_size < 257:
        raise MaskdiffError(f"a byte-level BPE needs at least 257 tokens (256 bytes and the end of text), not {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    byte_level(tokenizer)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=progress
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=count)
    return BPETokenizer(tokenizer, f"bpe-{vocab_size}", EOT)


def find_eot(tokenizer: Tokenizer, source: str, eot: str | None) -> str:
    """The end-of-text token of a given tokenizer: ``eot``, or the first of :data:`EOT_CANDIDATES` it has."""
    wanted = [eot] if eot else list(EOT_CANDIDATES)
    for token in wanted:
        if tokenizer.token_to_id(token) is not None:
            return token
    if eot:
        raise MaskdiffError(f"tokenizer {source!r} has no token {eot!r} to use as the end of text")
    raise MaskdiffError(f"tokenizer {source!r} has none of the usual end-of-text tokens ({', '.join(EOT_CANDIDATES)}); name its own with --eot TOKEN")


def from_path(path: Path, eot: str | None = None) -> BPETokenizer:
    """A tokenizer saved as a file: a tokenizers JSON file, a model folder holding tokenizer.json, or a
    maskdiff run or prepared folder (their tokenizer.json)."""
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise MaskdiffError(f"tokenizer folder {str(path)!r} holds no tokenizer.json")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MaskdiffError(f"{file} is not a tokenizer JSON file: {err}") from None
    if isinstance(raw, dict) and raw.get("type") == BPETokenizer.kind:  # maskdiff's own, from a run folder
        loaded = BPETokenizer.from_dict(raw)
        return loaded if not eot else BPETokenizer(loaded.tokenizer, loaded.name, find_eot(loaded.tokenizer, str(path), eot))
    if isinstance(raw, dict) and "type" in raw:
        raise MaskdiffError(f"{file} is a maskdiff {raw['type']!r} tokenizer, not a BPE one")
    try:
        tokenizer = Tokenizer.from_str(json.dumps(raw))
    except Exception as err:  # the library's own parse errors have no common type
        raise MaskdiffError(f"{file} is not a tokenizers JSON file: {err}") from None
    name = path.name if path.is_dir() else path.stem
    return BPETokenizer(tokenizer, name, find_eot(tokenizer, str(path), eot))


def resolve_tokenizer(spec: str, eot: str | None = None) -> BPETokenizer:
    """What ``--tokenizer`` names: ``gpt2`` (offline), or a tokenizers JSON file or model folder.

    A hub name is refused with how to save it locally: nothing is downloaded at run time.
    """
    if spec == "gpt2":
        return gpt2()
    path = Path(spec).expanduser()
    if path.exists():
        return from_path(path, eot)
    raise MaskdiffError(
        f"tokenizer {spec!r} is not here: it is neither 'gpt2' nor a file or folder, and maskdiff downloads nothing at run time; "
        f"save it where you are online (e.g. `transformers.AutoTokenizer.from_pretrained({spec!r}).save_pretrained('DIR')`) "
        "and pass --tokenizer DIR, or train one with --train-bpe VOCAB_SIZE"
    )

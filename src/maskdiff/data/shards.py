"""Prepared token shards as a data format (``data.format=tokens``): what ``maskdiff prepare`` writes.

A prepared folder (``data.path``) holds::

    prepared.json        the metadata: tokenizer, dtype, document and token counts, and every
                         shard's file, tokens, bytes and sha256
    tokenizer.json       the tokenizer (a Hugging Face tokenizers file; prepared.json names its end of text)
    train-00000.bin ...  the training split: token ids as raw little-endian uint16 (uint32 when the
                         vocabulary has more than 65,536 tokens), documents packed one after the
                         other, each followed by the end-of-text token
    valid-00000.bin ...  the validation split, the same way

Reading a folder checks every shard against its size and checksum first, so a truncated or altered
shard is refused, by name, before training or evaluation starts. The shards are memory-mapped:
training draws windows of ``data.seq_len`` tokens uniformly from all the windows that fit inside a
shard (:class:`RandomWindows`), so the training split never has to fit in memory. The validation
split is read into memory; the folder has no separate test split, so ``test`` names it too.

Random lengths (SMDM): a fraction ``data.random_length`` of training sequences (default 1%) is cut
to a length drawn uniformly from 1..seq_len-1. The padding policy is the one of prompt/response
pairs: the positions after the cut hold the end-of-text token and are *given* (``loss_mask``
False), so a masked diffusion model never masks nor scores them and an autoregressive one does
not score them; the loss is per scored token. Batches are then ``{"x0", "loss_mask"}``; with
``data.random_length=0`` they are plain ``x0`` tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from maskdiff.bpe import BPETokenizer
from maskdiff.data.splits import Splits
from maskdiff.errors import MaskdiffError, plural
from maskdiff.integrity import file_problem

META = "prepared.json"
TOKENIZER = "tokenizer.json"
FORMAT = "maskdiff-tokens"
VERSION = 1
SPLITS = ("train", "valid")


GPT2_VOCAB_SIZE = 50_257  # what token presets are counted with before their data is prepared


def planned_vocab_size(data_cfg) -> int:
    """The vocabulary of a ``tokens`` DataConfig: its prepared folder's, or GPT-2's until it is prepared."""
    if data_cfg.path and is_prepared(data_cfg.path):
        return int(read_meta(Path(data_cfg.path))["tokenizer"]["vocab_size"])
    return GPT2_VOCAB_SIZE


def token_dtype(vocab_size: int) -> np.dtype:
    """Little-endian uint16 where every id fits (at most 65,536 tokens), else uint32."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.bin"


def is_prepared(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by ``maskdiff prepare``."""
    return (Path(path) / META).is_file()


def read_meta(path: Path) -> dict:
    """The metadata of a prepared folder, with one-line errors for a missing or foreign folder."""
    if path.is_file():  # a text file given where a prepared folder belongs: prepare it first
        raise MaskdiffError(
            f"{str(path)!r} is a file, not a folder written by `maskdiff prepare`: tokenize it with "
            f"`maskdiff prepare --tokenizer gpt2 --data {path} --out DIR` and pass DIR"
        )
    if not path.is_dir():
        raise MaskdiffError(
            f"prepared data {str(path)!r} does not exist (write it with `maskdiff prepare --tokenizer gpt2 --data SOURCE --out {path}`)"
        )
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MaskdiffError(f"{str(path)!r} holds no {META}: not a folder written by `maskdiff prepare`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MaskdiffError(f"{path / META} is not valid JSON: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise MaskdiffError(f"{path / META} is not version {VERSION} metadata of `maskdiff prepare`")
    return meta


def load_prepared_tokenizer(path: Path, meta: dict) -> BPETokenizer:
    """The tokenizer saved in a prepared folder, with the name and end of text its metadata records."""
    record = meta["tokenizer"]
    file = path / record["file"]
    problem = file_problem(file, record["bytes"], record["sha256"])
    if problem is not None:
        raise MaskdiffError(f"the tokenizer of prepared data {str(path)!r} is damaged: {problem}; prepare the data again")
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as err:  # a missing or damaged file; the library's errors have no common type
        raise MaskdiffError(f"the tokenizer of prepared data {str(path)!r} cannot be read ({file.name}: {err})") from None
    return BPETokenizer(tokenizer, meta["tokenizer"]["name"], meta["tokenizer"]["eot"])


def open_shards(path: Path, meta: dict, split: str) -> list[np.ndarray]:
    """The shards of a split, memory-mapped, each checked against its recorded size and sha256."""
    dtype = np.dtype(meta["dtype"]).newbyteorder("<")
    shards = []
    for record in meta["shards"][split]:
        file = path / record["file"]
        problem = file_problem(file, record["bytes"], record["sha256"])
        if problem is not None:
            raise MaskdiffError(
                f"shard {file} is damaged: {problem.removeprefix(file.name + ' ')}; prepare the data again (maskdiff prepare ... --overwrite)"
            )
        shards.append(np.memmap(file, dtype=dtype, mode="r") if record["tokens"] else np.zeros(0, dtype))
    return shards


class TokenSplits(Splits):
    """The splits of a prepared folder: the training shards (memory-mapped) and the validation
    tokens (in memory; ``test`` is the same split)."""

    def __init__(self, shards: list[np.ndarray], valid: torch.Tensor, eot_id: int):
        self.shards, self.valid, self.test, self.eot_id = shards, valid, valid, eot_id

    @property
    def train(self) -> torch.Tensor:  # type: ignore[override]
        """The whole training split as one tensor, read into memory (training itself draws windows from the shards)."""
        return torch.from_numpy(np.concatenate(self.shards).astype(np.int64))

    def num_tokens(self, name: str) -> int:
        return sum(len(s) for s in self.shards) if name == "train" else super().num_tokens(name)


def read_prepared(path: str | Path, tokenizer=None) -> tuple[BPETokenizer, TokenSplits]:
    """Tokenizer and splits of a prepared folder, every shard verified. A given ``tokenizer`` (a
    run's) must be the folder's own: token ids mean nothing under another tokenizer."""
    path = Path(path)
    meta = read_meta(path)
    own = load_prepared_tokenizer(path, meta)
    if tokenizer is not None and tokenizer != own:
        name = getattr(tokenizer, "name", getattr(tokenizer, "kind", "another"))
        raise MaskdiffError(
            f"prepared data {str(path)!r} was tokenized with {own.name!r} ({plural(own.vocab_size, 'token')}), not with this run's tokenizer "
            f"({name!r}, {plural(tokenizer.vocab_size, 'token')}); prepare it with the run's tokenizer (--tokenizer RUN_DIR)"
        )
    shards = {split: open_shards(path, meta, split) for split in SPLITS}
    valid = torch.from_numpy(np.concatenate(shards["valid"]).astype(np.int64))
    return own, TokenSplits(shards["train"], valid, own.eot_id)


def prepare_tokens(data_cfg, tokenizer=None) -> tuple[BPETokenizer, TokenSplits]:
    """The ``tokens`` format's reader: the prepared folder at ``data.path`` (see :func:`read_prepared`)."""
    if not data_cfg.path:
        raise MaskdiffError(
            "data.format=tokens needs data.path, a folder written by `maskdiff prepare` "
            "(e.g. `maskdiff prepare --tokenizer gpt2 --data builtin --out DIR`, then --set data.path=DIR)"
        )
    tokenizer, splits = read_prepared(data_cfg.path, tokenizer)
    if splits.num_tokens("valid") < data_cfg.seq_len:
        raise MaskdiffError(
            f"prepared data {data_cfg.path!r} has {splits.num_tokens('valid')} validation tokens, fewer than one sequence of "
            f"data.seq_len={data_cfg.seq_len}; prepare it with a larger --valid-fraction or use a smaller data.seq_len"
        )
    return tokenizer, splits


class RandomWindows:
    """Endless batches of random windows of the training shards, some cut to a random length
    (see the module docstring); resumable through its generator's state.

    A window lies inside one shard; every window that fits is equally likely.
    """

    def __init__(self, shards: list[np.ndarray], seq_len: int, batch_size: int, seed: int, random_length: float, eot_id: int):
        self.shards, self.seq_len, self.batch_size = shards, seq_len, batch_size
        self.random_length, self.eot_id = random_length, eot_id
        windows = np.array([max(0, len(s) - seq_len + 1) for s in shards], dtype=np.int64)
        self.total = int(windows.sum())
        if self.total == 0:
            longest = max((len(s) for s in shards), default=0)
            raise MaskdiffError(
                f"no training shard holds a sequence of data.seq_len={seq_len} tokens "
                f"(the longest has {plural(longest, 'token')}); use a smaller data.seq_len"
            )
        self.ends = np.cumsum(windows)  # windows starts[i] .. ends[i]-1 lie in shard i
        self.starts = self.ends - windows
        self.generator = torch.Generator().manual_seed(seed)
        self._positions = torch.arange(seq_len)

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor | dict[str, torch.Tensor]:
        index = torch.randint(0, self.total, (self.batch_size,), generator=self.generator).numpy()
        shard = np.searchsorted(self.ends, index, side="right")
        start = index - self.starts[shard]
        x0 = torch.from_numpy(np.stack([self.shards[s][o : o + self.seq_len] for s, o in zip(shard, start)]).astype(np.int64))
        if not self.random_length:
            return x0
        # the same draws every batch, cut or not, so the data order never depends on the cuts
        cut = torch.rand(self.batch_size, generator=self.generator) < self.random_length
        lengths = torch.randint(1, max(2, self.seq_len), (self.batch_size,), generator=self.generator)
        keep = self._positions[None] < torch.where(cut, lengths, self.seq_len)[:, None]
        return {"x0": torch.where(keep, x0, self.eot_id), "loss_mask": keep}

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def token_batches(splits: TokenSplits, data_cfg, num_classes: int, batch_size: int, seed: int) -> RandomWindows:
    """Training batches of a prepared folder: random windows of its shards."""
    return RandomWindows(splits.shards, data_cfg.seq_len, batch_size, seed, data_cfg.random_length, splits.eot_id)

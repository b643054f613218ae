"""Data sets as token tensors, whatever the source, and the registry of data formats.

Every format declares its modality ("text" or "image") and gives two functions: ``prepare``
(a DataConfig and an optional tokenizer -> the tokenizer and the train/valid/test splits) and
``batches`` (the endless, resumable stream of training batches). Adding a format is one module
here plus one ``FORMATS.add`` line below.

A training batch is ``x0`` [B, L], ``(x0, labels)`` (class-conditional images) or a dict with
``"x0"`` and the objective's other keyword arguments (prompt/response pairs: ``"loss_mask"``);
:func:`split_batch` reads any of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from maskdiff.data.images import READERS, image_batches, prepare_images
from maskdiff.data.pairs import pair_batches, prepare_pairs
from maskdiff.data.shards import prepare_tokens, token_batches
from maskdiff.data.splits import Splits, chunks
from maskdiff.data.text import prepare_text, read_text, text_batches
from maskdiff.registry import Registry


class BatchStream(Protocol):
    """An endless, resumable iterator of training batches (``x0`` or ``(x0, labels)``)."""

    def __next__(self) -> Any: ...  # x0, (x0, labels) or {"x0": x0, "loss_mask": ...}

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass(frozen=True)
class DataFormat:
    """What a data format contributes."""

    modality: str  # "text" (characters, tokens) or "image" (H*W*C sub-pixel tokens)
    prepare: Callable[..., tuple[Any, Splits]]  # (data_cfg, tokenizer or None) -> (tokenizer, splits)
    batches: Callable[..., BatchStream]  # (splits, data_cfg, num_classes, batch_size, seed) -> resumable batch stream


FORMATS: Registry[DataFormat] = Registry("data.format")
FORMATS.add("text", DataFormat("text", prepare_text, text_batches))
FORMATS.add("pairs", DataFormat("text", prepare_pairs, pair_batches))  # prompt/response JSONL for conditional fine-tuning
FORMATS.add("tokens", DataFormat("text", prepare_tokens, token_batches))  # token shards written by `maskdiff prepare`
for _name in READERS:
    FORMATS.add(_name, DataFormat("image", prepare_images, image_batches))


def prepare_data(data_cfg, tokenizer=None) -> tuple[Any, Splits]:
    """Read the data of a DataConfig: its tokenizer (built, or checked when given) and its splits."""
    return FORMATS.get(data_cfg.format).prepare(data_cfg, tokenizer)


def training_batches(splits: Splits, cfg, batch_size: int, seed: int) -> BatchStream:
    """The endless, resumable batch stream of a run (``state_dict``/``load_state_dict``).

    Image batches of a class-conditional model are ``(x0, labels)`` pairs.
    """
    num_classes = getattr(cfg.model, "num_classes", 0)
    return FORMATS.get(cfg.data.format).batches(splits, cfg.data, num_classes, batch_size, seed)


def split_batch(batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A training batch as ``(x0, keyword arguments of the objective's loss)``: ``labels`` of
    class-conditional images, ``loss_mask`` of prompt/response pairs, or none."""
    if isinstance(batch, dict):
        return batch["x0"], {k: v for k, v in batch.items() if k != "x0"}
    if isinstance(batch, tuple):
        x0, labels = batch
        return x0, {"labels": labels}
    return batch, {}


def evaluation_sequences(splits: Splits, name: str, seq_len: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A split as non-overlapping sequences of ``seq_len`` tokens with their loss masks (None:
    every token is scored).  -> (ids [N, L], loss_mask bool [N, L] or None)"""
    mask = splits.loss_mask(name)
    return chunks(splits.get(name), seq_len), None if mask is None else chunks(mask, seq_len).bool()


__all__ = [
    "FORMATS",
    "BatchStream",
    "DataFormat",
    "Splits",
    "chunks",
    "evaluation_sequences",
    "prepare_data",
    "read_text",
    "split_batch",
    "training_batches",
]

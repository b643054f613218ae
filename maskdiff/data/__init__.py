"""Data sets as token tensors, whatever the source, and the registry of data formats.

Every format declares its modality ("text" or "image") and gives two functions: ``prepare``
(a DataConfig and an optional tokenizer -> the tokenizer and the train/valid/test splits) and
``batches`` (the endless, resumable stream of training batches). Adding a format is one module
here plus one ``FORMATS.add`` line below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from maskdiff.data.images import READERS, image_batches, prepare_images
from maskdiff.data.splits import Splits, chunks
from maskdiff.data.text import prepare_text, read_text, text_batches
from maskdiff.registry import Registry


class BatchStream(Protocol):
    """An endless, resumable iterator of training batches (``x0`` or ``(x0, labels)``)."""

    def __next__(self) -> Any: ...

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


__all__ = ["FORMATS", "BatchStream", "DataFormat", "Splits", "chunks", "prepare_data", "read_text", "training_batches"]

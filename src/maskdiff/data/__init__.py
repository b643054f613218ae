"""Data sets as token tensors, whatever the source, and the registry of data formats.

Every format declares its modality (text or image) and what else sets it apart (padded examples
with an end of text, a test split of its own, the vocabulary before its data are read) and gives
two functions: ``prepare`` (a DataConfig and an optional tokenizer -> the tokenizer and the
train/valid/test splits) and ``batches`` (the endless, resumable stream of training batches). The
rest of maskdiff asks the :class:`DataFormat` rather than comparing format names. Adding a format
is one module here plus one ``FORMATS.add`` line below.

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
from maskdiff.data.shards import planned_vocab_size, prepare_tokens, token_batches
from maskdiff.data.splits import Splits, chunks
from maskdiff.data.text import BUILT_IN_VOCAB_SIZE, prepare_text, read_text, text_batches
from maskdiff.errors import MaskdiffError
from maskdiff.registry import Named, Registry
from maskdiff.tokenizer import PixelTokenizer


class BatchStream(Protocol):
    """An endless, resumable iterator of training batches (``x0`` or ``(x0, labels)``)."""

    def __next__(self) -> Any: ...  # x0, (x0, labels) or {"x0": x0, "loss_mask": ...}

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class Modality(Named):
    """What a format's tokens are: text (characters, tokens) or images (H*W*C sub-pixel tokens in 0..255)."""

    TEXT = "text"
    IMAGE = "image"


@dataclass(frozen=True)
class DataFormat:
    """What a data format contributes; everything that differs between formats is asked of it."""

    modality: Modality
    prepare: Callable[..., tuple[Any, Splits]]  # (data_cfg, tokenizer or None) -> (tokenizer, splits)
    batches: Callable[..., BatchStream]  # (splits, data_cfg, num_classes, batch_size, seed) -> resumable batch stream
    vocab_size: Callable[[Any], int]  # data_cfg -> the vocabulary a model of it is counted with before the data is read
    # every sequence is one example padded with the end of text (data.eos) to data.seq_len, with a
    # loss mask (prompt/response pairs): evaluation keeps that length, generation gives the padding
    padded_examples: bool = False
    test_split: bool = True  # whether the data hold a test split of their own (prepared tokens: "test" is the validation split)

    @property
    def is_image(self) -> bool:
        return self.modality is Modality.IMAGE

    @property
    def is_text(self) -> bool:
        return self.modality is Modality.TEXT

    def problems(self, data_cfg) -> list[str]:
        """What is wrong with the format's own keys of a DataConfig (``data.eos``, the image shape)."""
        if self.padded_examples and len(data_cfg.eos) != 1:
            return [f"data.format={data_cfg.format} needs data.eos, the end-of-text character (exactly one character), not {data_cfg.eos!r}"]
        if not self.padded_examples and data_cfg.eos:
            return [f"data.eos applies to data.format={' or '.join(name for name, entry in FORMATS.items() if entry.padded_examples)}"]
        if self.is_image:
            if data_cfg.image_size < 1 or data_cfg.channels not in (1, 3, 4):
                return ["image data need data.image_size >= 1 and data.channels 1, 3 or 4"]
            if data_cfg.seq_len != data_cfg.image_size**2 * data_cfg.channels:
                return [
                    f"data.seq_len must be image_size * image_size * channels = {data_cfg.image_size**2 * data_cfg.channels} "
                    f"for images, not {data_cfg.seq_len}"
                ]
        return []

    def fits(self, network_modality: str) -> bool:
        """Whether a network that models ``network_modality`` ("any", or one modality) can model these data."""
        return network_modality in ("any", self.modality)

    def require_text(self, owner: object, purpose: str) -> None:
        """Refuse a non-text run: "``owner`` models images; ``purpose``" (e.g. "fine-tuning on pairs needs a text run")."""
        if not self.is_text:
            raise MaskdiffError(f"{owner} models {self.modality}s; {purpose}")


def built_in_vocab_size(data_cfg) -> int:
    return BUILT_IN_VOCAB_SIZE


FORMATS: Registry[DataFormat] = Registry("data.format")
FORMATS.add("text", DataFormat(Modality.TEXT, prepare_text, text_batches, built_in_vocab_size))
# prompt/response JSONL for conditional fine-tuning
FORMATS.add("pairs", DataFormat(Modality.TEXT, prepare_pairs, pair_batches, built_in_vocab_size, padded_examples=True))
# token shards written by `maskdiff prepare`
FORMATS.add("tokens", DataFormat(Modality.TEXT, prepare_tokens, token_batches, planned_vocab_size, test_split=False))
for _name in READERS:
    FORMATS.add(_name, DataFormat(Modality.IMAGE, prepare_images, image_batches, lambda data_cfg: PixelTokenizer().vocab_size))


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
    "Modality",
    "Splits",
    "chunks",
    "evaluation_sequences",
    "prepare_data",
    "read_text",
    "split_batch",
    "training_batches",
]

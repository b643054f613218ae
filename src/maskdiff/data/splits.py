"""Splits of a data set as token tensors, and the evaluation view of a split (non-overlapping sequences)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from maskdiff.errors import MaskdiffError, plural


@dataclass
class Splits:
    """Token ids of the three parts of a data set."""

    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor

    def get(self, name: str) -> torch.Tensor:
        if name not in ("train", "valid", "test"):
            raise MaskdiffError(f"unknown split {name!r}; choose train, valid or test")
        return getattr(self, name)

    def num_tokens(self, name: str) -> int:
        """How many tokens a split holds."""
        return self.get(name).numel()

    def loss_mask(self, name: str) -> torch.Tensor | None:
        """Which tokens of a split are scored, a flat bool tensor like the split's tokens (pairs:
        responses and their end of text), or None: every token."""
        self.get(name)
        return None


def chunks(tokens: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Non-overlapping sequences of ``seq_len`` tokens; the remainder is dropped.  -> LongTensor [N, L]"""
    n = tokens.numel() // seq_len
    if n == 0:
        raise MaskdiffError(f"the text has {plural(tokens.numel(), 'token')}, fewer than one sequence of {seq_len}")
    return tokens[: n * seq_len].view(n, seq_len).long()  # image splits are stored as uint8

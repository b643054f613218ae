"""KV caching for block (semi-autoregressive) decoding: which rows run the whole sequence, which a window.

With ``block_size`` the sampler decodes blocks left to right, and within a block only the
block's positions change. A bidirectional denoiser still sees the whole sequence, but the keys
and values of the positions outside the block change little from step to step, so they can be
kept (Fast-dLLM's approximate caches):

- ``prefix``: a step runs the network on the current block and everything after it (the masked
  later blocks); the decoded blocks before it attend from the cache.
- ``dual``: a step runs the network on the current block only; the decoded blocks before it and
  the masked blocks after it both come from the cache.

A *full pass* over the whole sequence fills the cache; it runs at the first step of every block
and, with ``refresh`` N > 0, at every N-th step of a block (N = 1: every step). A full pass gives
exactly the logits of the uncached sampler, so with ``refresh=1`` the samples are those of
``kv_cache="none"`` bit for bit. Between full passes the kept keys and values are stale in two
ways: they were computed before the latest reveals of the block, and at the time t of that full
pass (a time-conditioned denoiser, GenMD4's, saw an earlier t); both are part of the approximation.

Which rows need a full pass depends only on each row's own history (the step index in the block
and whether the row has had a full pass in it), never on the other rows, so caching keeps the
samplers' batch invariance: a row gives the same tokens in any batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

CACHE_MODES = ("none", "prefix", "dual")


@dataclass
class CachedPass:
    """One network call on a block cache: ``rows`` [R] of the cache, the whole sequence (``window``
    None, storing its keys and values) or only positions ``window`` = (start, end)."""

    kv: Any  # the denoiser's cache (maskdiff.nets.transformer.KVCache)
    rows: torch.Tensor  # [R] long
    window: tuple[int, int] | None
    num_rows: int  # N: rows N..2N-1 of the cache hold the unconditional pass of classifier-free guidance

    def columns(self, z: torch.Tensor) -> torch.Tensor:
        """The positions of z [R, L] this pass runs on."""
        return z if self.window is None else z[:, self.window[0] : self.window[1]]

    def guided(self) -> CachedPass:
        """The same pass for a batch of conditional rows followed by their unconditional copies."""
        return CachedPass(self.kv, torch.cat([self.rows, self.rows + self.num_rows]), self.window, self.num_rows)


class BlockCache:
    """The cache policy of one sampler run: per row, whether it has had a full pass in the current block."""

    def __init__(self, kv: Any, mode: str, refresh: int, num_rows: int, length: int, device):
        self.kv, self.mode, self.refresh, self.num_rows, self.length = kv, mode, refresh, num_rows, length
        self.fresh = torch.zeros(num_rows, dtype=torch.bool, device=device)  # [N]: full pass done in this block
        self.start, self.end = 0, length

    def begin_block(self, start: int, end: int) -> None:
        """A new block: every row needs a full pass before it may run a window."""
        self.start, self.end = start, end
        self.fresh.zero_()

    def passes(self, rows: torch.Tensor, step: int) -> list[tuple[torch.Tensor, CachedPass]]:
        """The network calls of step ``step`` (0 = the block's first) for ``rows`` [R] (ascending):
        the rows due a full pass, then the rest on the block's window.  -> [(rows, pass)]"""
        due = step == 0 or (self.refresh > 0 and step % self.refresh == 0)
        stale = torch.ones_like(rows, dtype=torch.bool) if due else ~self.fresh[rows]
        full, windowed = rows[stale], rows[~stale]
        self.fresh[full] = True
        out = []
        if full.numel():
            out.append((full, CachedPass(self.kv, full, None, self.num_rows)))
        if windowed.numel():
            window = (self.start, self.length if self.mode == "prefix" else self.end)
            out.append((windowed, CachedPass(self.kv, windowed, window, self.num_rows)))
        return out

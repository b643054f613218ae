"""Counter-based random numbers with one stream per sample, so a sample depends only on its seed and index."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from maskdiff.errors import MaskdiffError


def _signed(value: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    return value - (1 << 64) if value >= 1 << 63 else value


GOLDEN_GAMMA = _signed(0x9E3779B97F4A7C15)
MIX1, MIX2 = _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical (unsigned) right shift of int64 bits."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """The splitmix64 finaliser on int64 tensors (arithmetic wraps modulo 2^64)."""
    x = (x ^ _shift_right(x, 30)) * MIX1
    x = (x ^ _shift_right(x, 27)) * MIX2
    return x ^ _shift_right(x, 31)


class SampleStreams:
    """Counter-based random numbers with one stream per sample.

    Draw k of sample i is splitmix64(seed_i + (k + 1) * gamma): vectorised over the batch, and a
    sample's numbers depend only on its seed and index, never on the rest of the batch.
    ``generator`` may be one generator per sample: sample i then has the stream it has as the
    only sample of a batch seeded by its own generator (requests batched together, each with its
    own seed, draw what they draw alone).
    """

    def __init__(self, num_samples: int, generator: torch.Generator | Sequence[torch.Generator] | None, device=None):
        if isinstance(generator, Sequence):
            if len(generator) != num_samples:
                raise MaskdiffError(f"{len(generator)} generators for {num_samples} samples: give one per sample")
            base = torch.cat([torch.randint(0, 2**62, (1,), generator=g) for g in generator])  # [N], each at index 0
        else:
            base = torch.randint(0, 2**62, (1,), generator=generator) + torch.arange(num_samples) * GOLDEN_GAMMA
        self.seeds = splitmix64(base).to(device)  # [N]
        self.offset = 0

    def uniform(self, count: int) -> torch.Tensor:
        """The next ``count`` numbers of every stream, U[0, 1) in float64 with 53 random bits.  -> [N, count]"""
        counter = torch.arange(self.offset + 1, self.offset + count + 1, device=self.seeds.device)
        self.offset += count
        bits = splitmix64(self.seeds[:, None] + counter[None] * GOLDEN_GAMMA)
        return _shift_right(bits, 11).double() * 2.0**-53

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


def stream_seeds(generator: torch.Generator | None, num_samples: int, first: int = 0) -> torch.Tensor:
    """The stream seeds of samples ``first`` .. ``first + num_samples - 1`` of a run drawn with ``generator``.  -> int64 [N]

    Sample i's seed is splitmix64(base + i * gamma), ``base`` one number drawn from the generator.
    A server batching requests concatenates each request's seeds (from its own generator), so
    every row draws exactly the numbers it would draw alone.
    """
    base = torch.randint(0, 2**62, (1,), generator=generator)
    return splitmix64(base + torch.arange(first, first + num_samples) * GOLDEN_GAMMA)


def row_seeds(seeds: Sequence[int]) -> torch.Tensor:
    """The stream seeds of rows with one seed each: row i gets what it gets as the only sample of a
    run seeded with ``seeds[i]``, whatever the rest of the batch.  -> int64 [len(seeds)]"""
    return torch.cat([stream_seeds(torch.Generator().manual_seed(s), 1) for s in seeds])


class SampleStreams:
    """Counter-based random numbers with one stream per sample.

    Draw k of sample i is splitmix64(seed_i + (k + 1) * gamma): vectorised over the batch, and a
    sample's numbers depend only on its seed and index, never on the rest of the batch.
    ``seeds`` [N] (from :func:`stream_seeds`) gives every row its own stream seed instead of
    drawing them from ``generator``.
    """

    def __init__(self, num_samples: int, generator: torch.Generator | None, device=None, seeds: torch.Tensor | None = None):
        if seeds is None:
            seeds = stream_seeds(generator, num_samples)
        elif tuple(seeds.shape) != (num_samples,):
            raise MaskdiffError(f"seeds has shape {tuple(seeds.shape)}, expected ({num_samples},)")
        self.seeds = seeds.to(device=device, dtype=torch.long)  # [N]
        self.offset = 0

    def uniform(self, count: int) -> torch.Tensor:
        """The next ``count`` numbers of every stream, U[0, 1) in float64 with 53 random bits.  -> [N, count]"""
        counter = torch.arange(self.offset + 1, self.offset + count + 1, device=self.seeds.device)
        self.offset += count
        bits = splitmix64(self.seeds[:, None] + counter[None] * GOLDEN_GAMMA)
        return _shift_right(bits, 11).double() * 2.0**-53

"""Time grids and the categorical draws of a reverse step: temperature, top-k, top-p, inverse-CDF sampling."""

from __future__ import annotations

import math

import torch

from maskdiff.errors import MaskdiffError

GRIDS = ("cosine", "uniform")


def time_grid(steps: int, kind: str = "cosine", dtype=torch.float64) -> torch.Tensor:
    """steps + 1 times from 1 down to 0; "cosine" spends more steps near t = 1 as MD4 does.  -> [steps+1]"""
    if steps < 1:
        raise MaskdiffError(f"steps must be >= 1, got {steps}")
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=dtype)
    if kind == "uniform":
        return u
    if kind == "cosine":
        grid = torch.cos(math.pi / 2 * (1 - u))
        grid[-1] = 0.0  # cos(pi/2) is 6e-17, not 0
        return grid
    raise MaskdiffError(f"unknown time grid {kind!r}; choose one of {', '.join(GRIDS)}")


def filter_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Probabilities in float64 after temperature, top-k and top-p; temperature 0 is one-hot argmax.  [..., V]"""
    logits = logits.double()
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).double()
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_k and top_k < probs.shape[-1]:
        kth = probs.topk(top_k, dim=-1).values[..., -1:]
        probs = torch.where(probs >= kth, probs, 0.0)
    if top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(-1) - sorted_probs  # mass of strictly more likely values
        keep_sorted = before < top_p * sorted_probs.sum(-1, keepdim=True)
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        probs = torch.where(keep, probs, 0.0)
    return probs / probs.sum(-1, keepdim=True)


def categorical(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draws: for each row of probs [..., V] the value where cdf first exceeds u [...]."""
    cdf = probs.cumsum(-1)
    index = torch.searchsorted(cdf, (u * cdf[..., -1]).unsqueeze(-1).to(cdf.dtype), right=True).squeeze(-1)
    return index.clamp_max(probs.shape[-1] - 1)

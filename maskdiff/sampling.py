"""Reverse-process samplers: start from all masks and unmask along a time grid from t = 1 to 0.

A sampler only needs a denoiser callable, a schedule and the mask id, so a CLI, a test or a
server can drive it the same way; :func:`iterate` yields every intermediate state.

Ancestral rule (MD4's reverse process) from t to s < t: each masked position is unmasked with
probability (alpha_s - alpha_t) / (1 - alpha_t) and then takes a value drawn from the
denoiser's prediction; unmasked positions never change. The last step (s = 0) unmasks every
position that is still masked, so the output never contains the mask id.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch

from maskdiff.diffusion import uniform_draws
from maskdiff.errors import MaskdiffError

GRIDS = ("cosine", "uniform")
METHODS = ("ancestral",)


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


def categorical(logits: torch.Tensor, generator: torch.Generator | None, temperature: float = 1.0) -> torch.Tensor:
    """One draw per row of softmax(logits / temperature) by Gumbel-max in float64.  [..., V] -> [...]

    float64 matters: float32 Gumbel noise truncates the tail and lowers the entropy of samples.
    temperature 0 takes the argmax.
    """
    logits = logits.double()
    if temperature == 0:
        return logits.argmax(dim=-1)
    u = uniform_draws(logits.shape, generator, logits.device, torch.float64)
    gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(torch.float64).tiny)))
    return (logits / temperature + gumbel).argmax(dim=-1)


def initial_state(num_samples: int, length: int, mask_id: int, given: torch.Tensor | None, device) -> torch.Tensor:
    """All masks, or ``given`` checked for shape and range.  -> [N, L]"""
    if num_samples < 1 or length < 1:
        raise MaskdiffError(f"need num_samples >= 1 and length >= 1, got {num_samples} and {length}")
    if given is None:
        return torch.full((num_samples, length), mask_id, dtype=torch.long, device=device)
    if tuple(given.shape) != (num_samples, length):
        raise MaskdiffError(f"given has shape {tuple(given.shape)}, expected ({num_samples}, {length})")
    if given.min() < 0 or given.max() > mask_id:
        raise MaskdiffError(f"given holds ids outside 0..{mask_id} (the mask id is {mask_id})")
    return given.to(device=device, dtype=torch.long).clone()


def unmask_decisions(z: torch.Tensor, alpha_t: float, alpha_s: float, last: bool, mask_id: int, generator) -> torch.Tensor:
    """Which masked positions the ancestral rule reveals going from t to s.  -> bool [N, L]

    Each masked position is revealed with probability (alpha_s - alpha_t) / (1 - alpha_t);
    every one of them at the last step.
    """
    masked = z == mask_id
    if last:
        return masked
    p_unmask = (alpha_s - alpha_t) / (1 - alpha_t)
    return masked & (uniform_draws(z.shape, generator, z.device, torch.float64) < p_unmask)


def iterate(
    model,
    num_samples: int,
    length: int,
    steps: int,
    method: str = "ancestral",
    given: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    grid: str = "cosine",
    temperature: float = 1.0,
    device=None,
) -> Iterator[torch.Tensor]:
    """Yield z after every step (the start first, then ``steps`` states); the last has no mask ids.

    ``model`` needs ``denoiser``, ``schedule`` and ``mask_id`` (a :class:`MaskedDiffusion`).
    The denoiser only sees the sequences that reveal at least one token in a step, and is not
    called at all in a step that reveals nothing.
    """
    if method not in METHODS:
        raise MaskdiffError(f"unknown sampling method {method!r}; choose one of {', '.join(METHODS)}")
    if temperature < 0:
        raise MaskdiffError(f"temperature must be >= 0, got {temperature}")
    if device is None:
        device = next(iter(model.parameters()), torch.empty(0)).device
    times = time_grid(steps, grid)
    alphas = model.schedule.alpha(times).tolist()
    z = initial_state(num_samples, length, model.mask_id, given, device)
    yield z
    for i in range(steps):
        reveal = unmask_decisions(z, alphas[i], alphas[i + 1], i == steps - 1, model.mask_id, generator)
        rows = reveal.any(dim=1).nonzero().squeeze(1)
        if rows.numel() > 0:
            z = z.clone()
            t = torch.full((rows.numel(),), float(times[i]), device=device)
            with torch.no_grad():
                logits = model.denoiser(z[rows], t)
            proposal = categorical(logits, generator, temperature)
            z[rows] = torch.where(reveal[rows], proposal, z[rows])
        yield z


def sample(model, num_samples: int, length: int, steps: int, **options) -> torch.Tensor:
    """The final state of :func:`iterate`.  -> LongTensor [num_samples, length]"""
    z = None
    for z in iterate(model, num_samples, length, steps, **options):
        pass
    return z

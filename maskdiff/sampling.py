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


def ancestral_step(
    z: torch.Tensor,
    logits: torch.Tensor,
    alpha_t: float,
    alpha_s: float,
    last: bool,
    mask_id: int,
    generator: torch.Generator | None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """One reverse step t -> s of MD4's ancestral sampler.  z [N, L], logits [N, L, V] -> [N, L]"""
    masked = z == mask_id
    p_unmask = 1.0 if last else (alpha_s - alpha_t) / (1 - alpha_t)
    unmask = masked & (uniform_draws(z.shape, generator, z.device, torch.float64) < p_unmask)
    proposal = categorical(logits, generator, temperature)
    return torch.where(unmask, proposal, z)


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
    """Yield z after every step (the all-mask start first); the last state has no mask ids.

    ``model`` needs ``denoiser``, ``schedule`` and ``mask_id`` (a :class:`MaskedDiffusion`).
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
        if not (z == model.mask_id).any():
            yield z
            continue
        t = torch.full((num_samples,), float(times[i]), device=device)
        with torch.no_grad():
            logits = model.denoiser(z, t)
        z = ancestral_step(z, logits, alphas[i], alphas[i + 1], i == steps - 1, model.mask_id, generator, temperature)
        yield z


def sample(model, num_samples: int, length: int, steps: int, **options) -> torch.Tensor:
    """The final state of :func:`iterate`.  -> LongTensor [num_samples, length]"""
    z = None
    for z in iterate(model, num_samples, length, steps, **options):
        pass
    return z

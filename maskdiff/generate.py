"""Text generation from a trained run: load the checkpoint, sample, decode."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from maskdiff.checkpoint import load_run
from maskdiff.errors import MaskdiffError
from maskdiff.hardware import autocast, resolve_device, resolve_precision
from maskdiff.sampling import iterate


@dataclass
class Generation:
    texts: list[str]
    seconds: float
    tokens_per_s: float


def generate_text(
    checkpoint: str | Path,
    num_samples: int = 4,
    length: int | None = None,
    steps: int = 256,
    seed: int = 0,
    grid: str = "cosine",
    temperature: float = 1.0,
    weights: str = "ema",
    device: str = "auto",
    precision: str = "auto",
    progress: bool = False,
    on_step: Callable[[int, list[str]], None] | None = None,
) -> Generation:
    """Sample ``num_samples`` texts of ``length`` tokens (default: the run's sequence length).

    ``on_step(i, texts)`` is called after every step with the partly unmasked texts, the
    mask shown as an underscore.
    """
    dev = resolve_device(device)
    run = load_run(checkpoint, weights=weights, device=dev)
    length = run.config.data.seq_len if length is None else length
    if steps < 1:
        raise MaskdiffError(f"steps must be >= 1, got {steps}")
    generator = torch.Generator(device=dev).manual_seed(seed)
    dtype = resolve_precision(precision, dev)
    start = time.perf_counter()
    z = None
    states = iterate(run.model, num_samples, length, steps, generator=generator, grid=grid, temperature=temperature, device=dev)
    with autocast(dev, dtype), tqdm(total=steps, desc="sample", disable=not progress, leave=False) as bar:
        for i, z in enumerate(states):
            if i > 0:
                bar.update()
            if on_step is not None:
                on_step(i, [decode_partial(run.tokenizer, row, run.model.mask_id) for row in z.tolist()])
    seconds = time.perf_counter() - start
    texts = [run.tokenizer.decode(row) for row in z.tolist()]
    return Generation(texts, seconds, num_samples * length / seconds)


def decode_partial(tokenizer, ids: list[int], mask_id: int, mask_char: str = "_") -> str:
    """Decode ids that may hold the mask id, shown as ``mask_char``."""
    return "".join(mask_char if i == mask_id else tokenizer.decode([i]) for i in ids)

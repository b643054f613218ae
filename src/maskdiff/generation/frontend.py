"""What text and image generation share: drive a run's model through every step of its sampler
under the right precision, with a progress bar, a per-step callback and the timing.

Modality adapters (:mod:`maskdiff.generation.text`, :mod:`maskdiff.generation.images`) build the
conditioning from their kind of input and turn the final state into their kind of output.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from maskdiff.errors import MaskdiffError
from maskdiff.hardware import autocast
from maskdiff.objectives import Objective
from maskdiff.sampling import SamplerOptions, Step, row_seeds


@dataclass
class Sampled:
    """The final state of a sampler run and how long it took."""

    final: Step
    seconds: float


def run_sampler(
    model: Objective,
    num_samples: int,
    length: int,
    steps: int,
    options: SamplerOptions,
    seed: int | Sequence[int] = 0,
    given: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
    on_step: Callable[[Step], None] | None = None,
    seeds: torch.Tensor | None = None,
) -> Sampled:
    """Run ``model.iterate`` to the end with seed ``seed``; ``on_step`` sees every state (the initial one included).

    ``seed`` may be one seed per sample: each sample then gets what it gets alone with its seed
    (:func:`maskdiff.sampling.row_seeds`). ``seeds`` [N] (:func:`maskdiff.sampling.stream_seeds`)
    give each row its own random stream instead of ``seed``'s, so rows of different requests can
    share a batch."""
    if not isinstance(seed, int):
        if seeds is not None:
            raise MaskdiffError("give one seed per sample or the stream seeds, not both")
        if len(seed) != num_samples:
            raise MaskdiffError(f"{len(seed)} seeds for {num_samples} samples: give one seed per sample")
        seeds, seed = row_seeds(seed), 0
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    states = model.iterate(num_samples, length, steps, given=given, generator=generator, device=device, options=options, labels=labels, seeds=seeds)
    with autocast(device or torch.device("cpu"), dtype):
        first = next(states)  # the initial state: a problem with the request shows here, before any progress bar
        step = first
        with tqdm(total=first.total, desc="sample", unit="step", disable=not progress, leave=False) as bar:
            for step in itertools.chain([first], states):
                bar.update(step.index - bar.n)
                bar.set_postfix(nfe=step.nfe)
                if on_step is not None:
                    on_step(step)
    return Sampled(step, time.perf_counter() - start)


def check_output_path(path: str | Path, what: str = "output") -> Path:
    """Refuse an output file that cannot be written, before any work is done.

    The file is opened for appending (and removed again if it did not exist), so a folder, a
    missing or read-only folder, or a path under /proc fails here, not after minutes of sampling.
    """
    path = Path(path)
    if path.is_dir():
        raise MaskdiffError(f"the {what} {str(path)!r} is a folder; give a file name")
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a"):
            pass
    except OSError as err:
        raise MaskdiffError(f"cannot write the {what} {str(path)!r}: {err.strerror or err}") from None
    if not existed:
        path.unlink(missing_ok=True)
    return path

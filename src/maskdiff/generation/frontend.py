"""What text and image generation share: drive a run's model through every step of its sampler
under the right precision, with a progress bar, a per-step callback and the timing.

Modality adapters (:mod:`maskdiff.generation.text`, :mod:`maskdiff.generation.images`) build the
conditioning from their kind of input and turn the final state into their kind of output.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from maskdiff.checkpoint import LoadedRun
from maskdiff.errors import MaskdiffError, plural
from maskdiff.hardware import autocast
from maskdiff.objectives import Objective
from maskdiff.sampling import SamplingRequest, Step


@dataclass
class Sampled:
    """The final state of a sampler run and how long it took."""

    final: Step
    seconds: float


def run_sampler(
    model: Objective,
    request: SamplingRequest,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
    on_step: Callable[[Step], None] | None = None,
) -> Sampled:
    """Run ``model.iterate`` for ``request`` to the end; ``on_step`` sees every state (the initial one included)."""
    start = time.perf_counter()
    states = request.states(model, device)
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


@dataclass
class TokenLogprobs:
    """Log-probabilities of the tokens of final states [N, L] (see :func:`token_logprobs`)."""

    chosen: torch.Tensor  # [N, L] float64, nan where not known (given positions of a diffusion model)
    top_ids: torch.Tensor | None = None  # [N, L, k] the k most likely tokens at each position
    top_values: torch.Tensor | None = None  # [N, L, k] their log-probabilities


def token_logprobs(model: Objective, final: Step, top: int = 0) -> TokenLogprobs:
    """The log-probability of each token of a finished sample, and of the ``top`` most likely
    alternatives where the model has them.

    An autoregressive model's are exact: log p(x_i | x_<i) under the model's own next-token
    distribution (temperature 1, no top-k/top-p), from one pass over the finished rows. A masked
    diffusion model has no such chain: its figure for a token is the log-probability of the value
    it drew under the prediction at the step that revealed it (after temperature, top-k and
    top-p), recorded by the sampler (:attr:`maskdiff.sampling.Step.logprobs`); it keeps no
    alternatives, so ``top`` > 0 is refused.
    """
    if model.left_to_right:
        causal: Any = model  # an autoregressive objective: predict(inputs) and shift_right(x0)
        with torch.no_grad():
            scores = causal.predict(causal.shift_right(final.z)).double().log_softmax(-1)
        chosen = scores.gather(-1, final.z.unsqueeze(-1)).squeeze(-1)
        if not top:
            return TokenLogprobs(chosen)
        values, ids = scores.topk(top, dim=-1)
        return TokenLogprobs(chosen, ids, values)
    if top:
        raise MaskdiffError("a masked diffusion model records the log-probability of each token it reveals, not of the alternatives")
    if final.logprobs is None:
        raise MaskdiffError("this model's sampler records no log-probabilities")
    return TokenLogprobs(final.logprobs)


def available_memory(device: torch.device | None) -> int | None:
    """Bytes free for tensors on ``device`` (CPU: the system's available memory); None if unknown."""
    if device is not None and device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def sampling_memory(run: LoadedRun, request: SamplingRequest) -> int:
    """A lower estimate of the bytes one network call of ``request`` needs at once: the logits
    (float32, with the guided mix and the softmax beside them) and the activations of one block
    of the network, plus the block-decoding KV cache. Attention is counted without an L x L score
    matrix (scaled_dot_product_attention's kernels do not build one), so this errs on the low side:
    it refuses only what cannot fit."""
    rows = request.rows * (2 if request.options.cfg else 1)  # a guided call runs both passes as one batch
    positions = rows * request.length
    model = run.config.model
    width, ratio, layers = getattr(model, "d_model", 0), getattr(model, "mlp_ratio", 4), getattr(model, "n_layers", 0)
    logits = 3 * positions * run.model.vocab_size * 4
    activations = positions * width * (6 + ratio) * 4
    kv = 2 * layers * positions * width * 4 if request.options.kv_cache != "none" or run.model.left_to_right else 0
    return logits + activations + kv


def check_memory(run: LoadedRun, request: SamplingRequest, device: torch.device | None) -> None:
    """Refuse, before anything runs, a request whose sampling cannot fit in the memory available."""
    needed, free = sampling_memory(run, request), available_memory(device)
    if free is not None and needed > free:
        raise MaskdiffError(
            f"{plural(request.rows, 'sample')} of {plural(request.length, 'token')} need at least {needed / 2**30:,.1f} GiB "
            f"for the network's activations and logits, more than the {free / 2**30:,.1f} GiB available "
            f"(the model was trained on {plural(run.config.data.seq_len, 'token')}); ask for fewer or shorter samples"
        )


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

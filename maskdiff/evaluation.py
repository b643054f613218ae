"""Likelihood evaluation: the NELBO over a set of sequences with its Monte Carlo standard error."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from maskdiff.checkpoint import load_run
from maskdiff.data import chunks, prepare_data, read_text
from maskdiff.errors import MaskdiffError
from maskdiff.hardware import autocast, resolve_device, resolve_precision


@dataclass
class EvalResult:
    """The NELBO bound of a set of sequences. Standard errors are over sequences."""

    bits_per_token: float
    bits_per_token_stderr: float
    nats_per_token: float
    perplexity: float
    perplexity_stderr: float
    num_sequences: int
    num_tokens: int
    samples_per_sequence: int
    timesteps: int | None

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_nelbo(
    model,
    sequences: torch.Tensor,
    batch_size: int = 32,
    samples: int = 1,
    timesteps: int | None = None,
    seed: int = 0,
    precision: torch.dtype | None = None,
    progress: bool = False,
) -> EvalResult:
    """Average ``samples`` one-sample NELBO estimates per sequence of ``sequences`` [N, L].

    Deterministic given ``seed``. The per-sequence estimates give the standard error of the
    mean (with a single sequence, the spread of its ``samples`` estimates does).
    """
    if samples < 1:
        raise MaskdiffError(f"the number of Monte Carlo samples must be >= 1, got {samples}")
    if batch_size < 1:
        raise MaskdiffError(f"batch size must be >= 1, got {batch_size}")
    if sequences.ndim != 2 or sequences.shape[0] == 0:
        raise MaskdiffError("nothing to evaluate: no complete sequence")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    num, length = sequences.shape
    per_sequence = torch.zeros(num, samples, dtype=torch.float64)
    was_training = model.training
    model.eval()
    total = math.ceil(num / batch_size) * samples
    with torch.no_grad(), tqdm(total=total, desc="eval", disable=not progress, leave=False) as bar:
        for k in range(samples):
            for start in range(0, num, batch_size):
                batch = sequences[start : start + batch_size].to(device)
                with autocast(device, precision):
                    nelbo = model.nelbo(batch, timesteps=timesteps, generator=generator)
                per_sequence[start : start + batch.shape[0], k] = nelbo.double().cpu()
                bar.update()
    model.train(was_training)
    nats = per_sequence.mean(dim=1) / length  # [N] nats per token
    if num > 1:
        stderr_nats = nats.std(unbiased=True).item() / math.sqrt(num)
    elif samples > 1:
        stderr_nats = (per_sequence[0] / length).std(unbiased=True).item() / math.sqrt(samples)
    else:
        stderr_nats = float("nan")
    mean_nats = nats.mean().item()
    ppl = math.exp(mean_nats)
    return EvalResult(
        bits_per_token=mean_nats / math.log(2),
        bits_per_token_stderr=stderr_nats / math.log(2),
        nats_per_token=mean_nats,
        perplexity=ppl,
        perplexity_stderr=ppl * stderr_nats,
        num_sequences=num,
        num_tokens=num * length,
        samples_per_sequence=samples,
        timesteps=timesteps,
    )


def evaluate_checkpoint(
    checkpoint,
    data: str | None = None,
    split: str = "test",
    samples: int = 1,
    timesteps: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
    length: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = False,
) -> tuple[EvalResult, dict]:
    """The NELBO of a run's model on a split of its own corpus or on any local text file.

    Returns the result and a description of what was evaluated (checkpoint, data, unit).
    """
    if timesteps is not None and timesteps < 1:
        raise MaskdiffError(f"timesteps must be >= 1, got {timesteps}")
    dev = resolve_device(device)
    run = load_run(checkpoint, device=dev)
    length = run.config.data.seq_len if length is None else length
    if length < 1:
        raise MaskdiffError(f"length must be >= 1, got {length}")
    if data:
        tokens = run.tokenizer.encode(read_text(data))
        source = str(data)
    else:
        _, splits = prepare_data(run.config.data, run.tokenizer)
        tokens = splits.get(split)
        source = f"{run.config.data.path or 'built-in corpus'} ({split} split)"
    result = evaluate_nelbo(
        run.model, chunks(tokens, length), batch_size, samples, timesteps, seed, resolve_precision(precision, dev), progress
    )
    info = {"checkpoint": str(run.checkpoint), "step": run.step, "data": source, "unit": run.tokenizer.unit}
    return result, info

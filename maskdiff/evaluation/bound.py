"""The NELBO over a set of sequences with its Monte Carlo standard error (or an exact model's NLL)."""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from maskdiff.errors import MaskdiffError
from maskdiff.evaluation.results import EvalResult, check_sequences, model_device, summarize
from maskdiff.hardware import autocast


def evaluate_nelbo(
    model,
    sequences: torch.Tensor,
    batch_size: int = 32,
    samples: int = 1,
    timesteps: int | None = None,
    seed: int = 0,
    precision: torch.dtype | None = None,
    progress: bool = False,
    loss_masks: torch.Tensor | None = None,
) -> EvalResult:
    """Average ``samples`` (K) one-sample NELBO estimates per sequence of ``sequences`` [N, L].

    t is stratified across each batch; ``timesteps=T`` gives the discrete-time bound.
    Deterministic given ``seed`` (and ``batch_size``, which sets the strata).

    ``loss_masks`` [N, L] (bool; prompt/response pairs) makes it the conditional bound of the
    scored positions given the others (the objective's ``loss_mask``), reported per scored token.

    A model whose ``estimator`` is ``"exact"`` (the autoregressive baseline) returns its exact
    negative log-likelihood: one deterministic value per sequence, so K > 1 and ``timesteps``
    are refused rather than silently ignored. The result carries the model's ``estimator``.
    """
    if samples < 1:
        raise MaskdiffError(f"the number of Monte Carlo samples must be >= 1, got {samples}")
    estimator = getattr(model, "estimator", "nelbo")
    if estimator == "exact" and (samples != 1 or timesteps is not None):
        raise MaskdiffError("this model's likelihood is exact (an autoregressive model): it takes neither --mc-samples > 1 nor --timesteps")
    check_sequences(sequences, batch_size)
    if loss_masks is not None and (loss_masks.shape != sequences.shape or not loss_masks.any(-1).all()):
        raise MaskdiffError("loss_masks must have the sequences' shape and score at least one token of each sequence")
    device = model_device(model)
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
                extra = {} if loss_masks is None else {"loss_mask": loss_masks[start : start + batch_size].to(device)}
                with autocast(device, precision):
                    nelbo = model.nelbo(batch, timesteps=timesteps, generator=generator, **extra)
                per_sequence[start : start + batch.shape[0], k] = nelbo.double().cpu()
                bar.update()
    model.train(was_training)
    return summarize(per_sequence, length, timesteps, estimator, None if loss_masks is None else loss_masks.sum(-1))

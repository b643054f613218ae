"""The NELBO over a set of sequences with its Monte Carlo standard error (or an exact model's NLL)."""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from maskdiff import distributed
from maskdiff.errors import MaskdiffError
from maskdiff.evaluation.results import EvalResult, check_sequences, model_device, summarize
from maskdiff.hardware import autocast
from maskdiff.objectives.estimator import Estimator


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
    ctx: distributed.Context | None = None,
) -> EvalResult:
    """Average ``samples`` (K) one-sample NELBO estimates per sequence of ``sequences`` [N, L].

    t is stratified across each batch; ``timesteps=T`` gives the discrete-time bound.
    Deterministic given ``seed`` and ``batch_size`` (which sets the strata): each batch draws its
    noise from its own generator, seeded from (``seed``, sample k, batch index).

    Under ``torchrun`` (``ctx``) the batches are split across the processes (batch b on process
    b mod world size) and the per-sequence values gathered, so every process returns the result
    of one process, error bars included, up to rounding. Every process calls it; with an
    FSDP-sharded model each runs the same number of forward passes (the last batch again where
    it has one fewer), since those are collective.

    ``loss_masks`` [N, L] (bool; prompt/response pairs) makes it the conditional bound of the
    scored positions given the others (the objective's ``loss_mask``), reported per scored token.

    A model whose ``estimator`` is exact (the autoregressive baseline) returns its exact
    negative log-likelihood: one deterministic value per sequence, so K > 1 and ``timesteps``
    are refused rather than silently ignored. The result carries the model's ``estimator``.
    """
    if samples < 1:
        raise MaskdiffError(f"the number of Monte Carlo samples must be >= 1, got {samples}")
    estimator = Estimator(getattr(model, "estimator", Estimator.NELBO))
    if not estimator.monte_carlo and (samples != 1 or timesteps is not None):
        raise MaskdiffError("this model's likelihood is exact (an autoregressive model): it takes neither --mc-samples > 1 nor --timesteps")
    check_sequences(sequences, batch_size)
    if loss_masks is not None and (loss_masks.shape != sequences.shape or not loss_masks.any(-1).all()):
        raise MaskdiffError("loss_masks must have the sequences' shape and score at least one token of each sequence")
    ctx = ctx or distributed.Context()
    device = model_device(model)
    num, length = sequences.shape
    starts = list(range(0, num, batch_size))
    work = [(k, b) for k in range(samples) for b in range(len(starts))]
    mine = work[ctx.rank :: ctx.world_size]
    if distributed.is_sharded(model):  # collective forward passes: the same count on every process
        rounds = math.ceil(len(work) / ctx.world_size)
        mine = mine + [(-1, mine[-1][1] if mine else 0)] * (rounds - len(mine))  # k = -1: run and discard
    per_sequence = torch.zeros(num, samples, dtype=torch.float64)
    was_training = model.training
    model.eval()
    # disable=None: no bar where stderr is not a terminal (a log)
    with torch.no_grad(), tqdm(total=len(mine), desc="eval", disable=None if progress else True, leave=False) as bar:
        for k, b in mine:
            start = starts[b]
            batch = sequences[start : start + batch_size].to(device)
            extra = {} if loss_masks is None else {"loss_mask": loss_masks[start : start + batch_size].to(device)}
            generator = torch.Generator(device=device).manual_seed(batch_seed(seed, max(k, 0), b))
            with autocast(device, precision):
                nelbo = model.nelbo(batch, timesteps=timesteps, generator=generator, **extra)
            if k >= 0:
                per_sequence[start : start + batch.shape[0], k] = nelbo.double().cpu()
            bar.update()
    model.train(was_training)
    if ctx.active:  # each value was computed by one process; the others hold 0 there
        per_sequence = distributed.total(per_sequence, ctx)
    return summarize(per_sequence, length, timesteps, estimator, None if loss_masks is None else loss_masks.sum(-1))


def batch_seed(seed: int, sample: int, batch: int) -> int:
    """The seed of the noise of batch ``batch`` in Monte Carlo sample ``sample`` of an evaluation with ``seed``."""
    return int(np.random.SeedSequence([seed, sample, batch]).generate_state(1, dtype=np.uint64)[0] >> 1)

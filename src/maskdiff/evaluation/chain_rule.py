"""Chain-rule log-likelihood: the exact log-likelihood of left-to-right unmasking (SMDM).

Decoding left to right, one token per network call, defines a proper distribution over
sequences, so its log-likelihood is exact (no bound, no Monte Carlo)::

    log p_LR(x) = sum_i log mu(z^(i), t_i)_i[x_i],   z^(i) = (x_1..x_{i-1}, mask, ..., mask)

It costs L network calls per sequence of L tokens (meant for short sequences) and is the
likelihood of that decoding order, not of the diffusion model's random order; with the exact
conditionals of a distribution p it equals log p(x). The network sees the time t_i at which
the expected fraction of unmasked tokens, alpha(t_i), is (i - 1)/L.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from maskdiff.errors import MaskdiffError
from maskdiff.evaluation.results import EvalResult, check_sequences, model_device, summarize
from maskdiff.hardware import autocast
from maskdiff.objectives.estimator import Estimator


def time_for_alpha(schedule, target: torch.Tensor, iterations: int = 60) -> torch.Tensor:
    """t in [0, 1] with alpha(t) = target (clipped to alpha's range), by bisection; alpha decreases.

    With a schedule per token value (GenMD4) alpha is averaged over the values.
    """
    lo = torch.zeros_like(target, dtype=torch.float64)
    hi = torch.ones_like(target, dtype=torch.float64)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        alpha = schedule.alpha(mid).detach()
        if alpha.ndim > mid.ndim:
            alpha = alpha.mean(-1)
        above = alpha > target  # still too early: move right
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return (lo + hi) / 2


def check_chain_rule(model) -> None:
    """Refuse a model whose own likelihood is exact (the autoregressive baseline): the chain rule is for diffusion models."""
    if not Estimator(getattr(model, "estimator", Estimator.NELBO)).is_bound:
        raise MaskdiffError(
            "--chain-rule is for masked diffusion models; this run is autoregressive and its likelihood is already exact (drop --chain-rule)"
        )


def chain_rule_log_likelihood(
    model,
    sequences: torch.Tensor,
    batch_size: int = 32,
    precision: torch.dtype | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """log p(x) in nats of each sequence [N, L] under left-to-right unmasking.  -> float64 [N]

    ``model`` needs ``predict``, ``schedule`` and ``mask_id`` (a :class:`~maskdiff.objectives.DiffusionModel`).
    ``batch_size`` network inputs (one per (sequence, position) pair) go into each call.
    """
    check_chain_rule(model)
    check_sequences(sequences, batch_size)
    device = model_device(model)
    num, length = sequences.shape
    revealed = torch.arange(length, dtype=torch.float64)  # tokens already revealed at step i
    times = time_for_alpha(model.schedule, (revealed / length).to(device)).float()  # [L], where the schedule's parameters are
    positions = torch.arange(length, device=device)
    sequences = sequences.to(device)
    log_p = torch.zeros(num, dtype=torch.float64, device=device)
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    total = num * length
    # disable=None: no bar where stderr is not a terminal (a log)
    with torch.no_grad(), tqdm(total=total, desc="chain rule", unit="token", disable=None if progress else True, leave=False) as bar:
        for start in range(0, total, batch_size):
            pair = torch.arange(start, min(start + batch_size, total), device=device)
            n, i = pair // length, pair % length  # sequence and position of each input
            x = sequences[n]  # [b, L]
            z = torch.where(positions[None] < i[:, None], x, model.mask_id)  # x_<i kept, the rest masked
            with autocast(device, precision):
                logits = model.predict(z, times[i])  # [b, L, V]
            rows = torch.arange(pair.numel(), device=device)
            logits_i = logits[rows, i].double()  # [b, V]: only position i is scored
            token_log_p = torch.log_softmax(logits_i, dim=-1).gather(-1, x[rows, i, None]).squeeze(-1)
            log_p.index_add_(0, n, token_log_p)
            bar.update(pair.numel())
    if hasattr(model, "train"):
        model.train(was_training)
    if not torch.isfinite(log_p).all():
        raise MaskdiffError("the chain-rule likelihood is not finite: the model gives probability 0 to a token")
    return log_p.cpu()


def evaluate_chain_rule(
    model,
    sequences: torch.Tensor,
    batch_size: int = 32,
    precision: torch.dtype | None = None,
    progress: bool = False,
) -> EvalResult:
    """The chain-rule negative log-likelihood of ``sequences`` [N, L] per token, as an EvalResult
    (``Estimator.CHAIN_RULE``, one deterministic estimate per sequence)."""
    log_p = chain_rule_log_likelihood(model, sequences, batch_size, precision, progress)
    return summarize(-log_p[:, None], sequences.shape[1], estimator=Estimator.CHAIN_RULE)

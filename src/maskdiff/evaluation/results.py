"""What an evaluation reports: a likelihood (or bound) per token with its standard errors."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from maskdiff.errors import MaskdiffError
from maskdiff.objectives.estimator import Estimator


@dataclass
class EvalResult:
    """A likelihood bound (or an exact likelihood: chain rule, autoregressive model) of a set of sequences, per token.

    ``*_stderr`` is the standard error over sequences (it includes how much sequences differ,
    so it does not vanish as K grows); ``bits_per_token_mc_stderr`` is the Monte Carlo error
    alone for these fixed sequences, which shrinks like 1/sqrt(K) (None when K = 1).
    """

    bits_per_token: float
    bits_per_token_stderr: float
    bits_per_token_mc_stderr: float | None
    nats_per_token: float
    perplexity: float
    perplexity_stderr: float
    num_sequences: int
    num_tokens: int
    samples_per_sequence: int
    timesteps: int | None
    estimator: Estimator = Estimator.NELBO  # a Monte Carlo bound, the exact chain rule of left-to-right unmasking, or an ARM's exact NLL

    @property
    def has_error_bar(self) -> bool:
        """False when one deterministic estimate of one sequence leaves nothing to measure the error with."""
        return not math.isnan(self.bits_per_token_stderr)

    def bits_figure(self, unit: str) -> str:
        """The figure per token with its standard error, e.g. "1.2345 ± 0.0123 bits/char" (never "± nan")."""
        if not self.has_error_bar:
            return f"{self.bits_per_token:.4f} bits/{unit} (no error bar: a single estimate)"
        return f"{self.bits_per_token:.4f} ± {self.bits_per_token_stderr:.4f} bits/{unit}"

    def perplexity_figure(self, digits: int = 4) -> str:
        """The perplexity (or its bound) with its standard error, e.g. "31.2813 ± 15.2606" (never "± nan")."""
        if not self.has_error_bar:
            return f"{self.perplexity:.{digits}f}"
        return f"{self.perplexity:.{digits}f} ± {self.perplexity_stderr:.{digits}f}"

    def how_estimated(self) -> str:
        """How the figure was estimated: "8 Monte Carlo draws each", "one pass each", ..."""
        return self.estimator.cost(self.samples_per_sequence)

    def to_dict(self) -> dict:
        """Plain values for JSON; NaN (a standard error from a single estimate) becomes None."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def summarize(
    per_sequence: torch.Tensor,
    length: int,
    timesteps: int | None = None,
    estimator: Estimator = Estimator.NELBO,
    scored: torch.Tensor | None = None,
) -> EvalResult:
    """EvalResult from nats per sequence [N, K] (K estimates of each of N sequences of ``length`` tokens).

    ``estimator`` names what the numbers are: Monte Carlo bounds, or exact values (the chain
    rule, an autoregressive model's; deterministic, so their Monte Carlo error is 0). ``scored`` [N] counts the
    tokens each sequence's value covers when not all ``length`` are (prompt/response pairs score
    the responses): the result is then per scored token, the total over the total, with the
    standard error of that ratio (delta method).
    """
    estimator = Estimator(estimator)
    if scored is not None:
        return _summarize_scored(per_sequence, scored.double(), timesteps, estimator)
    num, samples = per_sequence.shape
    per_token = per_sequence.double() / length  # [N, K]
    nats = per_token.mean(dim=1)  # [N]
    if num > 1:
        stderr_nats = nats.std(unbiased=True).item() / math.sqrt(num)
    elif samples > 1:  # one sequence: the spread of its own estimates
        stderr_nats = per_token[0].std(unbiased=True).item() / math.sqrt(samples)
    else:
        stderr_nats = float("nan")
    if not estimator.monte_carlo:
        mc_stderr = 0.0  # deterministic
    elif samples > 1:
        # Var(mean) = mean_n Var_k / (K N) for independent draws; stratified t makes the draws
        # of one batch negatively correlated, so this is conservative
        mc_stderr = math.sqrt(per_token.var(dim=1, unbiased=True).mean().item() / (samples * num)) / math.log(2)
    else:
        mc_stderr = None
    return _result(nats.mean().item(), stderr_nats, mc_stderr, num, num * length, samples, timesteps, estimator)


def _summarize_scored(per_sequence: torch.Tensor, scored: torch.Tensor, timesteps: int | None, estimator: Estimator) -> EvalResult:
    """:func:`summarize` for sequences that score ``scored`` [N] tokens each: the ratio of totals."""
    num, samples = per_sequence.shape
    per_sequence = per_sequence.double()
    nats_seq = per_sequence.mean(dim=1)  # [N]
    mean_nats = (nats_seq.sum() / scored.sum()).item()
    # Var(sum a / sum b) ~ Var(a - r b) / (N mean(b)^2) over sequences
    if num > 1:
        stderr_nats = ((nats_seq - mean_nats * scored).std(unbiased=True) / (math.sqrt(num) * scored.mean())).item()
    elif samples > 1:
        stderr_nats = (per_sequence[0].std(unbiased=True) / (math.sqrt(samples) * scored[0])).item()
    else:
        stderr_nats = float("nan")
    if not estimator.monte_carlo:
        mc_stderr: float | None = 0.0
    elif samples > 1:
        mc_stderr = math.sqrt(per_sequence.var(dim=1, unbiased=True).sum().item() / samples) / scored.sum().item() / math.log(2)
    else:
        mc_stderr = None
    return _result(mean_nats, stderr_nats, mc_stderr, num, int(scored.sum().item()), samples, timesteps, estimator)


def _result(
    mean_nats: float,
    stderr_nats: float,
    mc_stderr: float | None,
    num: int,
    num_tokens: int,
    samples: int,
    timesteps: int | None,
    estimator: Estimator,
) -> EvalResult:
    """The EvalResult of a mean in nats per token and its standard errors, in bits and as perplexity."""
    ppl = math.exp(mean_nats)
    return EvalResult(
        bits_per_token=mean_nats / math.log(2),
        bits_per_token_stderr=stderr_nats / math.log(2),
        bits_per_token_mc_stderr=mc_stderr,
        nats_per_token=mean_nats,
        perplexity=ppl,
        perplexity_stderr=ppl * stderr_nats,
        num_sequences=num,
        num_tokens=num_tokens,
        samples_per_sequence=samples,
        timesteps=timesteps,
        estimator=estimator,
    )


def model_device(model) -> torch.device:
    """Where a model's parameters live (the CPU for a parameter-free model such as an oracle)."""
    return next(iter(model.parameters()), torch.empty(0)).device


def check_sequences(sequences: torch.Tensor, batch_size: int) -> None:
    if batch_size < 1:
        raise MaskdiffError(f"batch size must be >= 1, got {batch_size}")
    if sequences.ndim != 2 or sequences.shape[0] == 0 or sequences.shape[1] == 0:
        raise MaskdiffError("nothing to evaluate: no complete sequence")

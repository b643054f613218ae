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
    """A likelihood bound (or exact chain-rule likelihood) of a set of sequences, per token.

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
    estimator: str = "nelbo"  # "nelbo" (Monte Carlo bound) or "chain_rule" (exact, left to right)

    def to_dict(self) -> dict:
        """Plain values for JSON; NaN (a standard error from a single estimate) becomes None."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def summarize(per_sequence: torch.Tensor, length: int, timesteps: int | None = None, estimator: str = "nelbo") -> EvalResult:
    """EvalResult from nats per sequence [N, K] (K estimates of each of N sequences of ``length`` tokens)."""
    num, samples = per_sequence.shape
    per_token = per_sequence.double() / length  # [N, K]
    nats = per_token.mean(dim=1)  # [N]
    if num > 1:
        stderr_nats = nats.std(unbiased=True).item() / math.sqrt(num)
    elif samples > 1:  # one sequence: the spread of its own estimates
        stderr_nats = per_token[0].std(unbiased=True).item() / math.sqrt(samples)
    else:
        stderr_nats = float("nan")
    if estimator != "nelbo":
        mc_stderr = 0.0  # deterministic
    elif samples > 1:
        # Var(mean) = mean_n Var_k / (K N) for independent draws; stratified t makes the draws
        # of one batch negatively correlated, so this is conservative
        mc_stderr = math.sqrt(per_token.var(dim=1, unbiased=True).mean().item() / (samples * num)) / math.log(2)
    else:
        mc_stderr = None
    mean_nats = nats.mean().item()
    ppl = math.exp(mean_nats)
    return EvalResult(
        bits_per_token=mean_nats / math.log(2),
        bits_per_token_stderr=stderr_nats / math.log(2),
        bits_per_token_mc_stderr=mc_stderr,
        nats_per_token=mean_nats,
        perplexity=ppl,
        perplexity_stderr=ppl * stderr_nats,
        num_sequences=num,
        num_tokens=num * length,
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
    """Average ``samples`` (K) one-sample NELBO estimates per sequence of ``sequences`` [N, L].

    t is stratified across each batch; ``timesteps=T`` gives the discrete-time bound.
    Deterministic given ``seed`` (and ``batch_size``, which sets the strata).
    """
    if samples < 1:
        raise MaskdiffError(f"the number of Monte Carlo samples must be >= 1, got {samples}")
    check_sequences(sequences, batch_size)
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
                with autocast(device, precision):
                    nelbo = model.nelbo(batch, timesteps=timesteps, generator=generator)
                per_sequence[start : start + batch.shape[0], k] = nelbo.double().cpu()
                bar.update()
    model.train(was_training)
    return summarize(per_sequence, length, timesteps)


def encode_corpus(tokenizer, text: str, source: str, skip_unknown: bool = False) -> tuple[torch.Tensor, dict]:
    """Token ids of ``text``; characters the tokenizer cannot encode are refused (naming them
    and their counts) unless ``skip_unknown``, which drops them.  -> (ids, {char: count dropped})"""
    problem = tokenizer.describe_unknown(text) if hasattr(tokenizer, "describe_unknown") else None
    if problem is None:
        return tokenizer.encode(text), {}
    if not skip_unknown:
        raise MaskdiffError(f"{source} has {problem}; pass --skip-unknown to drop them")
    skipped = dict(tokenizer.unknown(text).most_common())
    return tokenizer.encode(tokenizer.drop_unknown(text)), skipped


def evaluate_checkpoint(
    checkpoint,
    data: str | None = None,
    split: str = "test",
    mc_samples: int = 1,
    timesteps: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
    length: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = False,
    skip_unknown: bool = False,
    chain_rule: bool = False,
    max_sequences: int | None = None,
) -> tuple[EvalResult, dict]:
    """The likelihood of a run's model on a split of its own corpus or on any local text file.

    Default: the NELBO bound with ``mc_samples`` (K) Monte Carlo samples per sequence
    (continuous time, or discrete time with ``timesteps``). ``chain_rule``: the exact
    log-likelihood of left-to-right unmasking instead (:mod:`maskdiff.likelihood`). A ``data``
    file is read through the checkpoint's tokenizer (zero-shot evaluation); characters it cannot
    encode are an error unless ``skip_unknown``. ``max_sequences`` evaluates only the first N.

    Returns the result and a description of what was evaluated (checkpoint, data, unit, ...).
    """
    if mc_samples < 1:
        raise MaskdiffError(f"the number of Monte Carlo samples must be >= 1, got {mc_samples}")
    if timesteps is not None and timesteps < 1:
        raise MaskdiffError(f"timesteps must be >= 1, got {timesteps}")
    if chain_rule and (timesteps is not None or mc_samples != 1):
        raise MaskdiffError("the chain-rule likelihood is exact: it takes neither --timesteps nor --mc-samples")
    if max_sequences is not None and max_sequences < 1:
        raise MaskdiffError(f"max sequences must be >= 1, got {max_sequences}")
    dev = resolve_device(device)
    run = load_run(checkpoint, device=dev)
    length = run.config.data.seq_len if length is None else length
    if length < 1:
        raise MaskdiffError(f"length must be >= 1, got {length}")
    skipped: dict = {}
    if data:
        source = str(data)
        tokens, skipped = encode_corpus(run.tokenizer, read_text(data), f"corpus {source!r}", skip_unknown)
    else:
        _, splits = prepare_data(run.config.data, run.tokenizer)
        tokens = splits.get(split)
        source = f"{run.config.data.path or 'built-in corpus'} ({split} split)"
    sequences = chunks(tokens, length)[:max_sequences]
    dtype = resolve_precision(precision, dev)
    if chain_rule:
        from maskdiff.likelihood import evaluate_chain_rule

        result = evaluate_chain_rule(run.model, sequences, batch_size, dtype, progress)
    else:
        result = evaluate_nelbo(run.model, sequences, batch_size, mc_samples, timesteps, seed, dtype, progress)
    info = {
        "checkpoint": str(run.checkpoint),
        "step": run.step,
        "data": source,
        "unit": run.tokenizer.unit,
        "seed": seed,
        "precision": "bf16" if dtype == torch.bfloat16 else "fp32",
        "skipped_characters": sum(skipped.values()),
        "skipped": skipped,
    }
    return result, info

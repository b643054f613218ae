"""``maskdiff eval --checkpoint``: the likelihood of a trained run on a split of its data or on a text file."""

from __future__ import annotations

import os
import sys

import torch

from maskdiff import distributed
from maskdiff.checkpoint import load_run
from maskdiff.data import chunks, evaluation_sequences, prepare_data, read_text
from maskdiff.data.pairs import encode_pairs, read_pairs
from maskdiff.data.shards import is_prepared, read_prepared
from maskdiff.errors import MaskdiffError, plural
from maskdiff.evaluation.bound import evaluate_nelbo
from maskdiff.evaluation.chain_rule import check_chain_rule, evaluate_chain_rule
from maskdiff.evaluation.results import EvalResult
from maskdiff.hardware import resolve_device, resolve_precision
from maskdiff.tokenizer import CharTokenizer


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
    log-likelihood of left-to-right unmasking instead (:mod:`maskdiff.evaluation.chain_rule`); refused
    for an autoregressive run, whose likelihood is exact already (its ``estimator``; it also
    refuses ``mc_samples`` > 1 and ``timesteps``). A ``data``
    file is read through the checkpoint's tokenizer (zero-shot evaluation); characters it cannot
    encode are an error unless ``skip_unknown``. ``max_sequences`` evaluates only the first N.

    A ``data`` folder written by ``maskdiff prepare`` is read as it was prepared (its ``split``;
    ``test`` and ``valid`` both name its validation split); it must have been tokenized with the
    run's own tokenizer.

    A run trained on padded examples (prompt/response pairs, ``data.format=pairs``) is evaluated on them: its
    own splits, or a ``data`` JSONL file of them, with the bound (or exact likelihood) of each
    response and its end-of-text given the prompt, per scored token; every example is one
    sequence of the run's length (``length`` cannot change) and ``chain_rule`` is refused.

    Under ``torchrun`` the bound's batches are split across the processes (each loads the whole
    model) and every process returns the result of one process, up to rounding.

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
    if dev.type == "cuda" and "LOCAL_RANK" in os.environ:  # under torchrun: one GPU per process
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    run = load_run(checkpoint, device=dev)
    if chain_rule:
        check_chain_rule(run.model)
    length = run.config.data.seq_len if length is None else length
    if length < 1:
        raise MaskdiffError(f"length must be >= 1, got {length}")
    skipped: dict = {}
    masks = None
    data_format = run.config.data.data_format
    pairs = data_format.padded_examples
    if pairs and (length != run.config.data.seq_len or chain_rule):
        raise MaskdiffError(
            "this run was trained on prompt/response pairs: it is evaluated on its examples as they were padded "
            f"(length {run.config.data.seq_len}), with the bound of each response given its prompt; drop --length and --chain-rule"
        )
    if data and pairs:
        source = str(data)
        assert isinstance(run.tokenizer, CharTokenizer)  # pairs are text
        sequences, masks = encode_pairs(read_pairs(data), run.tokenizer, run.config.data.eos, length, data)
    elif data and is_prepared(data):
        _, prepared = read_prepared(data, run.tokenizer)  # refused unless tokenized with the run's tokenizer
        sequences = chunks(prepared.get(split), length)
        source = f"{data} ({'train' if split == 'train' else 'validation'} split)"
    elif data:
        source = str(data)
        tokens, skipped = encode_corpus(run.tokenizer, read_text(data), f"corpus {source!r}", skip_unknown)
        sequences = chunks(tokens, length)
    else:
        _, splits = prepare_data(run.config.data, run.tokenizer)
        sequences, masks = evaluation_sequences(splits, split, length)  # masks: the scored part of padded examples
        shown = "validation" if not data_format.test_split and split == "test" else split  # prepared data hold no test split
        source = f"{run.config.data.path or 'built-in corpus'} ({shown} split)"
    sequences = sequences[:max_sequences]
    masks = None if masks is None else masks[:max_sequences]
    if len(sequences) < 2 and distributed.launched_rank() == 0:
        print(
            f"maskdiff: warning: {source} gives {plural(len(sequences), 'sequence')}: too few for an error bar that covers how sequences differ",
            file=sys.stderr,
        )
    dtype = resolve_precision(precision, dev)
    if chain_rule:
        result = evaluate_chain_rule(run.model, sequences, batch_size, dtype, progress)
    else:
        ctx, _ = distributed.setup(dev)  # dev is this process's device already (see evaluate_checkpoint)
        try:
            result = evaluate_nelbo(run.model, sequences, batch_size, mc_samples, timesteps, seed, dtype, progress and ctx.is_main, masks, ctx)
        finally:
            distributed.teardown(ctx)
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

"""Conditional fine-tuning (``maskdiff finetune``): a new run that starts from a trained one and
trains on prompt/response pairs with the same trainer.

The new run's config is the source run's (network, objective, optimizer, seed) with the data
switched to ``data.format=pairs`` (maskdiff/data/pairs.py: the prompt and the padding given, the
response and its end-of-text scored) and shorter, gentler training (:data:`FINETUNE_TRAIN`);
``--set`` may change the training keys and the pairs' sequence length and hold-out fractions.
The model and its EMA start from the source's EMA (or raw) weights, the vocabulary is the
source's (its embedding fits only that), and RUN/finetune.json records where the run started.
From then on it is an ordinary run: :func:`maskdiff.training.train` trains, checkpoints and
resumes it bit-exactly, and its config.json holds the end-of-text character (``data.eos``), at
which ``maskdiff sample`` cuts its samples.
"""

from __future__ import annotations

import time
from pathlib import Path

from maskdiff.checkpoint import checkpoint_step, has_weights, resolve_checkpoint
from maskdiff.config import RunConfig
from maskdiff.data.pairs import read_pairs, split_files
from maskdiff.errors import MaskdiffError, plural
from maskdiff.tokenizer import CharTokenizer, load_tokenizer
from maskdiff.training.loop import StartFrom, TrainResult, train

# the training section of a fine-tuning run before --set: a tenth of the source's learning rate
# (set in finetune_config) and these
FINETUNE_TRAIN = {"steps": 200, "warmup_steps": 20, "eval_every": 100, "checkpoint_every": 100}
# what --set may change: how the run trains, and how the pairs are cut and held out
FINETUNE_KEYS = ("train.", "data.seq_len", "data.valid_fraction", "data.test_fraction")


def finetune_config(source: RunConfig, data: str | Path, eos: str, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """The config of a fine-tuning run of ``source`` on the pairs in ``data`` with end-of-text ``eos``."""
    refused = [item.partition("=")[0].strip() for item in overrides if not item.partition("=")[0].strip().startswith(FINETUNE_KEYS)]
    if refused:
        raise MaskdiffError(
            f"fine-tuning keeps the source run's network, objective and vocabulary: --set may change train.*, data.seq_len, "
            f"data.valid_fraction and data.test_fraction, not {', '.join(refused)} (the data and its end of text are --data and --eos)"
        )
    raw = source.to_dict()
    raw["data"].update(format="pairs", path=str(data), eos=eos)
    raw["train"].update(FINETUNE_TRAIN, lr=source.train.lr / 10)
    return RunConfig.from_dict(raw).with_overrides(list(overrides))


def default_run_dir(source_run: Path) -> Path:
    """Next to the source run: ``SOURCE-ft-TIMESTAMP``."""
    return source_run.parent / f"{source_run.name}-ft-{time.strftime('%Y%m%d-%H%M%S')}"


def unused_characters(tokenizer: CharTokenizer, data: str | Path) -> list[str]:
    """Characters of the vocabulary that no prompt or response of ``data`` uses (end-of-text candidates)."""
    texts = "".join(p.prompt + p.response for file in split_files(Path(data)).values() for p in read_pairs(file))
    return [c for c in tokenizer.chars if c not in texts]


def finetune(
    checkpoint: str | Path,
    data: str | Path,
    eos: str | None,
    run_dir: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    weights: str = "ema",
    progress: bool = True,
) -> TrainResult:
    """Fine-tune the run in ``checkpoint`` (a run folder or one of its checkpoints) on the pairs in
    ``data`` (a JSONL file or a folder with train.jsonl), in a new run folder ``run_dir``
    (default: next to the source run). ``eos`` is the end-of-text character, one character of the
    source's vocabulary; ``weights`` "ema" (default; the raw weights when the run has no EMA) or "raw".
    """
    if weights not in ("ema", "raw"):
        raise MaskdiffError(f"weights must be ema or raw, not {weights!r}")
    source_run, source_checkpoint = resolve_checkpoint(checkpoint)
    source = RunConfig.load(source_run / "config.json")
    source.data.data_format.require_text(source_run, "fine-tuning on prompt/response pairs needs a text run")
    tokenizer = load_tokenizer(source_run / "tokenizer.json")
    if not isinstance(tokenizer, CharTokenizer):
        raise MaskdiffError(f"{source_run} has no character vocabulary; fine-tuning on prompt/response pairs needs a text run")
    if eos is None:
        unused = unused_characters(tokenizer, data)
        hint = f"; characters of its vocabulary that the pairs never use: {', '.join(map(repr, unused[:12]))}" if unused else ""
        raise MaskdiffError(
            "--eos CHAR is needed: the end-of-text character that ends every response, one character of the source run's "
            f"vocabulary (its {plural(tokenizer.vocab_size, 'character')} are fixed){hint}"
        )
    cfg = finetune_config(source, data, eos, overrides)
    which = "ema" if weights == "ema" and has_weights(source_checkpoint, "ema") else "model"  # a run without EMA: its raw weights
    record = {
        "source_run": str(source_run),
        "source_checkpoint": str(source_checkpoint),
        "source_step": checkpoint_step(source_checkpoint),
        "weights": f"{which}.safetensors",
        "data": str(data),
        "eos": eos,
    }
    out = Path(run_dir) if run_dir is not None else default_run_dir(source_run)
    return train(cfg, out, progress=progress, start_from=StartFrom(source_checkpoint, which, tokenizer, record))

"""`maskdiff train` and `maskdiff finetune`: a run trained (or continued) through :func:`maskdiff.training.train`."""

from __future__ import annotations

import json
import time
from pathlib import Path

from maskdiff.checkpoint import checkpoint_step, latest_checkpoint
from maskdiff.cli.common import Subcommands, add_resume, add_threads
from maskdiff.config import RunConfig
from maskdiff.errors import MaskdiffError
from maskdiff.presets import get_preset
from maskdiff.training import check_resume_config, finetune, train
from maskdiff.training.loop import StartFrom, TrainResult


def cmd_train(args) -> int:
    overrides = list(args.set or [])
    if args.data is not None:
        overrides.append(f"data.path={args.data}")
    if args.resume is not None and args.out is None:
        raise MaskdiffError(f"--resume{' auto' if args.resume == 'auto' else ''} needs --out DIR, the run folder to continue")
    latest = latest_checkpoint(Path(args.out)) if args.out else None
    # --resume auto: continue the run in --out if it has a checkpoint, else start it
    resume = args.resume == "yes" or (args.resume == "auto" and latest is not None)
    if resume:
        run_dir = Path(args.out)
        cfg = RunConfig.load(run_dir / "config.json")
        if args.preset is not None and args.preset != cfg.preset:
            raise MaskdiffError(
                f"{run_dir} holds a run of preset {cfg.preset!r}, not {args.preset!r}: resume it with --preset {cfg.preset} "
                "(or no --preset), or start the other preset in another --out"
            )
        cfg = cfg.with_overrides(overrides)
        check_resume_config(run_dir, cfg)
        if args.resume == "auto" and latest is not None and checkpoint_step(latest) >= cfg.train.steps:
            print(f"{run_dir} already finished {checkpoint_step(latest)} of train.steps={cfg.train.steps} steps; nothing to do")
            return 0
    else:
        cfg = get_preset(args.preset or "tiny").with_overrides(overrides)
        run_dir = Path(args.out) if args.out else Path("runs") / f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    result = train(cfg, run_dir, resume=resume, progress=not args.quiet)
    return report_training(result, "train")


def report_training(result: TrainResult, command: str) -> int:
    """What `train` and `finetune` print at the end of a run (or when a signal stopped it)."""
    if not result.is_main:
        return 0
    if result.stopped_by is not None:
        print(
            f"stopped by {result.stopped_by} after step {result.steps}; checkpoint: {result.checkpoint}\n"
            f"resume with: maskdiff {command} --out {result.run_dir} --resume"
        )
        return 0
    v = result.valid
    assert v is not None  # a run that was not stopped early ends with its validation bound
    what, relation = ("NELBO", "<=") if v.estimator == "nelbo" else ("NLL", "=")  # a bound, or an autoregressive model's exact value
    print(
        f"done: {result.steps} steps; validation {what} {v.bits_per_token:.4f} ± {v.bits_per_token_stderr:.4f} "
        f"bits/{result.unit} (perplexity {relation} {v.perplexity:.3f}) over {v.num_tokens:,} tokens\n"
        f"checkpoint: {result.checkpoint}\n"
        f"loss curve: {result.run_dir / 'loss.png'}\n"
        f"next: maskdiff sample --checkpoint {result.run_dir}   |   maskdiff eval --checkpoint {result.run_dir}"
    )
    return 0


def cmd_finetune(args) -> int:
    if args.resume is not None and args.out is None:
        raise MaskdiffError(f"--resume{' auto' if args.resume == 'auto' else ''} needs --out DIR, the fine-tuning run to continue")
    latest = latest_checkpoint(Path(args.out)) if args.out else None
    resume = args.resume == "yes" or (args.resume == "auto" and latest is not None)
    if not resume:
        missing = [flag for flag, value in (("--checkpoint RUN", args.checkpoint), ("--data PAIRS", args.data)) if value is None]
        if missing:
            raise MaskdiffError(f"a new fine-tuning run needs {' and '.join(missing)} (or --out DIR --resume to continue one)")
        result = finetune(args.checkpoint, args.data, args.eos, args.out, list(args.set or []), args.weights, progress=not args.quiet)
        return report_training(result, "finetune")
    # continue the run in --out exactly like `maskdiff train --resume`: --data and --eos, when
    # given, must be the run's own (a change is refused with both values), as must --checkpoint
    run_dir = Path(args.out)
    overrides = list(args.set or [])
    overrides += [f"data.path={args.data}"] if args.data is not None else []
    overrides += [f"data.eos={args.eos}"] if args.eos is not None else []
    cfg = RunConfig.load(run_dir / "config.json").with_overrides(overrides)
    if cfg.data.format != "pairs":
        raise MaskdiffError(f"{run_dir} is not a fine-tuning run (its data format is {cfg.data.format}); continue it with maskdiff train --resume")
    check_resume_config(run_dir, cfg)
    if args.checkpoint is not None:
        record = json.loads((run_dir / StartFrom.FILE).read_text(encoding="utf-8")) if (run_dir / StartFrom.FILE).is_file() else {}
        started = record.get("source_run")
        if started is not None and Path(args.checkpoint).resolve() not in {Path(started).resolve(), Path(record["source_checkpoint"]).resolve()}:
            raise MaskdiffError(f"{run_dir} was fine-tuned from {started}, not {args.checkpoint}; drop --checkpoint to continue it")
    if args.resume == "auto" and latest is not None and checkpoint_step(latest) >= cfg.train.steps:
        print(f"{run_dir} already finished {checkpoint_step(latest)} of train.steps={cfg.train.steps} steps; nothing to do")
        return 0
    return report_training(train(cfg, run_dir, resume=True, progress=not args.quiet), "finetune")


def add_train_parsers(sub: Subcommands) -> None:
    p = sub.add_parser(
        "train",
        help="train a model",
        description="Train a masked diffusion model. Without arguments: the 'tiny' preset on the built-in Shakespeare corpus.",
    )
    p.add_argument("--preset", help="named config (see `maskdiff presets`; default: tiny)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. train.steps=200 (repeatable)")
    p.add_argument("--data", metavar="FILE", help="UTF-8 text file to train on (same as --set data.path=FILE)")
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/PRESET-TIMESTAMP)")
    add_resume(p, "the run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads(p)
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser(
        "finetune",
        help="fine-tune a text run on prompt/response pairs",
        description="Conditional fine-tuning (SMDM): a new run that starts from RUN's EMA (or raw) weights and trains on "
        'JSONL pairs {"prompt": ..., "response": ...}. Each example is prompt + response + end of text, padded with the '
        "end of text to the sequence length; only the response and its end of text are scored (a diffusion model never "
        "masks the prompt or the padding; an autoregressive one does not score them). The new run keeps RUN's network, "
        "objective and vocabulary; it trains 200 steps at a tenth of RUN's learning rate (change with --set train.*), "
        "resumes like any run (--out DIR --resume), and its samples stop at the end of text.",
    )
    p.add_argument("--checkpoint", metavar="RUN", help="the run to start from: a run folder or one of its checkpoints (a new run)")
    p.add_argument("--data", metavar="PAIRS", help="JSONL file of prompt/response pairs, or a folder with train.jsonl (valid.jsonl, test.jsonl)")
    p.add_argument(
        "--eos",
        metavar="CHAR",
        help="end-of-text character: one character of RUN's vocabulary that the pairs never use (an error names candidates)",
    )
    p.add_argument("--out", metavar="DIR", help="the new run folder (default: next to RUN, RUN-ft-TIMESTAMP)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override train.* (e.g. train.steps=500, train.lr=1e-4), data.seq_len, data.valid_fraction or data.test_fraction (repeatable)",
    )
    p.add_argument("--weights", choices=("ema", "raw"), default="ema", help="start from RUN's EMA or raw weights (default ema)")
    add_resume(p, "the fine-tuning run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads(p)
    p.set_defaults(handler=cmd_finetune)

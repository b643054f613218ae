"""`maskdiff train` and `maskdiff finetune`: a run trained (or continued) through :func:`maskdiff.training.train`."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from maskdiff.cli.common import Commands, Parser, add_resume, add_threads, set_handler
from maskdiff.errors import MaskdiffError, plural

if TYPE_CHECKING:
    from maskdiff.config import RunConfig
    from maskdiff.training import TrainResult


@dataclass(frozen=True)
class TrainArgs:
    """The flags of `maskdiff train`."""

    preset: str | None
    set: list[str] | None
    data: str | None
    out: str | None
    resume: str | None  # None, "yes" or "auto"
    quiet: bool

    def overrides(self) -> list[str]:
        return [*(self.set or []), *([f"data.path={self.data}"] if self.data is not None else [])]


def cmd_train(args: TrainArgs) -> int:
    from maskdiff.presets import get_preset
    from maskdiff.training import Outcome, ResumeMode, plan_resume, train

    def new_config() -> RunConfig:
        return get_preset(args.preset or "tiny").with_overrides(args.overrides())

    mode = ResumeMode(args.resume or "no")
    if mode is ResumeMode.NO:  # a new run (train refuses a folder that holds one)
        cfg = new_config()
        run_dir = Path(args.out) if args.out else Path("runs") / f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
        return report_training(train(cfg, run_dir, progress=not args.quiet), "train")
    if args.out is None:
        raise MaskdiffError(f"--resume{' auto' if mode is ResumeMode.AUTO else ''} needs --out DIR, the run folder to continue")
    # a continued run keeps its own config, with --set (and --data) as changes to it
    plan = plan_resume(args.out, mode, lambda saved: saved.with_overrides(args.overrides()), preset=args.preset).accepted()
    if plan.outcome is Outcome.FINISHED:
        print(plan.reason)
        return 0
    return report_training(train(plan.config or new_config(), plan.run_dir, resume=plan, progress=not args.quiet), "train")


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
    print(
        f"done: {plural(result.steps, 'step')}; validation {v.estimator.quantity} {v.bits_figure(result.unit)} "
        f"(perplexity {v.estimator.relation} {v.perplexity:.3f}) over {plural(v.num_tokens, 'token')}, {v.how_estimated()}\n"
        f"checkpoint: {result.checkpoint}\n"
        f"loss curve: {result.run_dir / 'loss.png'}\n"
        f"next: maskdiff sample --checkpoint {result.run_dir}   |   maskdiff eval --checkpoint {result.run_dir}"
    )
    return 0


@dataclass(frozen=True)
class FinetuneArgs:
    """The flags of `maskdiff finetune`."""

    checkpoint: str | None
    data: str | None
    eos: str | None
    out: str | None
    set: list[str] | None
    weights: str
    resume: str | None  # None, "yes" or "auto"
    quiet: bool

    def continued_config(self, saved: RunConfig) -> RunConfig:
        """The config that continues the fine-tuning run ``saved``: --data and --eos, when given,
        must be the run's own (a change is refused with both values, like any resume)."""
        overrides = list(self.set or [])
        overrides += [f"data.path={self.data}"] if self.data is not None else []
        overrides += [f"data.eos={self.eos}"] if self.eos is not None else []
        cfg = saved.with_overrides(overrides)
        if not cfg.data.data_format.padded_examples:
            raise MaskdiffError(
                f"{self.out} is not a fine-tuning run (its data format is {cfg.data.format}); continue it with maskdiff train --resume"
            )
        return cfg


def cmd_finetune(args: FinetuneArgs) -> int:
    from maskdiff.training import Outcome, ResumeMode, finetune, plan_resume, train

    mode = ResumeMode(args.resume or "no")
    if mode is not ResumeMode.NO and args.out is None:
        raise MaskdiffError(f"--resume{' auto' if mode is ResumeMode.AUTO else ''} needs --out DIR, the fine-tuning run to continue")
    plan = None if args.out is None or mode is ResumeMode.NO else plan_resume(args.out, mode, args.continued_config).accepted()
    if plan is None or plan.outcome is Outcome.NEW:
        missing = [flag for flag, value in (("--checkpoint RUN", args.checkpoint), ("--data PAIRS", args.data)) if value is None]
        if missing:
            raise MaskdiffError(f"a new fine-tuning run needs {' and '.join(missing)} (or --out DIR --resume to continue one)")
        assert args.checkpoint is not None and args.data is not None
        result = finetune(args.checkpoint, args.data, args.eos, args.out, list(args.set or []), args.weights, progress=not args.quiet)
        return report_training(result, "finetune")
    if args.checkpoint is not None:
        check_fine_tuned_from(plan.run_dir, args.checkpoint)
    if plan.outcome is Outcome.FINISHED:
        print(plan.reason)
        return 0
    assert plan.config is not None  # a continued run's config is the saved one with the changes asked
    return report_training(train(plan.config, plan.run_dir, resume=plan, progress=not args.quiet), "finetune")


def check_fine_tuned_from(run_dir: Path, checkpoint: str) -> None:
    """--checkpoint on a continued fine-tuning run must name the run (or checkpoint) it started from."""
    from maskdiff.training import StartFrom

    path = run_dir / StartFrom.FILE
    record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    started = record.get("source_run")
    if started is not None and Path(checkpoint).resolve() not in {Path(started).resolve(), Path(record["source_checkpoint"]).resolve()}:
        raise MaskdiffError(f"{run_dir} was fine-tuned from {started}, not {checkpoint}; drop --checkpoint to continue it")


def add_train_parsers(sub: Commands) -> None:
    sub.add_command("train", "train a model", fill_train_parser)
    sub.add_command("finetune", "fine-tune a text run on prompt/response pairs", fill_finetune_parser)


def fill_train_parser(p: Parser) -> None:
    p.description = "Train a masked diffusion model. Without arguments: the 'tiny' preset on the built-in Shakespeare corpus."
    p.add_argument("--preset", help="named config (see `maskdiff presets`; default: tiny)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. train.steps=200 (repeatable)")
    p.add_argument(
        "--data",
        metavar="PATH",
        help="what to train on (same as --set data.path=PATH): a UTF-8 text file for the character presets (tiny, small, text8, "
        "their ar- and genmd4- variants), a folder written by `maskdiff prepare` for the token presets (bpe-tiny, md4-*, smdm-*, their "
        "ar- variants), image files or a folder for the image presets (default: the preset's own data)",
    )
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/PRESET-TIMESTAMP)")
    add_resume(p, "the run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads(p)
    set_handler(p, TrainArgs, cmd_train)


def fill_finetune_parser(p: Parser) -> None:
    p.description = (
        "Conditional fine-tuning (SMDM): a new run that starts from RUN's EMA (or raw) weights and trains on "
        'JSONL pairs {"prompt": ..., "response": ...}. Each example is prompt + response + end of text, padded with the '
        "end of text to the sequence length; only the response and its end of text are scored (a diffusion model never "
        "masks the prompt or the padding; an autoregressive one does not score them). The new run keeps RUN's network, "
        "objective and vocabulary; it trains 200 steps at a tenth of RUN's learning rate (change with --set train.*), "
        "resumes like any run (--out DIR --resume), and its samples stop at the end of text."
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
    set_handler(p, FinetuneArgs, cmd_finetune)

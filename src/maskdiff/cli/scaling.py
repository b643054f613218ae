"""`maskdiff scaling plan|run|fit`: IsoFLOP scaling studies."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from maskdiff.cli.common import Commands, Parser, add_commands, add_threads, set_handler
from maskdiff.errors import MaskdiffError, plural


@dataclass(frozen=True)
class ScalingPlanArgs:
    """The flags of `maskdiff scaling plan`."""

    budgets: str
    family: str
    data: str | None
    set: list[str] | None
    sizes: int
    spread: float
    tokens_per_parameter: float
    min_steps: int
    out: str | None


def cmd_scaling_plan(args: ScalingPlanArgs) -> int:
    from maskdiff.scaling.plan import parse_budgets, plan_isoflops, write_plan

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
    print(f"data:    {plan.data['description']} ({plural(plan.data['train_tokens'], 'training token')}, fingerprint {plan.data['fingerprint']})")
    print(f"batch:   {plan.batch_size} x {plural(plan.seq_len, 'token')} per step; preset {plan.preset}")
    print(f"{'run':32s} {'N':>11s} {'steps':>7s} {'tokens D':>13s} {'6ND':>9s} {'error':>8s} {'epochs':>7s}")
    for r in plan.runs:
        print(f"{r.name:32s} {r.params:11,d} {r.steps:7d} {r.tokens:13,d} {r.flops:9.3g} {r.budget_error:+8.2%} {r.epochs:7.2f}")
    for note in plan.notes:
        print(f"note: {note}")
    print(f"plan: {out} ({plural(len(plan.runs), 'run')})\nnext: maskdiff scaling run {out}   |   maskdiff scaling run {out} --print")
    return 0


@dataclass(frozen=True)
class ScalingRunArgs:
    """The flags of `maskdiff scaling run`."""

    plan: str
    root: str | None
    print: bool
    launcher: str
    only: list[str] | None
    quiet: bool
    threads: int | None  # also written into the printed commands


def cmd_scaling_run(args: ScalingRunArgs) -> int:
    from maskdiff.scaling.plan import load_plan
    from maskdiff.scaling.runner import default_root, run_commands, run_plan

    plan = load_plan(args.plan)
    root = Path(args.root) if args.root else default_root(args.plan)
    if args.print:
        for line in run_commands(plan, root, launcher=args.launcher, threads=args.threads, only=args.only):
            print(line)
        return 0

    def announce(run, run_dir, status) -> None:
        what = {"new": "training", "stopped": "resuming", "finished": "finished, skipped"}[status]
        print(f"{run.name}: {what} ({plural(run.steps, 'step')}, N={run.params:,}) in {run_dir}", flush=True)

    outcomes = run_plan(plan, root, only=args.only, progress=not args.quiet, on_start=announce)
    for o in outcomes:
        if o.result is not None and o.result.stopped_by is not None:
            print(f"stopped by {o.result.stopped_by} during {o.name}; rerun the same command to resume")
            return 0
        if o.result is not None and o.result.valid is not None:
            print(f"{o.name}: validation {o.result.valid.bits_per_token:.4f} bits/{o.result.unit}")
    print(f"done: {plural(len(outcomes), 'run')} in {root}\nnext: maskdiff scaling fit {root}")
    return 0


@dataclass(frozen=True)
class ScalingFitArgs:
    """The flags of `maskdiff scaling fit`."""

    runs: list[str | Path]  # run folders, or folders holding them
    out: str
    bootstrap: int
    seed: int


def cmd_scaling_fit(args: ScalingFitArgs) -> int:
    from maskdiff.scaling.fit import collect_runs, fit_study, summary_lines
    from maskdiff.scaling.plot import plot_study

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise MaskdiffError(f"--out {str(out)!r} is a file; give a folder")
    points, identity = collect_runs(args.runs)
    study = fit_study(points, draws=args.bootstrap, seed=args.seed, data=identity)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fit.json").write_text(json.dumps(study.to_dict(), indent=1) + "\n", encoding="utf-8")
    plot_study(study, out / "isoflops.png")
    print(f"{plural(len(points), 'run')} on {identity['description']} (fingerprint {identity['fingerprint']})")
    print("\n".join(summary_lines(study)))
    print(f"fit: {out / 'fit.json'}\nplot: {out / 'isoflops.png'}")
    return 0


def add_scaling_parser(sub: Commands) -> None:
    sub.add_command("scaling", "scaling-law studies: IsoFLOP plans, their runs and fits", fill_scaling_parser)


def fill_scaling_parser(p: Parser) -> None:
    from maskdiff.scaling.family import FAMILY_RULE, FLOPS_FORMULA

    p.description = (
        "IsoFLOP scaling studies for masked diffusion (mdm) and autoregressive (ar) models: `plan` writes "
        "the runs of each compute budget, `run` trains them (or prints their commands), `fit` fits the results. "
        f"Compute: {FLOPS_FORMULA}. Size family: {FAMILY_RULE}."
    )
    scaling = add_commands(p, "scaling_command", "STEP")
    scaling.add_command("plan", "write an IsoFLOP plan: model sizes and token counts per compute budget", fill_scaling_plan_parser)
    scaling.add_command("run", "train a plan's runs one after another, or print their commands", fill_scaling_run_parser)
    scaling.add_command("fit", "fit IsoFLOP parabolas and power laws to finished runs", fill_scaling_fit_parser)


def fill_scaling_plan_parser(p: Parser) -> None:
    from maskdiff.scaling.family import FAMILY_PRESETS, FAMILY_RULE, FLOPS_FORMULA

    p.description = (
        f"For each compute budget C, 5 (--sizes) model sizes of the family around the expected optimum "
        f"N_opt = sqrt(C / (6 r)) (r = --tokens-per-parameter), each trained on the D tokens that spend the budget. "
        f"Compute: {FLOPS_FORMULA}. Size family (depth and width rule): {FAMILY_RULE}. Every run uses the family's "
        "preset (mdm: tiny, ar: ar-tiny, the same shapes made causal) with its batch, sequence length and learning rate "
        "(change them with --set), a cosine schedule over its own steps, warm-up of min(100, steps/10) steps and only the "
        "final validation. Steps are D / (batch x seq_len) rounded; a size needs --min-steps steps (100 keeps every "
        "budget within 0.5%), and a budget too small for the smallest size is an error."
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
    set_handler(p, ScalingPlanArgs, cmd_scaling_plan)


def fill_scaling_run_parser(p: Parser) -> None:
    p.description = (
        "Train every run of PLAN through `maskdiff train`'s library function, one after another, each in its "
        "own folder under --root: a finished run is skipped, a stopped one resumes from its newest checkpoint (bit for "
        "bit), so rerunning the command after an interruption continues the study. Each run folder gets scaling.json "
        "(its budget, N, D and the corpus's fingerprint) for `maskdiff scaling fit`; the final validation loss is in its "
        "metrics.csv. --print prints one `maskdiff train ... --resume auto` command per run instead (torchrun-ready with "
        "--launcher torchrun), e.g. to run two at a time: "
        "maskdiff scaling run PLAN --print --threads 1 | xargs -d '\\n' -P 2 -n 1 bash -c 'eval \"$1\"' _"
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
    set_handler(p, ScalingRunArgs, cmd_scaling_run)


def fill_scaling_fit_parser(p: Parser) -> None:
    p.description = (
        "Per family and budget, a parabola of the final validation loss (bits/token) against ln N and its "
        "minimum N*, L*; across budgets the power laws N*(C) = k C^b and L*(C) = k C^b with standard errors (least "
        "squares in log space, and a bootstrap over runs); with mdm and ar runs together, the compute multiple the MDM "
        "needs to reach the ARM's fitted loss at each budget. Writes OUT/fit.json (every fitted number) and "
        "OUT/isoflops.png. Unfinished runs, runs of different corpora and budgets with fewer than 3 sizes are refused."
    )
    p.add_argument("runs", nargs="+", metavar="RUNS", help="run folders, or folders holding them (the --root of `scaling run`)")
    p.add_argument("--out", default="runs/scaling-fit", metavar="DIR", help="folder for fit.json and isoflops.png (default runs/scaling-fit)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap draws for the exponents' errors (default 1000; 0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    set_handler(p, ScalingFitArgs, cmd_scaling_fit)

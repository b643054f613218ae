"""Running a scaling plan: one run folder per planned run, trained through the library's ``train``.

Each run folder gets ``scaling.json`` (the run's entry of the plan, with the family, the FLOP
formula and the corpus's identity) before it trains, so :mod:`maskdiff.scaling.fit` can check that
runs belong together. A run is

- *new* (no checkpoint): trained from scratch;
- *stopped* (a checkpoint before its last step): resumed from its newest intact checkpoint, with
  the same data order and noise, so the result equals an uninterrupted run;
- *finished* (the last step's checkpoint and the final validation in ``metrics.csv``): skipped.

That is :func:`maskdiff.training.plan_resume` in ``auto`` mode, the policy of ``maskdiff train
--resume auto``.

:func:`run_commands` gives the same runs as shell commands instead (``maskdiff train ... --resume
auto``, which starts, continues or skips a run the same way), one per line, for other machines or
``xargs -P``.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from maskdiff.config import RunConfig
from maskdiff.errors import MaskdiffError, plural
from maskdiff.metrics import read_metrics
from maskdiff.scaling.plan import Plan, PlannedRun
from maskdiff.training import Outcome, ResumeMode, ResumePlan, plan_resume, train
from maskdiff.training.loop import TrainResult

RECORD = "scaling.json"  # a run folder's place in its scaling study


def default_root(plan_path: str | Path) -> Path:
    """Where a plan's run folders go by default: next to the plan, named after it (runs/mdm.json -> runs/mdm/)."""
    plan_path = Path(plan_path)
    return plan_path.with_suffix("") if plan_path.suffix else plan_path.with_name(plan_path.name + "-runs")


def run_record(plan: Plan, run: PlannedRun) -> dict:
    """What ``RUN/scaling.json`` holds: the run's entry of the plan and what ties it to the study."""
    return {
        "family": plan.family,
        "preset": plan.preset,
        "flops_formula": plan.flops_formula,
        "size_family": plan.size_family,
        "data": plan.data,
        "batch_size": plan.batch_size,
        "seq_len": plan.seq_len,
        **vars(run),
    }


def write_record(plan: Plan, run: PlannedRun, run_dir: Path) -> None:
    """Write ``scaling.json`` into ``run_dir`` (created); a folder that holds another run's record is refused."""
    record = run_record(plan, run)
    path = run_dir / RECORD
    if path.is_file():
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            existing = None
        if existing != record:
            raise MaskdiffError(f"{run_dir} holds another scaling run ({RECORD} differs from the plan's {run.name}); use another --root")
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def final_validation(run_dir: Path, steps: int) -> dict[str, str] | None:
    """The metrics.csv row of a run's final validation (logged at its last step), or None."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return None
    rows = [r for r in read_metrics(path) if r.get("step") == str(steps) and r.get("valid_bits")]
    return rows[-1] if rows else None


def final_tokens(run_dir: Path, steps: int) -> int | None:
    """Training tokens a run has seen at its last step, from metrics.csv (every process counted)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return None
    rows = [r for r in read_metrics(path) if r.get("step") == str(steps) and r.get("tokens")]
    return int(float(rows[-1]["tokens"])) if rows else None


def run_status(run_dir: Path, cfg: RunConfig) -> tuple[str, ResumePlan]:
    """``new``, ``stopped`` (a checkpoint before its last step) or ``finished``, with the resume plan
    (:func:`maskdiff.training.plan_resume` in ``auto`` mode) that trains it; a run it refuses, or one
    trained to the end without the final validation, is an error."""
    plan = plan_resume(run_dir, ResumeMode.AUTO, cfg).accepted()
    if plan.outcome is Outcome.FINISHED and final_validation(run_dir, cfg.train.steps) is None:
        raise MaskdiffError(
            f"{run_dir} trained all {plural(cfg.train.steps, 'step')} but has no final validation in metrics.csv (stopped during it?); "
            "remove the folder to train it again"
        )
    return {Outcome.NEW: "new", Outcome.CONTINUE: "stopped", Outcome.FINISHED: "finished"}[plan.outcome], plan


@dataclass
class RunOutcome:
    name: str
    run_dir: Path
    status: str  # what it was before: new, stopped or finished
    result: TrainResult | None  # None when skipped


def run_plan(
    plan: Plan,
    root: str | Path,
    only: list[str] | None = None,
    progress: bool = True,
    on_start: Callable[[PlannedRun, Path, str], None] | None = None,
) -> list[RunOutcome]:
    """Train the plan's runs one after another under ``root`` (skip finished ones, resume stopped
    ones). A run stopped by SIGTERM/SIGINT ends the loop (its outcome's ``result.stopped_by`` says
    so); ``on_start(run, folder, status)`` is told before each run."""
    root = Path(root)
    outcomes = []
    for run in select(plan, only):
        run_dir = root / run.name
        cfg = plan.run_config(run)
        write_record(plan, run, run_dir)
        status, resume = run_status(run_dir, cfg)
        if on_start is not None:
            on_start(run, run_dir, status)
        if status == "finished":
            outcomes.append(RunOutcome(run.name, run_dir, status, None))
            continue
        result = train(cfg, run_dir, resume=resume, progress=progress)
        outcomes.append(RunOutcome(run.name, run_dir, status, result))
        if result.stopped_by is not None:
            break
    return outcomes


def select(plan: Plan, only: list[str] | None) -> list[PlannedRun]:
    """The plan's runs, or those named in ``only`` (an unknown name is an error listing the plan's)."""
    if not only:
        return plan.runs
    names = {r.name for r in plan.runs}
    unknown = [n for n in only if n not in names]
    if unknown:
        raise MaskdiffError(f"the plan has no run {', '.join(map(repr, unknown))}; its runs: {', '.join(sorted(names))}")
    return [r for r in plan.runs if r.name in only]


def run_commands(plan: Plan, root: str | Path, launcher: str = "maskdiff", threads: int | None = None, only: list[str] | None = None) -> list[str]:
    """One shell command per run (``maskdiff train ... --resume auto``, or under ``torchrun`` with one
    process), each into its own folder under ``root``; writes each folder's ``scaling.json`` so the
    finished runs can be fitted wherever the commands ran."""
    if launcher not in ("maskdiff", "torchrun"):
        raise MaskdiffError(f"--launcher must be maskdiff or torchrun, not {launcher!r}")
    prefix = ["maskdiff"] if launcher == "maskdiff" else ["torchrun", "--standalone", "--nproc_per_node", "1", "-m", "maskdiff"]
    lines = []
    for run in select(plan, only):
        run_dir = Path(root) / run.name
        write_record(plan, run, run_dir)
        argv = [*prefix, "train", "--preset", plan.preset]
        for item in run.overrides:
            argv += ["--set", item]
        argv += ["--out", str(run_dir), "--resume", "auto", "--quiet"]
        if threads is not None:
            argv += ["--threads", str(threads)]
        lines.append(shlex.join(argv))
    return lines

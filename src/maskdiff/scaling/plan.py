"""IsoFLOP plans: for each compute budget, model sizes around the expected optimum, each trained on
the number of tokens that spends the budget (C = 6 N D; :mod:`maskdiff.scaling.family`).

The expected optimum is N_opt = sqrt(C / (6 r)) for r training tokens per parameter (r = 20 by
default, the compute-optimal ratio reported for autoregressive transformers). The plan takes
``sizes`` members of the family nearest to targets spread evenly in log N over
[N_opt / spread, N_opt * spread], keeping only members that get at least ``min_steps`` optimizer
steps; the step count is D / (batch_size * seq_len) rounded to an integer, which with 100 or more
steps spends the budget within 0.5%. A plan is a JSON file; :mod:`maskdiff.scaling.runner` trains it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from maskdiff.config import RunConfig
from maskdiff.data import prepare_data
from maskdiff.errors import MaskdiffError, plural
from maskdiff.presets import get_preset
from maskdiff.scaling.family import (
    FAMILY_PRESETS,
    FAMILY_RULE,
    FLOPS_FORMULA,
    SHAPE_KEYS,
    Shape,
    member,
    non_embedding_parameters,
    training_flops,
)

PLAN_FORMAT = "maskdiff-scaling-plan/1"
MAX_BUDGET_ERROR = 0.01  # a planned run spends its budget within 1% by C = 6 N D
MAX_MEMBER = 64  # members beyond this (65 layers of width 1056) are past any budget a plan here is for
FINGERPRINT_TOKENS = 1 << 20  # tokens hashed at each end of each split


@dataclass
class PlannedRun:
    """One training run of a plan."""

    name: str  # also the run folder's name under the plan's root
    budget: float  # the compute budget C this run belongs to
    member: int  # index in the size family
    n_layers: int
    d_model: int
    n_heads: int
    params: int  # N, non-embedding parameters
    steps: int
    tokens: int  # D = steps x batch_size x seq_len
    flops: float  # 6 N D
    budget_error: float  # (6 N D - C) / C
    epochs: float  # D over the training split's tokens
    overrides: list[str]  # every --set of its `maskdiff train` command

    @property
    def shape(self) -> Shape:
        return member(self.member)


@dataclass
class Plan:
    """An IsoFLOP grid for one family (``mdm`` or ``ar``) on one corpus."""

    family: str
    preset: str
    budgets: list[float]
    data: dict  # data.path, a description and the corpus fingerprint (see data_identity)
    batch_size: int
    seq_len: int
    tokens_per_parameter: float
    runs: list[PlannedRun]
    flops_formula: str = FLOPS_FORMULA
    size_family: str = FAMILY_RULE
    notes: list[str] = field(default_factory=list)
    format: str = PLAN_FORMAT

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> Plan:
        runs = [PlannedRun(**r) for r in raw["runs"]]
        return cls(**{**raw, "runs": runs})

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")

    def base_config(self) -> RunConfig:
        """The preset with the plan's own settings, before a run's shape and steps."""
        return get_preset(self.preset)

    def run_config(self, run: PlannedRun) -> RunConfig:
        """The full config of one run: the preset with the run's overrides."""
        return self.base_config().with_overrides(run.overrides)


def load_plan(path: str | Path) -> Plan:
    """A plan file written by :func:`write_plan`, with a one-line error for anything else."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MaskdiffError(f"plan file {str(path)!r} does not exist") from None
    except (OSError, ValueError) as err:
        raise MaskdiffError(f"cannot read plan file {str(path)!r}: {err}") from None
    if not isinstance(raw, dict) or raw.get("format") != PLAN_FORMAT:
        raise MaskdiffError(f"{str(path)!r} is not a scaling plan (written by `maskdiff scaling plan`)")
    try:
        return Plan.from_dict(raw)
    except TypeError as err:
        raise MaskdiffError(f"plan file {str(path)!r} is damaged: {err}") from None


def data_identity(cfg: RunConfig) -> dict:
    """What identifies a run's corpus: its path, a description and a fingerprint.

    The fingerprint is a sha256 of the tokenizer and of every split's size and first and last
    :data:`FINGERPRINT_TOKENS` tokens, so two files with the same name and different text differ.
    -> {"path", "format", "description", "fingerprint", "vocab_size", "train_tokens"}
    """
    tokenizer, splits = prepare_data(cfg.data)
    digest = hashlib.sha256(json.dumps(tokenizer.to_dict(), sort_keys=True, ensure_ascii=False).encode())
    for name in ("train", "valid", "test"):
        tokens = splits.get(name).reshape(-1)
        digest.update(f"{name}:{tokens.numel()}".encode())
        for part in (tokens[:FINGERPRINT_TOKENS], tokens[-FINGERPRINT_TOKENS:]):
            digest.update(part.to(torch.int64).numpy().tobytes())
    return {
        "path": cfg.data.path,
        "format": cfg.data.format,
        "description": cfg.data.path or "built-in corpus",
        "fingerprint": digest.hexdigest()[:16],
        "vocab_size": tokenizer.vocab_size,
        "train_tokens": int(splits.train.numel()),
    }


def budget_label(budget: float) -> str:
    """A compact name for a budget: 1e12 -> '1e12', 3.5e13 -> '3.5e13'."""
    mantissa, exponent = f"{budget:.3g}".split("e") if "e" in f"{budget:.3g}" else (f"{budget:.3g}", "0")
    return f"{mantissa}e{int(exponent)}"


def parse_budgets(text: str) -> list[float]:
    """'1e13,3e13,1e14' -> sorted distinct budgets, with a one-line error for anything else."""
    try:
        budgets = sorted({float(b) for b in text.split(",") if b.strip()})
    except ValueError:
        raise MaskdiffError(f"--budgets takes comma-separated FLOP counts such as 1e13,3e13,1e14, not {text!r}") from None
    if not budgets or not all(math.isfinite(b) and b > 0 for b in budgets):
        raise MaskdiffError(f"--budgets takes positive FLOP counts such as 1e13,3e13,1e14, not {text!r}")
    return budgets


def choose_members(params: dict[int, int], optimum: float, sizes: int, spread: float) -> list[int]:
    """``sizes`` members (of those in ``params``, member -> N) nearest to targets spread evenly in
    log N over [optimum / spread, optimum * spread]; if targets share a member, the unused members
    nearest the optimum fill in. -> sorted member indices"""
    logs = {i: math.log(n) for i, n in params.items()}
    lo, hi = math.log(optimum / spread), math.log(optimum * spread)
    chosen: list[int] = []
    for k in range(sizes):
        target = lo + (hi - lo) * k / (sizes - 1)
        nearest = min(logs, key=lambda i: abs(logs[i] - target))
        if nearest not in chosen:
            chosen.append(nearest)
    for i in sorted(logs, key=lambda i: abs(logs[i] - math.log(optimum))):
        if len(chosen) >= sizes:
            break
        if i not in chosen:
            chosen.append(i)
    return sorted(chosen)


def plan_isoflops(
    family: str,
    budgets: list[float],
    data: str | None = None,
    overrides: list[str] | None = None,
    sizes: int = 5,
    spread: float = 4.0,
    tokens_per_parameter: float = 20.0,
    min_steps: int = 100,
) -> Plan:
    """The IsoFLOP grid of ``family`` (``mdm``: masked diffusion, the ``tiny`` preset; ``ar``: the
    autoregressive twin, ``ar-tiny``) for ``budgets`` (FLOPs) on ``data`` (a text file; None: the
    built-in corpus). ``overrides`` are ``--set`` values for every run (batch size, sequence
    length, learning rate, ...; not the shape, which the family sets)."""
    if family not in FAMILY_PRESETS:
        raise MaskdiffError(f"unknown family {family!r}; choose mdm (masked diffusion) or ar (autoregressive)")
    if not 3 <= sizes <= 9:
        raise MaskdiffError(f"--sizes must be between 3 and 9 (a parabola needs 3 points), got {sizes}")
    if not spread > 1 or not tokens_per_parameter > 0 or min_steps < 1:
        raise MaskdiffError("--spread must be > 1, --tokens-per-parameter > 0 and --min-steps >= 1")
    overrides = list(overrides or [])
    if data is not None:
        overrides.append(f"data.path={data}")
    fixed = [o for o in overrides if o.split("=", 1)[0].strip() in (*SHAPE_KEYS, "train.steps")]
    if fixed:
        raise MaskdiffError(f"the plan sets each run's shape and steps itself; drop {', '.join(fixed)}")
    preset = FAMILY_PRESETS[family]
    base = get_preset(preset).with_overrides(overrides)
    identity = data_identity(base)
    vocab = identity["vocab_size"]
    batch, seq_len = base.train.batch_size * base.train.grad_accum, base.data.seq_len
    per_step = batch * seq_len
    # members in order of size, up to the first one too large for min_steps at the largest budget
    params: dict[int, int] = {}
    for i in range(MAX_MEMBER + 1):
        params[i] = non_embedding_parameters(base, member(i), vocab)
        if training_flops(params[i], min_steps * per_step) > max(budgets) * (1 + MAX_BUDGET_ERROR):
            break

    runs, notes = [], []
    for budget in budgets:
        smallest = params[0]
        least = training_flops(smallest, min_steps * per_step)
        if budget < least:
            raise MaskdiffError(
                f"budget {budget:.3g} FLOPs is too small for the smallest model of the family ({member(0).describe()}, N={smallest:,}): "
                f"{plural(min_steps, 'step')} of {plural(per_step, 'token')} need C >= {least:.3g}; "
                "raise the budget or lower the batch or sequence length"
            )
        feasible = {}
        for i, n in params.items():
            steps = round(budget / (6 * n * per_step))
            if steps >= min_steps and abs(training_flops(n, steps * per_step) - budget) / budget < MAX_BUDGET_ERROR:
                feasible[i] = n
        if len(feasible) < 3:
            raise MaskdiffError(
                f"budget {budget:.3g} FLOPs fits only {plural(len(feasible), 'model size')} of the family with >= {min_steps} steps; "
                "a parabola needs 3: raise the budget or lower --min-steps, the batch or the sequence length"
            )
        optimum = math.sqrt(budget / (6 * tokens_per_parameter))
        chosen = choose_members(feasible, optimum, min(sizes, len(feasible)), spread)
        if len(chosen) < sizes:
            notes.append(f"budget {budget:.3g}: only {plural(len(chosen), 'size')} fit (>= {plural(min_steps, 'step')} each)")
        for i in chosen:
            shape, n = member(i), params[i]
            steps = round(budget / (6 * n * per_step))
            tokens = steps * per_step
            warmup = max(1, min(base.train.warmup_steps, steps // 10))
            run_overrides = [
                *overrides,
                *shape.overrides(),
                f"train.steps={steps}",
                f"train.warmup_steps={warmup}",
                "train.eval_every=0",  # the final validation over the whole split is what the fit uses
                f"train.checkpoint_every={max(1, math.ceil(steps / 4))}",
                "train.keep_checkpoints=2",
            ]
            flops = training_flops(n, tokens)
            runs.append(
                PlannedRun(
                    name=f"{family}-C{budget_label(budget)}-L{shape.n_layers}-d{shape.d_model}",
                    budget=budget,
                    member=i,
                    n_layers=shape.n_layers,
                    d_model=shape.d_model,
                    n_heads=shape.n_heads,
                    params=n,
                    steps=steps,
                    tokens=tokens,
                    flops=flops,
                    budget_error=(flops - budget) / budget,
                    epochs=tokens / identity["train_tokens"],
                    overrides=run_overrides,
                )
            )
    return Plan(family, preset, budgets, identity, batch, seq_len, tokens_per_parameter, runs, notes=notes)


def write_plan(plan: Plan, path: str | Path) -> Path:
    """Write ``plan`` to ``path``; an existing file is replaced only when it holds the same plan
    (so a study script can rerun the command), never another one."""
    path = Path(path)
    if path.is_dir():
        raise MaskdiffError(f"--out {str(path)!r} is a folder; give a file name such as {path / 'plan.json'}")
    if path.exists():
        try:
            same = load_plan(path).to_dict() == plan.to_dict()
        except MaskdiffError:
            same = False
        if not same:
            raise MaskdiffError(f"{str(path)!r} already exists and holds something else; remove it or choose another --out")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    plan.save(path)
    return path

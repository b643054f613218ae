"""Fitting an IsoFLOP study: per-budget parabolas, power laws N*(C) and L*(C), and the compute multiple.

For each family (``mdm``, ``ar``) and budget C, the final validation losses of the runs are fitted
by a parabola in x = ln N, loss = a x^2 + b x + c; its minimum gives the compute-optimal size
N*(C) = exp(-b / 2a), the loss there L*(C) and D*(C) = C / (6 N*). Across budgets, least squares
in log space give the power laws

    N*(C) = k_N C^b_N        L*(C) = k_L C^b_L

with standard errors from the fit's covariance (residuals; needs 3 or more budgets) and from a
bootstrap over runs (each budget's runs drawn with replacement, the parabolas and the lines fitted
again; half the 16-84% range is reported as the bootstrap error). For MDM and ARM together, the
compute multiple at a budget C is how much compute the MDM's fitted L*(C) needs to reach the ARM's
fitted loss at C: m(C) = (L_ar(C) / k_L,mdm)^(1 / b_L,mdm) / C.

:func:`collect_runs` reads finished run folders (their ``scaling.json``, ``config.json`` and the
final validation in ``metrics.csv``) and refuses unfinished runs, runs of other corpora and budgets
with fewer than 3 sizes, each in one line.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from maskdiff.checkpoint import checkpoint_step, latest_checkpoint
from maskdiff.config import RunConfig
from maskdiff.errors import MaskdiffError, plural
from maskdiff.objectives import OBJECTIVES
from maskdiff.presets import parameter_count
from maskdiff.scaling.family import FLOPS_FORMULA, training_flops
from maskdiff.scaling.plan import MAX_BUDGET_ERROR, budget_label
from maskdiff.scaling.runner import RECORD, final_tokens, final_validation
from maskdiff.tokenizer import load_tokenizer

BOOTSTRAP_DRAWS = 1000
FAMILY_NAMES = {"mdm": "masked diffusion", "ar": "autoregressive"}


@dataclass
class Point:
    """One finished run: its family, budget, size and final validation loss (bits per token)."""

    family: str
    budget: float
    params: int
    loss: float
    tokens: int = 0
    run: str = ""


@dataclass
class Parabola:
    """The IsoFLOP curve of one budget: loss = a (ln N)^2 + b ln N + c."""

    budget: float
    coefficients: tuple[float, float, float]  # a, b, c
    n_opt: float | None  # None: no minimum near the sizes trained (no valley; see ``problem``)
    loss_opt: float | None
    tokens_opt: float | None
    inside: bool  # the minimum lies within the sizes trained
    points: list[Point]
    problem: str | None = None  # why there is no minimum

    def loss(self, params) -> np.ndarray:
        return np.polyval(self.coefficients, np.log(params))


@dataclass
class PowerLaw:
    """y = k C^exponent, fitted in log space."""

    k: float
    exponent: float
    exponent_stderr: float | None  # from the covariance of the least-squares fit (None with 2 budgets)
    exponent_bootstrap: float | None  # half the 16-84% range over bootstrap draws
    exponent_interval: tuple[float, float] | None  # the 16% and 84% quantiles

    def __call__(self, compute):
        return self.k * np.asarray(compute, dtype=float) ** self.exponent


@dataclass
class FamilyFit:
    family: str
    parabolas: list[Parabola]
    n_opt: PowerLaw | None  # None with a single budget
    loss_opt: PowerLaw | None
    notes: list[str] = field(default_factory=list)


@dataclass
class StudyFit:
    families: dict[str, FamilyFit]
    compute_multiple: list[dict] = field(default_factory=list)  # per budget: the MDM's compute for the ARM's loss, over C
    data: dict | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = {
            "flops_formula": FLOPS_FORMULA,
            "loss": "final validation loss in bits per token (masked diffusion: the NELBO bound; autoregressive: the exact NLL)",
            "parabola": "loss = a (ln N)^2 + b ln N + c per budget; N* = exp(-b / 2a)",
            "power_laws": "N*(C) = k C^exponent and L*(C) = k C^exponent, least squares in log space",
            "data": self.data,
            "families": {name: asdict(fit) for name, fit in self.families.items()},
            "compute_multiple": self.compute_multiple,
            "notes": self.notes,
        }
        return out


# ------------------------------------------------------------------ fitting
class NoValley(MaskdiffError):
    """A budget's losses have no minimum near the sizes trained."""


def fit_parabola(budget: float, points: list[Point]) -> Parabola:
    """The IsoFLOP parabola of one budget's points (3 or more distinct sizes)."""
    sizes = sorted({p.params for p in points})
    if len(sizes) < 3:
        raise MaskdiffError(
            f"budget {budget:.3g} ({points[0].family}) has runs of {plural(len(sizes), 'size')}; "
            "a parabola needs at least 3 (finish more runs of that budget)"
        )
    x = np.log([p.params for p in points])
    y = np.array([p.loss for p in points])
    a, b, c = (float(v) for v in np.polyfit(x, y, 2))
    span = x.max() - x.min()
    x_opt = -b / (2 * a) if a > 0 else math.inf
    # a minimum farther out than the sizes' own span is no valley, just a slope (or rounding noise on one)
    if not x.min() - span <= x_opt <= x.max() + span:
        lowest = x[int(np.argmin(y))]
        side = "smaller sizes" if lowest == x.min() else "larger sizes" if lowest == x.max() else "sizes around the lowest loss"
        raise NoValley(
            f"the losses at budget {budget:.3g} ({points[0].family}) do not curve upwards around a minimum (no IsoFLOP valley); add {side}"
        )
    n_opt = math.exp(x_opt)
    return Parabola(
        budget,
        (a, b, c),
        n_opt,
        a * x_opt**2 + b * x_opt + c,
        budget / (6 * n_opt),
        bool(x.min() <= x_opt <= x.max()),
        sorted(points, key=lambda p: p.params),
    )


def fit_line(log_c: np.ndarray, log_y: np.ndarray) -> tuple[float, float, float | None]:
    """Least squares log_y = intercept + slope log_c.  -> (intercept, slope, stderr of the slope or None)"""
    design = np.stack([np.ones_like(log_c), log_c], axis=1)
    coef, *_ = np.linalg.lstsq(design, log_y, rcond=None)
    dof = len(log_c) - 2
    if dof < 1:
        return float(coef[0]), float(coef[1]), None
    residual = log_y - design @ coef
    covariance = (residual @ residual / dof) * np.linalg.inv(design.T @ design)
    return float(coef[0]), float(coef[1]), float(math.sqrt(covariance[1, 1]))


def _laws(parabolas: list[Parabola]) -> tuple[tuple[float, float, float | None], tuple[float, float, float | None]]:
    """The two power laws through the minima of ``parabolas`` (each with a minimum)."""
    log_c = np.log([p.budget for p in parabolas])
    log_n = np.log(np.array([p.n_opt for p in parabolas], dtype=float))
    log_l = np.log(np.array([p.loss_opt for p in parabolas], dtype=float))
    return fit_line(log_c, log_n), fit_line(log_c, log_l)


def _bootstrap(by_budget: dict[float, list[Point]], draws: int, seed: int) -> np.ndarray:
    """Per draw: (ln k_N, b_N, ln k_L, b_L) from the runs of each budget drawn with replacement.
    Draws without 3 distinct sizes or an upward curve at some budget are redrawn (up to 20 times). -> [draws, 4]"""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        for _attempt in range(20):
            try:
                parabolas = []
                for budget, points in sorted(by_budget.items()):
                    picks = rng.integers(0, len(points), len(points))
                    parabolas.append(fit_parabola(budget, [points[i] for i in picks]))
            except MaskdiffError:
                continue
            (kn, bn, _), (kl, bl, _) = _laws(parabolas)
            out.append((kn, bn, kl, bl))
            break
    return np.array(out).reshape(-1, 4)


def _power_law(intercept: float, slope: float, stderr: float | None, draws: np.ndarray | None) -> PowerLaw:
    if draws is None or len(draws) < 10:
        return PowerLaw(math.exp(intercept), slope, stderr, None, None)
    lo, hi = (float(v) for v in np.quantile(draws, [0.16, 0.84]))
    return PowerLaw(math.exp(intercept), slope, stderr, (hi - lo) / 2, (lo, hi))


def fit_family(points: list[Point], draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> tuple[FamilyFit, np.ndarray | None]:
    """Parabolas and power laws of one family's points.  -> (fit, bootstrap draws [n, 4] or None)"""
    by_budget: dict[float, list[Point]] = defaultdict(list)
    for p in points:
        by_budget[p.budget].append(p)
    parabolas = []
    for budget, ps in sorted(by_budget.items()):
        try:
            parabolas.append(fit_parabola(budget, ps))
        except NoValley as err:  # kept (its points are data) and left out of the power laws
            a, b, c = (float(v) for v in np.polyfit(np.log([p.params for p in ps]), [p.loss for p in ps], 2))
            parabolas.append(Parabola(budget, (a, b, c), None, None, None, False, sorted(ps, key=lambda p: p.params), str(err)))
    valleys = [p for p in parabolas if p.n_opt is not None]
    if len(valleys) < 2:
        return FamilyFit(points[0].family, parabolas, None, None), None
    (kn, bn, sn), (kl, bl, sl) = _laws(valleys)
    notes = []
    # with 3 sizes every usable draw is the original set again: no spread to report
    if draws and min(len({q.params for q in p.points}) for p in valleys) < 4:
        notes.append(f"{points[0].family}: no bootstrap errors (it needs 4 or more sizes at every budget)")
        draws = 0
    boot = _bootstrap({p.budget: by_budget[p.budget] for p in valleys}, draws, seed) if draws else None
    n_law = _power_law(kn, bn, sn, None if boot is None else boot[:, 1])
    l_law = _power_law(kl, bl, sl, None if boot is None else boot[:, 3])
    return FamilyFit(points[0].family, parabolas, n_law, l_law, notes), boot


def compute_multiple(mdm: PowerLaw, ar: PowerLaw, budgets) -> np.ndarray:
    """At each budget C: the compute at which the MDM's L*(C) reaches the ARM's L*(C), over C."""
    budgets = np.asarray(budgets, dtype=float)
    needed = (ar(budgets) / mdm.k) ** (1 / mdm.exponent)
    return needed / budgets


def fit_study(points: list[Point], draws: int = BOOTSTRAP_DRAWS, seed: int = 0, data: dict | None = None) -> StudyFit:
    """Fit every family of ``points``; with both ``mdm`` and ``ar``, also the compute multiple at each budget."""
    if not points:
        raise MaskdiffError("no finished runs to fit")
    families: dict[str, FamilyFit] = {}
    boots: dict[str, np.ndarray | None] = {}
    for name in sorted({p.family for p in points}):
        families[name], boots[name] = fit_family([p for p in points if p.family == name], draws, seed)
    study = StudyFit(families, data=data)
    for fit in families.values():
        study.notes += fit.notes
        for parabola in fit.parabolas:
            if parabola.problem is not None:
                study.notes.append(f"{parabola.problem}: left out of the power laws")
            elif not parabola.inside:
                study.notes.append(
                    f"{fit.family} at {parabola.budget:.3g}: the minimum N*={parabola.n_opt:,.0f} lies outside the sizes trained (extrapolated)"
                )
    mdm, ar = families.get("mdm"), families.get("ar")
    if mdm is not None and ar is not None and mdm.loss_opt is not None and ar.loss_opt is not None:
        budgets = sorted({p.budget for p in points})
        falls = mdm.loss_opt.exponent < 0  # else no amount of compute reaches a lower loss
        multiples = compute_multiple(mdm.loss_opt, ar.loss_opt, budgets) if falls else np.full(len(budgets), np.nan)
        spread = _multiple_spread(boots.get("mdm"), boots.get("ar"), budgets) if falls else None
        for i, budget in enumerate(budgets):
            value = float(multiples[i])
            study.compute_multiple.append(
                {
                    "budget": budget,
                    "ar_loss": float(ar.loss_opt(budget)),
                    "multiple": value if math.isfinite(value) else None,
                    "interval": None if spread is None else spread[i],
                }
            )
        if not falls:
            study.notes.append("the MDM's fitted L*(C) does not fall with compute, so no compute multiple is meaningful")
    return study


def _multiple_spread(mdm: np.ndarray | None, ar: np.ndarray | None, budgets: list[float]) -> list[tuple[float, float]] | None:
    """16% and 84% quantiles of the compute multiple over paired bootstrap draws, per budget."""
    if mdm is None or ar is None or min(len(mdm), len(ar)) < 10:
        return None
    n = min(len(mdm), len(ar))
    log_c = np.log(np.asarray(budgets, dtype=float))[None]
    log_ar = ar[:n, 2:3] + ar[:n, 3:4] * log_c  # ln L_ar(C)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_needed = (log_ar - mdm[:n, 2:3]) / mdm[:n, 3:4]
        multiples = np.exp(log_needed - log_c)
    return [(float(lo), float(hi)) for lo, hi in np.nanquantile(multiples, [0.16, 0.84], axis=0).T]


# ------------------------------------------------------------------ reading run folders
def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run folders (holding ``scaling.json``) among ``paths`` and their direct sub-folders."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise MaskdiffError(f"{str(path)!r} is not a folder (give run folders or the --root of `maskdiff scaling run`)")
        if (path / RECORD).is_file():
            found.append(path)
            continue
        inside = sorted(p for p in path.iterdir() if (p / RECORD).is_file())
        if not inside:
            raise MaskdiffError(f"{str(path)!r} holds no scaling run ({RECORD} written by `maskdiff scaling run`)")
        found += inside
    return list(dict.fromkeys(found))


def read_point(run_dir: Path) -> tuple[Point, dict]:
    """A finished run's point and its recorded corpus identity; an unfinished run is an error."""
    record = json.loads((run_dir / RECORD).read_text(encoding="utf-8"))
    cfg = RunConfig.load(run_dir / "config.json") if (run_dir / "config.json").is_file() else None
    latest = latest_checkpoint(run_dir)
    steps = int(record["steps"])
    done = checkpoint_step(latest) if latest is not None else 0
    final = final_validation(run_dir, steps) if done >= steps else None
    if cfg is None or final is None:
        raise MaskdiffError(
            f"run {run_dir} is not finished (step {done} of {steps}{', no final validation' if done >= steps else ''}); "
            "finish it with `maskdiff scaling run PLAN` or leave it out"
        )
    params = parameter_count(cfg, load_tokenizer(run_dir / "tokenizer.json").vocab_size)
    tokens = final_tokens(run_dir, steps) or 0
    budget = float(record["budget"])
    spent = training_flops(params, tokens)
    if abs(spent - budget) / budget > MAX_BUDGET_ERROR:
        raise MaskdiffError(
            f"run {run_dir} spent C = 6 N D = {spent:.3g} FLOPs, not its budget {budget:.3g} "
            "(launched with more processes or another batch?); fit only runs trained as planned"
        )
    family = OBJECTIVES.get(cfg.objective.name).family
    return Point(family, budget, params, float(final["valid_bits"]), tokens, str(run_dir)), record["data"]


def collect_runs(paths: list[str | Path]) -> tuple[list[Point], dict]:
    """The points of every run under ``paths``, checked to come from one corpus.  -> (points, the corpus's identity)"""
    points, identity, first = [], None, None
    for run_dir in find_runs(paths):
        point, data = read_point(run_dir)
        if identity is None:
            identity, first = data, run_dir
        elif data.get("fingerprint") != identity.get("fingerprint"):
            raise MaskdiffError(
                f"runs from different corpora: {first} ({identity['description']}, fingerprint {identity['fingerprint']}) and "
                f"{run_dir} ({data['description']}, fingerprint {data['fingerprint']}); fit each corpus separately"
            )
        points.append(point)
    assert identity is not None  # find_runs found at least one run
    return points, identity


def summary_lines(study: StudyFit) -> list[str]:
    """The fit in a few lines of text, for the terminal."""
    lines = [f"compute: {FLOPS_FORMULA}"]
    for name, fit in study.families.items():
        lines.append(f"{name} ({FAMILY_NAMES.get(name, name)}):")
        for p in fit.parabolas:
            if p.n_opt is None or p.loss_opt is None or p.tokens_opt is None:
                lines.append(f"  C={budget_label(p.budget):>7s}: no minimum ({plural(len(p.points), 'run')}; the loss still falls toward the edge)")
                continue
            where = "" if p.inside else "  (outside the sizes trained)"
            lines.append(
                f"  C={budget_label(p.budget):>7s}: N*={p.n_opt:>12,.0f}  D*={p.tokens_opt:>14,.0f}  "
                f"L*={p.loss_opt:.4f} bits/token  ({plural(len(p.points), 'run')}){where}"
            )
        for label, law in (("N*(C)", fit.n_opt), ("L*(C)", fit.loss_opt)):
            if law is None:
                lines.append(f"  {label}: needs 2 or more budgets with a minimum")
                continue
            errors = [
                f"± {e:.2g} ({what})" for e, what in ((law.exponent_stderr, "least squares"), (law.exponent_bootstrap, "bootstrap")) if e is not None
            ]
            lines.append(f"  {label} = {law.k:.4g} C^{law.exponent:.4f}  {' '.join(errors)}")
    for m in study.compute_multiple:
        interval = "" if m["interval"] is None else f"  (16-84%: {m['interval'][0]:.3g} to {m['interval'][1]:.3g})"
        value = "-" if m["multiple"] is None else f"{m['multiple']:.3g}x"
        lines.append(f"compute multiple at C={budget_label(m['budget'])}: the MDM needs {value} the ARM's compute for its loss{interval}")
    lines += [f"note: {n}" for n in study.notes]
    return lines

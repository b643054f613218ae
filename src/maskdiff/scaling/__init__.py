"""Scaling-law studies: IsoFLOP plans over a size family, running them, and fitting the results.

``maskdiff scaling plan`` (:mod:`~maskdiff.scaling.plan`), ``maskdiff scaling run``
(:mod:`~maskdiff.scaling.runner`) and ``maskdiff scaling fit`` (:mod:`~maskdiff.scaling.fit`,
:mod:`~maskdiff.scaling.plot`); the size family and the FLOP count are in
:mod:`~maskdiff.scaling.family`.
"""

from maskdiff.scaling.family import FAMILY_RULE, FLOPS_FORMULA, member
from maskdiff.scaling.fit import Point, StudyFit, collect_runs, fit_study
from maskdiff.scaling.plan import Plan, load_plan, plan_isoflops, write_plan
from maskdiff.scaling.runner import run_commands, run_plan

__all__ = [
    "FAMILY_RULE",
    "FLOPS_FORMULA",
    "Plan",
    "Point",
    "StudyFit",
    "collect_runs",
    "fit_study",
    "load_plan",
    "member",
    "plan_isoflops",
    "run_commands",
    "run_plan",
    "write_plan",
]

"""Behaviour is asked of the registries, never decided by comparing names (issue 21).

What differs per data format, modality, objective or estimator is a property or method of the
registered object (``DataFormat``, ``ObjectiveEntry`` and its config section, ``Estimator``). Only
the registries' own modules may compare those names; this test reads every other module.
"""

from __future__ import annotations

import re
from pathlib import Path

from maskdiff.data import FORMATS, Modality
from maskdiff.objectives import Estimator

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "maskdiff"
# the modules that define the registries and the enums: where the names are declared
REGISTRY_MODULES = {"data/__init__.py", "objectives/__init__.py", "objectives/estimator.py", "nets/__init__.py"}

WORDS = r"(format|modality|objective|estimator)"
NAMES = sorted({*FORMATS, *(m.value for m in Modality), *(e.value for e in Estimator)}, key=len, reverse=True)
LITERAL = "[\"'](?:" + "|".join(map(re.escape, NAMES)) + ")[\"']"
COMPARISONS = [
    # data.format == ..., objective.name in (...), modality is Modality.IMAGE
    re.compile(rf"\b{WORDS}(\.\w+)*\s*(==|!=|\bis\s+(not\s+)?[A-Z]\w*\.|(\bnot\s+)?\bin\s*[(\[{{])"),
    re.compile(rf"(==|!=)\s*[\w.\[\]]*\b{WORDS}\b(?!\s*\()"),  # ... == cfg.data.format
    re.compile(rf"(==|!=)\s*{LITERAL}|{LITERAL}\s*(==|!=)"),  # x == "pairs", "exact" != y
    re.compile(rf"\bin\s*[(\[{{][^)\]}}]*{LITERAL}"),  # x in ("nelbo", ...)
]


def comparisons(source: str) -> list[str]:
    lines = []
    for number, line in enumerate(source.splitlines(), 1):
        code = line.split("#", 1)[0]
        if any(pattern.search(code) for pattern in COMPARISONS):
            lines.append(f"{number}: {line.strip()}")
    return lines


def test_the_patterns_catch_what_they_are_for():
    caught = [
        'if cfg.data.format == "pairs":',
        'if data.modality != "image":',
        'if diffusion.objective != "ar":',
        'if cfg.objective.name in ("ar", "bd3"):',
        'draws = 1 if score.estimator == "exact" else k',
        'if kind == "chain_rule":',
        'if "tokens" == fmt:',
        "if data.modality is Modality.IMAGE:",
    ]
    assert all(comparisons(line) for line in caught), [line for line in caught if not comparisons(line)]
    fine = [
        "if cfg.data.data_format.padded_examples:",
        "if not estimator.monte_carlo:",
        'f"data.format={name}"',
        "if self.format not in FORMATS:",
        'f"(its data format is {cfg.data.format})"',
        'used = name == "objective"',
        "What an objective is in words",
    ]
    assert not any(comparisons(line) for line in fine), [line for line in fine if comparisons(line)]


def test_no_module_outside_the_registries_compares_format_modality_objective_or_estimator_names():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        if name not in REGISTRY_MODULES:
            hits = comparisons(path.read_text(encoding="utf-8"))
            if hits:
                found[name] = hits
    assert not found, "ask the registered object instead of comparing names:\n" + "\n".join(
        f"  {name}:{hit}" for name, hits in found.items() for hit in hits
    )

"""The building blocks of typed config sections: fields with one-line docs, validation on construction.

Kept apart from :mod:`maskdiff.config` so that plug-ins (networks, objectives, data formats) can
define their own sections without importing the whole run config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any

from maskdiff.errors import MaskdiffError


def option(default: Any, doc: str) -> Any:
    """A dataclass field with a default and a one-line description."""
    return field(default=default, metadata={"doc": doc})


class Section:
    """Shared behaviour of config sections: validation on construction and field docs."""

    def problems(self) -> list[str]:
        """Every problem with the values, as ``section.key must ...`` lines (empty when valid)."""
        return []

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise MaskdiffError("invalid config: " + "; ".join(problems))

    @classmethod
    def docs(cls) -> dict[str, str]:
        """Field name -> one-line description."""
        return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cls)}  # type: ignore[arg-type]


def at_least_one(section: object, prefix: str, names: tuple[str, ...]) -> list[str]:
    """Problems for integer fields of ``section`` that must be >= 1."""
    return [f"{prefix}.{name} must be >= 1" for name in names if getattr(section, name) < 1]

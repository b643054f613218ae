"""Named plug-ins: one small table per kind of extension (architectures, objectives, data formats,
tokenizers, sampler rules), filled where each plug-in is defined.

Config validation, the CLI's choices and the builders all ask the table, so the valid names live
next to the code that implements them. See docs/architecture.md for where each table lives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from enum import Enum
from typing import Generic, TypeVar

from maskdiff.errors import MaskdiffError

T = TypeVar("T")


class Named(str, Enum):
    """A closed set of names (modalities, estimators) whose members are their names: equal to,
    printed and serialised to JSON as the plain string (``enum.StrEnum``, which Python 3.10 lacks)."""

    __hash__ = str.__hash__  # a member finds what its plain name keys (Python 3.10 hashes an Enum by its member name)

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Registry(Generic[T]):
    """A name -> entry table for one kind of plug-in; ``kind`` names it in error messages."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: add ``entry`` under ``name`` (each name once)."""

        def add(entry: T) -> T:
            self.add(name, entry)
            return entry

        return add

    def add(self, name: str, entry: T) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry

    def remove(self, name: str) -> T:
        """Take ``name`` out of the table (a plug-in registered for a while, e.g. in a test).  -> its entry"""
        entry = self.get(name)
        del self._entries[name]
        return entry

    def get(self, name: str) -> T:
        """The entry called ``name``; an unknown name is a :class:`MaskdiffError` listing the choices."""
        try:
            return self._entries[name]
        except KeyError:
            raise MaskdiffError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self._entries)}") from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def items(self):
        return self._entries.items()

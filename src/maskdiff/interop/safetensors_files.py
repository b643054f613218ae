"""Tensors of a checkpoint in safetensors files, read lazily: one file, a folder of them, or a
folder sharded with a ``*.safetensors.index.json``.

Every file is memory-mapped (``safe_open``), so a tensor is read from disk when it is asked for
and a multi-gigabyte checkpoint never sits in memory whole (each read maps the file anew and
unmaps it after). A truncated or foreign file is a
:class:`MaskdiffError` that names it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from maskdiff.errors import MaskdiffError


class SafetensorsFiles:
    """Name -> tensor over the safetensors files of ``path`` (a file, or a folder holding them)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._where: dict[str, Path] = {}
        self._handles: dict[Path, object] = {}
        for file in self._files():
            handle = self._open(file)
            for name in handle.keys():
                self._where[name] = file

    def _files(self) -> list[Path]:
        if self.path.is_file():
            return [self.path]
        indexes = sorted(self.path.glob("*.safetensors.index.json"))
        if indexes:
            try:
                weight_map = json.loads(indexes[0].read_text())["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise MaskdiffError(f"{indexes[0]} is not a safetensors index (a weight_map of tensor names to files): {err}") from None
            files = sorted({self.path / name for name in weight_map.values()})
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise MaskdiffError(f"{indexes[0].name} names shards that are not in {self.path}: {', '.join(missing[:3])}")
            return files
        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            raise MaskdiffError(f"{self.path} holds no .safetensors file")
        return files

    def _open(self, file: Path):
        if file not in self._handles:
            try:
                self._handles[file] = safe_open(str(file), framework="pt")
            except (SafetensorError, OSError, ValueError) as err:
                raise MaskdiffError(f"{file} is not a complete safetensors file ({' '.join(str(err).split())})") from None
        return self._handles[file]

    def names(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._open(self._where[name]).get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        """The tensor ``name``, read from its file through a mapping of its own: closing it right
        away unmaps the pages it touched, so reading every tensor in turn never leaves the whole
        checkpoint resident in this process."""
        if name not in self._where:
            raise MaskdiffError(f"{self.path} has no tensor {name!r}")
        with safe_open(str(self._where[name]), framework="pt") as f:
            return f.get_tensor(name)

    def dtype(self, name: str) -> torch.dtype:
        return _DTYPES[self._open(self._where[name]).get_slice(name).get_dtype()]


_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64, "I64": torch.int64, "I32": torch.int32}

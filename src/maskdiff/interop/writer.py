"""Write an imported model as an ordinary run folder, atomically and one tensor at a time.

The folder is what training leaves (maskdiff/checkpoint.py)::

    RUN/config.json   RUN/tokenizer.json   RUN/import.json (where it came from)
    RUN/checkpoints/LATEST   RUN/checkpoints/step-000000/model.safetensors + manifest.json

``model.safetensors`` is written by hand in the safetensors layout (a JSON header of names,
dtypes, shapes and byte offsets, then the raw bytes): the header is known before any weight is
read, so each tensor is converted, written and dropped in turn and the process never holds more
than one of them. Everything goes to a temporary folder next to ``RUN`` that is renamed into
place at the end, so a failed import leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from maskdiff.checkpoint import CHECKPOINTS, LATEST, MANIFEST, checkpoint_name
from maskdiff.config import RunConfig
from maskdiff.errors import MaskdiffError
from maskdiff.integrity import file_digest

SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}


@dataclass
class PlannedTensor:
    """One tensor of the file to write: its shape and dtype now, its values when ``make`` is called."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    make: Callable[[], torch.Tensor]


def write_safetensors(path: Path, tensors: dict[str, PlannedTensor]) -> None:
    """Write ``tensors`` to a safetensors file, making each one only when its turn comes."""
    header: dict[str, object] = {}
    offset = 0
    for name, planned in tensors.items():
        size = planned.dtype.itemsize * int(torch.Size(planned.shape).numel())
        header[name] = {"dtype": SAFETENSORS_DTYPES[planned.dtype], "shape": list(planned.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name, planned in tensors.items():
            tensor = planned.make()
            if tuple(tensor.shape) != tuple(planned.shape):
                raise MaskdiffError(f"tensor {name} came out {list(tensor.shape)}, not {list(planned.shape)}")
            f.write(tensor.detach().to(planned.dtype).contiguous().cpu().view(torch.uint8).numpy().tobytes())
            del tensor
        f.flush()
        os.fsync(f.fileno())


def write_run(out: Path, config: RunConfig, tokenizer, tensors: dict[str, PlannedTensor], provenance: dict) -> Path:
    """A run folder at ``out`` (which must not exist) holding ``config``, ``tokenizer`` and the weights."""
    out = Path(out)
    if out.exists():
        raise MaskdiffError(f"{out} already exists; choose a new --out folder")
    if not out.parent.is_dir():
        raise MaskdiffError(f"the folder {out.parent} of --out does not exist")
    tmp = out.with_name(f".{out.name}.importing")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        checkpoint = tmp / CHECKPOINTS / checkpoint_name(0)
        checkpoint.mkdir(parents=True)
        config.save(tmp / "config.json")
        tokenizer.save(tmp / "tokenizer.json")
        (tmp / "import.json").write_text(json.dumps(provenance, indent=2) + "\n")
        weights = checkpoint / "model.safetensors"
        write_safetensors(weights, tensors)
        manifest = {weights.name: {"bytes": weights.stat().st_size, "sha256": file_digest(weights)}}
        (checkpoint / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        (tmp / CHECKPOINTS / LATEST).write_text(checkpoint.name + "\n")
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out

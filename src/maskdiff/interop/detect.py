"""``maskdiff import auto``: which format a source is, from its first bytes, ``config.json`` or tensor names."""

from __future__ import annotations

import json
from pathlib import Path

from maskdiff.errors import MaskdiffError
from maskdiff.interop.hf import CAUSAL_TYPES

MASKDIFF_TYPE = "maskdiff"  # the model_type of a folder written by `maskdiff export hf`


def detect_format(source: Path) -> str:
    """smdm, llada, dream, hf, gguf or maskdiff; a one-line error saying what was found otherwise."""
    source = Path(source)
    if not source.exists():
        raise MaskdiffError(f"{source} does not exist")
    if source.is_file():
        with open(source, "rb") as f:
            head = f.read(4)
        if head == b"GGUF":
            return "gguf"
        if source.suffix == ".safetensors":
            from maskdiff.interop.safetensors_files import SafetensorsFiles

            names = SafetensorsFiles(source).names()
            if "transformer.wte.weight" in names and any(".attn.attn.weight" in n for n in names):
                return "smdm"
            raise MaskdiffError(f"cannot tell the format of {source}: its tensors ({', '.join(sorted(names)[:3])}, ...) are not SMDM's")
        raise MaskdiffError(f"cannot tell the format of {source}: neither a GGUF file nor a .safetensors checkpoint")
    config_file = source / "config.json"
    if not config_file.is_file():
        raise MaskdiffError(f"cannot tell the format of {source}: a model folder needs a config.json")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as err:
        raise MaskdiffError(f"{config_file} is not valid JSON: {err}") from None
    kind = str(config.get("model_type", ""))
    architectures = config.get("architectures") or []
    if kind == MASKDIFF_TYPE:
        return "maskdiff"
    if kind.lower() == "llada" or "LLaDAModelLM" in architectures:
        return "llada"
    if kind.lower() == "dream":
        return "dream"
    if kind in CAUSAL_TYPES:
        return "hf"
    raise MaskdiffError(f"cannot tell the format of {source}: config.json has model_type {kind!r} and architectures {architectures}; name the format")

"""`maskdiff import`: a checkpoint of any format read, checked and written as a run folder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from maskdiff.config import RunConfig
from maskdiff.errors import MaskdiffError
from maskdiff.interop import FORMATS
from maskdiff.interop.detect import detect_format
from maskdiff.interop.gguf_file import read_gguf
from maskdiff.interop.hf import read_dream, read_hf
from maskdiff.interop.layout import check_shapes, plan_weights
from maskdiff.interop.llada import read_llada
from maskdiff.interop.smdm import read_smdm
from maskdiff.interop.source import ImportSource
from maskdiff.interop.writer import write_run
from maskdiff.nets import TransformerConfig

Reader = Callable[[Path, "str | None", dict[str, str]], ImportSource]
READERS: dict[str, Reader] = {"smdm": read_smdm, "llada": read_llada, "dream": read_dream, "hf": read_hf, "gguf": read_gguf}  # FORMATS but auto


def parse_settings(overrides: Sequence[str]) -> dict[str, str]:
    """``key=value`` strings as a dict (the config checks the keys and values later)."""
    settings = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise MaskdiffError(f"--set takes key=value, got {item!r}")
        settings[key.strip()] = value.strip()
    return settings


def run_config(source: ImportSource, overrides: Sequence[str]) -> RunConfig:
    """The run's config: the source's network and objective, then the user's ``--set`` overrides."""
    raw = {
        "preset": f"import-{source.format}",
        "model": source.model,
        "objective": source.objective,
        "data": {"seq_len": source.seq_len},
    }
    return RunConfig.from_dict(raw).with_overrides(list(overrides))


def import_checkpoint(fmt: str, source: str | Path, out: str | Path, tokenizer: str | None = None, overrides: Sequence[str] = ()) -> Path:
    """Import the checkpoint ``source`` of format ``fmt`` (or "auto") as a run folder ``out``.

    ``tokenizer``: a tokenizer.json or a folder holding one (needed for SMDM's files; the others
    carry their own). ``overrides``: ``section.key=value`` settings of the run's config (e.g.
    ``model.n_heads=H`` for an SMDM size not in its table, ``data.seq_len=N``). Nothing is written
    unless every check passes; the folder appears whole or not at all.
    """
    source, out = Path(source), Path(out)
    if out.exists():
        raise MaskdiffError(f"{out} already exists; choose a new --out folder")
    if not source.exists():
        raise MaskdiffError(f"{source} does not exist")
    if fmt == "auto":
        fmt = detect_format(source)
    if fmt == "maskdiff":
        from maskdiff.interop.export import import_exported

        return import_exported(source, out, overrides)
    if fmt not in READERS:
        raise MaskdiffError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    settings = parse_settings(overrides)
    read = READERS[fmt]
    if fmt in ("smdm", "gguf") and source.is_dir():
        raise MaskdiffError(f"the {fmt} format is one file; {source} is a folder")
    if fmt in ("llada", "dream", "hf") and not source.is_dir():
        raise MaskdiffError(f"the {fmt} format is a model folder (config.json, tokenizer.json, *.safetensors); {source} is a file")
    imported = read(source, tokenizer, settings)
    config = run_config(imported, overrides)
    model = config.model
    assert isinstance(model, TransformerConfig)
    check_shapes(model, imported.vocab, imported.shapes, imported.names)
    plan = plan_weights(model, imported.vocab, imported.weights, imported.dtype)
    provenance = {"format": fmt, "source": str(source.resolve()), **imported.about}
    return write_run(out, config, imported.tokenizer, plan, provenance)

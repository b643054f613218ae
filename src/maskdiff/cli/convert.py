"""`maskdiff import` and `maskdiff export`: released checkpoints in, runs out (maskdiff/interop/)."""

from __future__ import annotations

from dataclasses import dataclass

from maskdiff.cli.common import Commands, Parser, set_handler


@dataclass(frozen=True)
class ImportArgs:
    """The flags of `maskdiff import`."""

    format: str
    source: str
    out: str
    tokenizer: str | None
    set: list[str] | None


@dataclass(frozen=True)
class ExportArgs:
    """The flags of `maskdiff export`."""

    target: str
    run: str
    out: str


def cmd_import(args: ImportArgs) -> int:
    from maskdiff.interop.importer import import_checkpoint

    out = import_checkpoint(args.format, args.source, args.out, args.tokenizer, args.set or [])
    print(f"imported {args.source} as run {out}; use it with --checkpoint {out}")
    return 0


def cmd_export(args: ExportArgs) -> int:
    from maskdiff.interop.export import export_hf

    out = export_hf(args.run, args.out)
    print(f"exported {args.run} to {out}; `maskdiff import auto {out} --out RUN` reads it back")
    return 0


def add_convert_parsers(sub: Commands) -> None:
    sub.add_command("import", "import a released checkpoint as a run folder", fill_import_parser)
    sub.add_command("export", "export a run as a Hugging Face-style folder", fill_export_parser)


def fill_import_parser(p: Parser) -> None:
    from maskdiff.interop import FORMATS  # the names only: no torch

    p.description = (
        "Import a pretrained checkpoint (SMDM's safetensors files, LLaDA or Dream folders, Hugging Face causal LM folders, "
        "GGUF files, or a `maskdiff export hf` folder) as a run folder that every command takes with --checkpoint. The run "
        "holds a converted copy of the weights; nothing is written unless the import succeeds."
    )
    p.add_argument("format", choices=FORMATS, help="the checkpoint's format; auto tells it from the file or config.json")
    p.add_argument("source", help="the checkpoint: a .safetensors or .gguf file, or a model folder")
    p.add_argument("--out", required=True, metavar="RUN", help="the run folder to create (must not exist)")
    p.add_argument("--tokenizer", metavar="PATH", help="a tokenizer.json or a folder holding one (required for smdm: TinyLlama's)")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="a config value of the run, e.g. model.n_heads=14 or data.seq_len=1024 (repeatable)"
    )
    set_handler(p, ImportArgs, cmd_import)


def fill_export_parser(p: Parser) -> None:
    p.description = (
        "Write a run as config.json, model.safetensors (sharded with an index past 5 GB), the tokenizer files and a model card; "
        "`maskdiff import auto DIR` reads it back."
    )
    p.add_argument("target", choices=("hf",), help="the folder layout to write")
    p.add_argument("run", help="a run folder or one of its checkpoints")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to create (must not exist)")
    set_handler(p, ExportArgs, cmd_export)

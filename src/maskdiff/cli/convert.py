"""`maskdiff import` and `maskdiff export`: released checkpoints in, runs out (maskdiff/interop/)."""

from __future__ import annotations

from maskdiff.cli.common import Subcommands


def cmd_import(args) -> int:
    from maskdiff.interop import import_checkpoint

    out = import_checkpoint(args.format, args.source, args.out, args.tokenizer, args.set or [])
    print(f"imported {args.source} as run {out}; use it with --checkpoint {out}")
    return 0


def cmd_export(args) -> int:
    from maskdiff.interop.export import export_hf

    out = export_hf(args.run, args.out)
    print(f"exported {args.run} to {out}; `maskdiff import auto {out} --out RUN` reads it back")
    return 0


def add_convert_parsers(sub: Subcommands) -> None:
    from maskdiff.interop import FORMATS

    p = sub.add_parser(
        "import",
        help="import a released checkpoint as a run folder",
        description="Import a pretrained checkpoint (SMDM's safetensors files, LLaDA or Dream folders, Hugging Face causal LM "
        "folders, GGUF files, or a `maskdiff export hf` folder) as a run folder that every command takes with --checkpoint. "
        "The run holds a converted copy of the weights; nothing is written unless the import succeeds.",
    )
    p.add_argument("format", choices=FORMATS, help="the checkpoint's format; auto tells it from the file or config.json")
    p.add_argument("source", help="the checkpoint: a .safetensors or .gguf file, or a model folder")
    p.add_argument("--out", required=True, metavar="RUN", help="the run folder to create (must not exist)")
    p.add_argument("--tokenizer", metavar="PATH", help="a tokenizer.json or a folder holding one (required for smdm: TinyLlama's)")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="a config value of the run, e.g. model.n_heads=14 or data.seq_len=1024 (repeatable)"
    )
    p.set_defaults(handler=cmd_import)

    p = sub.add_parser(
        "export",
        help="export a run as a Hugging Face-style folder",
        description="Write a run as config.json, model.safetensors (sharded with an index past 5 GB), the tokenizer files and a "
        "model card; `maskdiff import auto DIR` reads it back.",
    )
    p.add_argument("target", choices=("hf",), help="the folder layout to write")
    p.add_argument("run", help="a run folder or one of its checkpoints")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to create (must not exist)")
    p.set_defaults(handler=cmd_export)

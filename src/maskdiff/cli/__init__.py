"""The ``maskdiff`` command line: a table from subcommand to one library function.

One module per command group (:mod:`.train`, :mod:`.sample`, :mod:`.evaluate`, :mod:`.data`,
:mod:`.scaling`, :mod:`.bench`, :mod:`.serve`, :mod:`.presets`), each with its handlers and its
parser; :mod:`.common` holds what their parsers share. Each handler takes its flags as one typed
dataclass, calls the library and prints. Problems a user can fix raise :class:`MaskdiffError` and
end as one line on stderr with a non-zero exit; ``--debug`` shows the traceback of anything else.

Start-up: the command modules import the library (and torch) inside their handlers, and a
command's flags are added only when it is used (:class:`~maskdiff.cli.common.Commands`), so
``maskdiff --help``, a command's ``--help`` and usage errors end before torch is imported
(``tests/test_cli.py`` checks it) unless that command's flags come from the sampler's rules.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator

from maskdiff.cli import bench, convert, data, evaluate, presets, sample, scaling, serve, train
from maskdiff.cli.common import EXIT_ERROR, Parser, add_commands
from maskdiff.errors import MaskdiffError


def build_parser(lazy: bool = False) -> Parser:
    """The ``maskdiff`` parser; ``lazy``: each command's flags are added when it is used (what
    :func:`main` does), else all at once (to inspect them)."""
    parser = Parser(prog="maskdiff", description="Masked discrete diffusion: train, sample and evaluate.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = add_commands(parser, "command", "COMMAND")
    train.add_train_parsers(sub)
    sample.add_sample_parser(sub)
    evaluate.add_eval_parser(sub)
    data.add_facts_parser(sub)
    serve.add_serve_parser(sub)
    bench.add_bench_parser(sub)
    data.add_prepare_parser(sub)
    scaling.add_scaling_parser(sub)
    presets.add_presets_parser(sub)
    convert.add_convert_parsers(sub)
    if not lazy:
        sub.fill_all()
    return parser


@contextlib.contextmanager
def command_threads(args: argparse.Namespace) -> Iterator[None]:
    """The CPU threads a command asked for with --threads (or chosen for it), for its duration only:
    in-process callers (tests, notebooks) keep their own setting."""
    import torch  # here, not at the top: --help and usage errors end before torch loads

    from maskdiff.hardware import choose_threads

    previous = torch.get_num_threads()
    try:
        if "threads" in args:
            torch.set_num_threads(choose_threads(args.threads))
        yield
    finally:
        torch.set_num_threads(previous)


def one_line(err: BaseException) -> str:
    text = str(err)
    if "maskdiff.sampling" in sys.modules:  # a sampler option is named by its flag (the library is loaded by then)
        from maskdiff.sampling.flags import OptionError, flag_message

        text = flag_message(err) if isinstance(err, OptionError) else text
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``maskdiff`` command."""
    args = build_parser(lazy=True).parse_args(argv)
    try:
        with command_threads(args):
            return args.handler(args)
    except MaskdiffError as err:
        if args.debug:
            raise
        print(f"maskdiff {args.command}: error: {one_line(err)}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as err:  # disk full, permissions, a vanished file
        if args.debug:
            raise
        print(f"maskdiff {args.command}: error: {one_line(err)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"maskdiff {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug: keep the message short unless asked
        if args.debug:
            raise
        print(
            f"maskdiff {args.command}: internal error: {type(err).__name__}: {one_line(err)} (rerun with --debug for the traceback)", file=sys.stderr
        )
        return EXIT_ERROR

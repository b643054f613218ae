"""The ``maskdiff`` command line: a table from subcommand to one library function.

One module per command group (:mod:`.train`, :mod:`.sample`, :mod:`.evaluate`, :mod:`.data`,
:mod:`.scaling`, :mod:`.bench`, :mod:`.serve`, :mod:`.presets`), each with its handlers and its
parser; :mod:`.common` holds what their parsers share. Each handler only parses arguments, calls
the library and prints. Problems a user can fix raise :class:`MaskdiffError` and end as one line
on stderr with a non-zero exit; ``--debug`` shows the traceback of anything else.
"""

from __future__ import annotations

import sys

import torch

from maskdiff.cli import bench, data, evaluate, presets, sample, scaling, serve, train
from maskdiff.cli.common import EXIT_ERROR, Parser
from maskdiff.errors import MaskdiffError
from maskdiff.hardware import choose_threads
from maskdiff.sampling.flags import OptionError, flag_message


def build_parser() -> Parser:
    parser = Parser(prog="maskdiff", description="Masked discrete diffusion: train, sample and evaluate.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")
    train.add_train_parsers(sub)
    sample.add_sample_parser(sub)
    evaluate.add_eval_parser(sub)
    data.add_facts_parser(sub)
    serve.add_serve_parser(sub)
    bench.add_bench_parser(sub)
    data.add_prepare_parser(sub)
    scaling.add_scaling_parser(sub)
    presets.add_presets_parser(sub)
    return parser


def one_line(err: BaseException) -> str:
    text = flag_message(err) if isinstance(err, OptionError) else str(err)  # a sampler option named by its flag
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``maskdiff`` command."""
    args = build_parser().parse_args(argv)
    previous_threads = torch.get_num_threads()
    try:
        if "threads" in args:
            torch.set_num_threads(choose_threads(args.threads))
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
    finally:
        torch.set_num_threads(previous_threads)  # in-process callers (tests, notebooks) keep their own setting

"""`maskdiff serve`: a trained run over HTTP (the serve extra)."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

from maskdiff.cli.common import Commands, Parser, add_threads, inputs_of, set_handler
from maskdiff.errors import MaskdiffError, install_hint
from maskdiff.serve.limits import Limits

SERVE_LIMITS = {  # Limits field -> (flag, help)
    "max_body_bytes": ("--max-body-bytes", "request bodies larger than this get 413"),
    "max_length": ("--max-length", "tokens per generated sequence, prompt included (0: the run's sequence length)"),
    "max_steps": ("--max-steps", "reverse-process steps per request"),
    "max_samples": ("--max-samples", "sequences per request (n times the prompts)"),
    "max_queue": ("--max-queue", "requests waiting for the worker; more get 503 with Retry-After"),
    "max_batch": ("--max-batch", "sequences sampled together in one batch"),
    "max_score_tokens": ("--max-score-tokens", "tokens of a text scored by /api/likelihood"),
    "max_mc_samples": ("--max-mc-samples", "Monte Carlo draws per /api/likelihood request"),
    "batch_wait": ("--batch-wait", "seconds the worker waits for more compatible requests before a batch"),
}
PORTS = range(0, 65536)  # 0: the system picks a free one


def port(text: str) -> int:
    """``--port``'s type: a TCP port, refused before anything loads when out of range."""
    value = int(text)  # not a number: argparse's "invalid port value"
    if value not in PORTS:
        raise argparse.ArgumentTypeError(f"{value} is not a port: give {PORTS.start}-{PORTS.stop - 1} ({PORTS.start}: a free one)")
    return value


@dataclass(frozen=True)
class ServeArgs:
    """The flags of `maskdiff serve`; the request limits are ``limits``."""

    checkpoint: str
    host: str
    port: int
    token: str | None
    weights: str
    precision: str
    quiet: bool
    limits: Limits


def serve_inputs(args: argparse.Namespace) -> ServeArgs:
    return inputs_of(ServeArgs, args, limits=Limits(**{name: getattr(args, name) for name in SERVE_LIMITS}))


def cmd_serve(args: ServeArgs) -> int:
    try:
        from maskdiff.serve import serve
    except ImportError as err:
        raise MaskdiffError(f"maskdiff serve needs its optional packages ({err.name} is missing): {install_hint('serve')}") from None

    def ready(url: str) -> None:
        auth = "bearer token required" if args.token or os.environ.get("MASKDIFF_SERVE_TOKEN") else "no token"
        if auth == "no token" and args.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"maskdiff serve: warning: listening on {args.host} without a token: anyone who reaches it can use the model", file=sys.stderr)
        print(f"maskdiff: serving {args.checkpoint} on {url} ({auth}); page {url}/, OpenAI API {url}/v1 (Ctrl-C stops)", flush=True)

    try:
        serve(
            args.checkpoint, args.host, args.port, args.token, args.limits, args.weights, args.precision, "warning" if args.quiet else "info", ready
        )
    except KeyboardInterrupt:  # Ctrl-C is how a server is meant to stop: the server has shut down cleanly by now
        pass
    print("maskdiff: server stopped", flush=True)
    return 0


def add_serve_parser(sub: Commands) -> None:
    sub.add_command("serve", "serve a checkpoint over HTTP (OpenAI completions, a live page)", fill_serve_parser)


def fill_serve_parser(p: Parser) -> None:
    p.description = (
        "Serve a trained run (any objective, text or images) over HTTP: a page at / that shows the model unmasking "
        "step by step, POST /v1/completions in the OpenAI shape (streamed with stream=true; masked-diffusion options such as "
        "steps, method, block_size, cfg and infill as extra fields), POST /api/sample/stream (every intermediate state as "
        "server-sent events), POST /api/likelihood and GET /api/info. Compatible requests that arrive together are sampled as "
        "one batch, each row with its own seed. Needs the serve extra: " + install_hint("serve") + "."
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="run folder or one of its checkpoint folders")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument(
        "--token",
        help="require 'Authorization: Bearer TOKEN' on every API path (default: $MASKDIFF_SERVE_TOKEN; unset: no token)",
    )
    defaults = Limits()
    for name, (flag, text) in SERVE_LIMITS.items():
        value = getattr(defaults, name)
        p.add_argument(flag, dest=name, type=type(value), default=value, help=f"{text} (default {value})")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema", help="EMA or raw weights (default ema)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help="numeric precision")
    p.add_argument("--quiet", action="store_true", help="log warnings only, not every request")
    add_threads(p)
    set_handler(p, ServeArgs, cmd_serve, serve_inputs)

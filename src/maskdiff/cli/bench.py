"""`maskdiff bench train` and `maskdiff bench generate`: benchmarks that print their figures and write them as JSON."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from maskdiff.cli.common import Commands, Parser, add_commands, add_threads, set_handler
from maskdiff.errors import MaskdiffError, plural


@dataclass(frozen=True)
class BenchTrainArgs:
    """The flags of `maskdiff bench train`."""

    sizes: str
    precision: str
    batch: int
    seq_len: int | None
    steps: int
    min_time: float
    max_time: float
    warmup: int
    wait_quiet: float
    set: list[str] | None
    device: str
    profile: bool
    compile: bool
    json: str | None


def cmd_bench_train(args: BenchTrainArgs) -> int:
    from maskdiff.bench.train import Timing, bench_train, format_table, profile_table

    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    timing = Timing(steps=max(1, args.steps), min_time=args.min_time, max_time=args.max_time, warmup=args.warmup, wait_quiet=args.wait_quiet)
    done = lambda r: print(f"  {r.size} {r.precision} {r.mode}: {r.tokens_per_s:,.0f} tokens/s, MFU {r.mfu:.0%}", file=sys.stderr, flush=True)  # noqa: E731
    bench = bench_train(sizes, precisions, args.batch, args.seq_len, list(args.set or []), args.device, timing, on_result=done, compile=args.compile)
    print(format_table(bench))
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(bench.to_dict(), indent=1) + "\n")
        except OSError as err:
            raise MaskdiffError(f"could not write {args.json!r} ({err.strerror or err}); the table is printed above") from None
    if args.profile:
        for precision in [p for p in precisions if p not in bench.skipped]:
            for size in sizes:
                print("\n" + profile_table(size, precision, args.batch, args.seq_len, list(args.set or [])))
    return 0


@dataclass(frozen=True)
class BenchGenerateArgs:
    """The flags of `maskdiff bench generate`."""

    mdm: str
    ar: str
    prompts: int
    prompt_length: int
    length: int | None
    steps: str
    rules: str
    cfg: str
    judge: str | None
    seed: int
    precision: str
    json: str | None
    out: str | None
    quiet: bool


def cmd_bench_generate(args: BenchGenerateArgs) -> int:
    from maskdiff.bench.generate import benchmark_generation, parse_list, write_outputs

    bench = benchmark_generation(
        args.mdm,
        args.ar,
        prompts=args.prompts,
        prompt_length=args.prompt_length,
        length=args.length,
        steps=parse_list(args.steps, int, "--steps"),
        rules=parse_list(args.rules, str, "--rules"),
        cfg=parse_list(args.cfg, float, "--cfg"),
        judge=args.judge,
        seed=args.seed,
        precision=args.precision,
        progress=not args.quiet,
    )
    out = Path(args.out) if args.out else Path("runs") / f"bench-generate-{time.strftime('%Y%m%d-%H%M%S')}"
    paths = write_outputs(bench, out, args.json)
    info = bench.info
    print(
        f"{plural(info['num_prompts'], 'validation prompt')} of {plural(info['prompt_length'], 'token')}, "
        f"{plural(info['length'], 'token')} generated each; {info['device']} {info['precision']}, {plural(info['threads'], 'thread')}, "
        f"judge {info['judge'] or 'none (--judge smollm2 for generative perplexity)'}"
    )
    print((out / "table.md").read_text(encoding="utf-8").rstrip())
    print("\n".join(f"{name}: {path}" for name, path in paths.items()))
    return 0


def add_bench_parser(sub: Commands) -> None:
    sub.add_command("bench", "benchmarks: training throughput, generation speed against quality", fill_bench_parser)


def fill_bench_parser(p: Parser) -> None:
    p.description = (
        "Benchmarks that print their figures and write them as JSON (and PNG): `maskdiff bench train` (training "
        "tokens/s and MFU against the measured matmul peak), `maskdiff bench generate` (MDM vs ARM, speed against quality)."
    )
    bench = add_commands(p, "bench_command", "BENCHMARK")
    bench.add_command("train", "training tokens/s and model FLOPs utilisation", fill_bench_train_parser)
    bench.add_command("generate", "MDM vs ARM: wall time, tokens/s, network calls and sample quality on the same prompts", fill_bench_generate_parser)


def fill_bench_train_parser(p: Parser) -> None:
    p.description = (
        "Measure the matmul peak of each precision (a square matmul of the model's MLP width, on the threads "
        "training uses), then the training step (AdamW, clipping, EMA, time conditioning on for tiny, 5M and 25M; random "
        "tokens) of each size, eager and with --compile also compiled: tokens/s, FLOPs per token (forward + backward, "
        "attention included), GFLOP/s and MFU = achieved / peak (on a GPU: against 8192^3 matmuls, with the GPU's busy share). "
        "bf16 autocast is measured only where the hardware has native bf16 (the reason is printed otherwise). Steps "
        "slowed by other processes on the cores are replaced by extra ones. Prints a table; --json also writes the figures."
    )
    p.add_argument(
        "--sizes",
        default="tiny,5M,25M",
        help="comma-separated sizes: tiny (the preset), 5M (6x256), 25M (8x512), md4-small, smdm-170m, llama-135m (the 135M Llama shape) "
        "(default tiny,5M,25M)",
    )
    p.add_argument("--precision", default="fp32,bf16", help="comma-separated precisions: fp32, bf16 (default both)")
    p.add_argument("--batch", type=int, default=32, help="sequences per step (default 32)")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (default: 128 for tiny, 256 otherwise)")
    p.add_argument("--steps", type=int, default=5, help="minimum uncontended timed steps per size (default 5)")
    p.add_argument("--min-time", type=float, default=3.0, help="minimum timed seconds per size (default 3)")
    p.add_argument("--max-time", type=float, default=60.0, help="seconds per size after which contended steps are no longer replaced (default 60)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps per size (default 2)")
    p.add_argument("--wait-quiet", type=float, default=30.0, help="seconds to wait for other processes to leave the cores before each measurement")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override for every size, e.g. train.ema_decay=0 (repeatable)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run (default auto)")
    p.add_argument("--profile", action="store_true", help="also print torch.profiler's ops by CPU time for each size (3 steps)")
    p.add_argument("--compile", action="store_true", help="also measure each size with the loss under torch.compile (train.compile), next to eager")
    p.add_argument("--json", metavar="FILE", help="also write the figures, the CPU and the skipped precisions as JSON")
    add_threads(p)
    set_handler(p, BenchTrainArgs, cmd_bench_train)


def fill_bench_generate_parser(p: Parser) -> None:
    from maskdiff.sampling import RULES

    p.description = (
        "Continue the same prompts (the start of evenly spread chunks of the validation split) with a masked "
        "diffusion run at every --steps count, --rules rule and --cfg guidance weight, and with an autoregressive run on "
        "its KV cache. Reports wall time, generated tokens/s, network evaluations, and quality: generative perplexity "
        "under --judge with unigram entropy and distinct-n next to it (so repetitive text cannot look good), the "
        "validation text's own continuations as the reference. Guidance is unsupervised classifier-free guidance (the "
        "prompt masked in the unconditional pass; no special training needed). Writes OUT/table.md, the JSON, "
        "OUT/quality_vs_time.png, OUT/samples.md and every setting's samples under OUT/samples/."
    )
    p.add_argument("--mdm", required=True, metavar="RUN", help="a masked diffusion run folder (or checkpoint)")
    p.add_argument("--ar", required=True, metavar="RUN", help="an autoregressive run folder (or checkpoint) with the same tokenizer")
    p.add_argument("--prompts", type=int, default=16, metavar="N", help="prompts, one sample each (default 16)")
    p.add_argument("--prompt-length", type=int, default=32, metavar="P", help="prompt tokens (default 32)")
    p.add_argument("--length", type=int, metavar="L", help="tokens to generate after each prompt (default: the MDM's sequence length minus P)")
    p.add_argument("--steps", default="16,64,256", metavar="S,S,...", help="MDM sampler steps (default 16,64,256)")
    p.add_argument(
        "--rules",
        default="ancestral,low_confidence",
        metavar="RULE,...",
        help=f"MDM sampler rules (default ancestral,low_confidence; any of {', '.join(RULES.names())})",
    )
    p.add_argument("--cfg", default="0,1", metavar="W,W,...", help="MDM guidance weights; 0 is without guidance (default 0,1)")
    p.add_argument(
        "--judge",
        metavar="PATH_OR_ID",
        help="causal LM for generative perplexity: a model folder, a .gguf file, a hub id or 'smollm2' (needs maskdiff[judge]); default none",
    )
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help="numeric precision")
    p.add_argument("--json", metavar="FILE", help="write the JSON here (default OUT/generate.json)")
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/bench-generate-TIMESTAMP)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_threads(p)
    set_handler(p, BenchGenerateArgs, cmd_bench_generate)

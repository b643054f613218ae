"""Generation speed of the autoregressive baseline: tokens/s with and without the KV cache.

Builds a preset's network with random weights (speed does not depend on the weights; the head
is made non-zero so the draws are not uniform) and generates from no prompt at each length,
once decoding on the KV cache (the whole prefix is never recomputed) and once recomputing the
whole prefix every step (``cache=False``, O(L^2) tokens of network work per sample). Both
make one network call per token; the cache changes what each call computes.

    python benchmarks/ar_generation.py                                  # ar-small, lengths 128 and 512
    python benchmarks/ar_generation.py --preset ar-tiny --lengths 64 256 --num-samples 8 --threads 1

Figures from a machine shared with other work are indicative only (there, ``--threads 1`` avoids
threads waiting on each other and gives much steadier figures).
"""

from __future__ import annotations

import argparse
import platform
import time
from collections import deque
from pathlib import Path

import torch

from maskdiff.hardware import autocast, resolve_device, resolve_precision
from maskdiff.models import build_model
from maskdiff.presets import get_preset


def cpu_description() -> str:
    """The CPU's model name and whether it has AVX2 and AVX512-BF16 (from /proc/cpuinfo on Linux)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), platform.machine())
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    present = [flag for flag in ("avx2", "avx512_bf16", "amx_bf16") if flag in flags]
    return f"{name} ({', '.join(present) if present else 'no avx2, no avx512_bf16'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="ar-small", help="an ar- preset whose network to time (default ar-small)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512], help="sequence lengths (default 128 512)")
    parser.add_argument("--num-samples", type=int, default=4, help="sequences generated in one batch (default 4)")
    parser.add_argument("--vocab", type=int, default=84, help="vocabulary size (default 84, about a character corpus)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    parser.add_argument("--repeats", type=int, default=1, help="time each case this many times and keep the fastest (default 1)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's; 1 gives steadier figures on a busy machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = get_preset(args.preset)
    device = resolve_device(args.device)
    dtype = resolve_precision(args.precision, device)
    model = build_model(cfg, vocab_size=args.vocab, seed=0).to(device).eval()
    with torch.no_grad():
        model.get_parameter("denoiser.head.weight").normal_(std=0.5)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_description()
    precision = "bf16" if dtype else "fp32"
    print(f"{args.preset}: {model.num_parameters():,} non-embedding parameters | {where} | {torch.get_num_threads()} threads | {precision}")
    print(f"{'length':>6s} {'KV cache':>9s} {'seconds':>8s} {'tokens/s':>9s} {'NFE':>5s}  same tokens")

    def generate(length: int, cache: bool) -> tuple[float, torch.Tensor, int]:
        """Seconds, final ids and network calls of one batch; the draws come from seed 0 every time."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with autocast(device, dtype):
            states = model.iterate(args.num_samples, length, length, generator=torch.Generator().manual_seed(0), device=device, cache=cache)
            final = deque(states, maxlen=1)[0]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start, final.z, final.nfe

    for cache in (True, False):  # warm-up: first calls pay for kernel selection and allocation
        generate(16, cache)
    for length in args.lengths:
        outputs = {}
        for cache in (True, False):
            runs = [generate(length, cache) for _ in range(max(1, args.repeats))]
            seconds, outputs[cache], nfe = min(runs, key=lambda run: run[0])
            same = "" if cache else ("yes" if torch.equal(outputs[True], outputs[False]) else "no (rounding differs)")
            print(f"{length:6d} {'on' if cache else 'off':>9s} {seconds:8.2f} {args.num_samples * length / seconds:9.0f} {nfe:5d}  {same}")


if __name__ == "__main__":
    main()

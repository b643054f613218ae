"""Sampling speed of every rule: samples/s, tokens/s and network evaluations (NFE) per sample.

Runs the `tiny` preset's network (random weights unless --checkpoint is given: speed does not
depend on the weights, but how many steps reveal nothing does, so pass a trained run for
realistic NFE figures of the ancestral rule).

    python benchmarks/sample_throughput.py                       # tiny preset, random weights
    python benchmarks/sample_throughput.py --checkpoint runs/X   # a trained run
"""

from __future__ import annotations

import argparse
import time
from collections import deque

import torch

from maskdiff.checkpoint import load_run
from maskdiff.data.text import BUILT_IN_VOCAB_SIZE
from maskdiff.hardware import autocast, resolve_precision
from maskdiff.models import build_model
from maskdiff.presets import get_preset

RULES = [
    ("ancestral", {}),
    ("ancestral (no cache)", {"method": "ancestral", "cache": False}),
    ("mean", {"method": "mean"}),
    ("low_confidence", {"method": "low_confidence"}),
    ("random", {"method": "random"}),
    ("threshold 0.9", {"method": "threshold", "threshold": 0.9}),
    ("ancestral top_p 0.9", {"top_p": 0.9}),
    ("block 32 low_confidence", {"method": "low_confidence", "block_size": 32}),
    ("ancestral cfg 1.0 (prompt 16)", {"cfg": 1.0}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a trained run folder (default: the tiny preset with random weights)")
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    args = parser.parse_args()

    if args.checkpoint:
        run = load_run(args.checkpoint)
        model, length = run.model, run.config.data.seq_len
    else:
        cfg = get_preset("tiny")
        model = build_model(cfg, vocab_size=BUILT_IN_VOCAB_SIZE, seed=0).eval()
        with torch.no_grad():  # a zero head would make every prediction uniform; make them peaked
            model.get_parameter("denoiser.head.weight").normal_(std=0.5)
        length = cfg.data.seq_len
    dtype = resolve_precision(args.precision, torch.device("cpu"))
    print(f"{args.num_samples} samples x {length} tokens, {args.steps} steps, {torch.get_num_threads()} threads, {'bf16' if dtype else 'fp32'}")
    print(f"{'rule':32s} {'samples/s':>10s} {'tokens/s':>10s} {'NFE/sample':>11s}")
    for name, options in RULES:
        given = None
        if options.get("cfg"):
            given = torch.full((args.num_samples, length), model.mask_id)
            given[:, :16] = torch.randint(0, model.vocab_size, (16,))
        start = time.perf_counter()
        with autocast(torch.device("cpu"), dtype):
            states = model.iterate(args.num_samples, length, args.steps, given=given, generator=torch.Generator().manual_seed(0), **options)
            step = deque(states, maxlen=1)[0]  # the final state
        seconds = time.perf_counter() - start
        # one network call evaluates the whole batch, so NFE per sample is the number of calls
        print(f"{name:32s} {args.num_samples / seconds:10.2f} {args.num_samples * length / seconds:10.0f} {step.nfe:11d}")


if __name__ == "__main__":
    main()

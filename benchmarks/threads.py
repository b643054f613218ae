"""How many threads pay off: sampling, evaluation and training at 1 thread and at all cores,
on an idle machine and with one competing busy process.

maskdiff's default thread policy (``maskdiff.hardware.choose_threads``, ``--threads auto``) was
chosen from this table; rerun it on a new kind of machine before changing the policy:

    python benchmarks/threads.py                 # ~2 minutes on 2 cores
    python benchmarks/threads.py --repeats 5     # steadier figures

The competing process is a plain Python busy loop started by this script (one core's worth of
work, like a second job, a test suite or an editor's indexer). Run it on an otherwise idle
machine: other load makes both columns meaningless.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from maskdiff.data import Splits
from maskdiff.data.text import BUILT_IN_VOCAB_SIZE
from maskdiff.evaluation import evaluate_nelbo
from maskdiff.hardware import cpu_description, resolve_precision
from maskdiff.models import build_model
from maskdiff.presets import get_preset
from maskdiff.training import TrainState, train_step

VOCAB = BUILT_IN_VOCAB_SIZE


def sampling(preset: str, samples: int, steps: int) -> Callable[[], None]:
    cfg = get_preset(preset)
    model = build_model(cfg, VOCAB, seed=0).eval()
    with torch.no_grad():  # a zero head predicts the uniform distribution; make the predictions peaked
        model.get_parameter("denoiser.head.weight").normal_(std=0.5)
    length = cfg.data.seq_len

    def run() -> None:
        # low_confidence calls the network in every step, as most rules do
        model.sample(samples, length, steps, method="low_confidence", generator=torch.Generator().manual_seed(0))

    return run


def evaluation(preset: str, sequences: int) -> Callable[[], None]:
    cfg = get_preset(preset)
    model = build_model(cfg, VOCAB, seed=0)
    data = torch.randint(0, VOCAB, (sequences, cfg.data.seq_len), generator=torch.Generator().manual_seed(1))

    def run() -> None:
        evaluate_nelbo(model, data, batch_size=sequences, samples=2)

    return run


def training(preset: str) -> Callable[[], None]:
    cfg = get_preset(preset)
    tokens = torch.randint(0, VOCAB, (8 * cfg.train.batch_size * cfg.data.seq_len,), generator=torch.Generator().manual_seed(2))
    state = TrainState.create(cfg, VOCAB, Splits(tokens, tokens[:1000], tokens[:1000]), torch.device("cpu"))
    precision = resolve_precision(cfg.train.precision, torch.device("cpu"))

    def run() -> None:
        train_step(state, [next(state.batches)], grad_clip=cfg.train.grad_clip, precision=precision)

    return run


WORKLOADS: dict[str, Callable[[], Callable[[], None]]] = {
    "sample tiny, 2 x 128 chars, 64 steps": lambda: sampling("tiny", 2, 64),
    "sample tiny, 32 x 128 chars, 64 steps": lambda: sampling("tiny", 32, 64),
    "eval tiny, 16 x 128 chars, 2 draws": lambda: evaluation("tiny", 16),
    "train step tiny (32 x 128)": lambda: training("tiny"),
    "train step small (32 x 256, 5M)": lambda: training("small"),
}


def seconds(work: Callable[[], None], threads: int, repeats: int) -> float:
    torch.set_num_threads(threads)
    work()  # warm-up (allocations, thread pool)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per cell (the median is shown)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(f"CPU: {cpu_description()}; {cores} cores; torch {torch.__version__}; precision: the presets' (auto)")
    counts = sorted({1, cores})
    columns = [(busy, n) for busy in (False, True) for n in counts]
    header = ["workload"] + [f"{'busy' if busy else 'idle'}, {n} thr" for busy, n in columns]
    rows = []
    for name, make in WORKLOADS.items():
        work = make()
        row = [name]
        for busy, n in columns:
            competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
            try:
                time.sleep(0.3 if busy else 0)
                row.append(f"{seconds(work, n, args.repeats):.3f} s")
            finally:
                if competitor is not None:
                    competitor.kill()
                    competitor.wait()
        rows.append(row)
        print("  " + " | ".join(row), flush=True)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print()
    for row in [header, ["-" * w for w in widths], *rows]:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths)))


if __name__ == "__main__":
    main()

"""Training-throughput benchmark for maskdiff, against the project's performance targets.

What it measures
  1. The machine's peak matmul throughput (GFLOP/s) in fp32 and bf16 on the current thread
     count: square matmuls after a few warm-up calls, fastest call of the best size. On a CPU
     without native bf16 (no AVX512-BF16/AMX) bf16 is emulated at ~1 GFLOP/s, so only a small
     (256x256) bf16 matmul is timed there.
  2. The real maskdiff training step for a few model sizes: the trainer's own
     ``maskdiff.training.TrainState.create`` (model from a preset plus overrides, AdamW, the
     warm-up/cosine LR schedule, EMA, noise generator) and ``maskdiff.training.train_step``
     (the loss ``model(x0, generator).mean() / seq_len`` under ``maskdiff.hardware.autocast``
     with the precision from ``resolve_precision``, backward, gradient clipping and the finite
     check, optimizer step, EMA update, LR schedule; grad_accum = 1). Batches are random crops
     of random token ids (the vocabulary of the built-in character corpus) drawn up
     front from the state's batch stream, so data loading is not timed. After a few
     warm-up steps it times at least ``--steps`` steps and ``--min-time`` seconds and reports
     tokens/s, the median step time, model FLOPs per token (``Transformer.flops_per_token``),
     achieved GFLOP/s and MFU = achieved / measured matmul peak of the precision in use.
     On a CPU each step is also split into phases (forward+loss, backward, clip_grad (gradient
     norm, clipping and the finite check), optimizer (step, LR schedule, zero_grad), EMA) with
     wall-clock timers that ``train_step`` enters through its ``mark`` argument.
  3. With ``--profile``: a torch.profiler trace of a few more steps per size, printing the time
     and number of dispatched ops per phase, host syncs per step and the top ops by self CPU
     time, so per-step Python/dispatch overhead shows up.

Sizes: ``tiny`` (the tiny preset: 4 layers, width 128, 128 tokens), ``5M`` (6 layers, width 256,
4 heads) and ``25M`` (8 layers, width 512, 8 heads), the two sizes of the performance targets, with
256 tokens. The names count parameters without adaLN: time conditioning adds 6 d^2 per block.

Shared machines: OpenMP threads slow down by far more than 2x when another process wants the
same cores. The script measures the CPU time other processes use during every timed step
(Linux /proc/stat), waits up to ``--wait-quiet`` seconds for a quiet machine before each
measurement, replaces contended steps with extra ones for up to ``--max-time`` seconds per size,
and computes the throughput from the uncontended ("clean") steps only.

Run from the repository root (maskdiff must be importable, e.g. ``pip install -e .``):

    python benchmarks/train_throughput.py                       # all sizes, ~2 min on 2 quiet cores
    python benchmarks/train_throughput.py --sizes 5M --profile  # where does a 5M step go?
    python benchmarks/train_throughput.py --time-conditioning both --steps 10
    python benchmarks/train_throughput.py --precision bf16 --sizes tiny --set train.ema_decay=0
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from maskdiff.data import Splits
from maskdiff.data.text import BUILT_IN_VOCAB_SIZE
from maskdiff.hardware import cpu_has_fast_bf16, resolve_device, resolve_precision
from maskdiff.presets import get_preset
from maskdiff.training import StepOutcome, TrainState, train_step
from maskdiff.training.step import Mark, no_marks

# name -> (preset, overrides). The preset fixes seq_len (tiny: 128, small: 256) unless --seq-len is given.
SIZES: dict[str, tuple[str, list[str]]] = {
    "tiny": ("tiny", []),
    "5M": ("small", []),
    "25M": ("small", ["model.n_layers=8", "model.d_model=512", "model.n_heads=8"]),
}

# Performance targets: a plain PyTorch transformer, 2 threads, batch 32, 256 tokens, AdamW (tokens/s).
TARGET_TOKENS_PER_S = {("5M", "bf16"): 11_000, ("25M", "bf16"): 2_900, ("5M", "fp32"): 4_500, ("25M", "fp32"): 900}

PHASES = ("forward+loss", "backward", "clip_grad", "optimizer", "ema")

QUIET = 0.2  # cores used by other processes below which a measurement counts as uncontended


# ---------------------------------------------------------------------------- machine load
class OtherLoad:
    """Cores kept busy by *other* processes between start() and stop(): the machine's CPU time
    (Linux /proc/stat) minus this process's own. stop() returns None where /proc/stat is missing."""

    @staticmethod
    def _machine_busy_seconds() -> float:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:9]]  # user .. steal (guest time is inside user)
        return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait

    def start(self) -> OtherLoad:
        try:
            self._start = (time.perf_counter(), time.process_time(), self._machine_busy_seconds())
        except (OSError, ValueError, IndexError, AttributeError):
            self._start = None
        return self

    def stop(self) -> float | None:
        if self._start is None:
            return None
        wall, own, busy = time.perf_counter(), time.process_time(), self._machine_busy_seconds()
        return max(0.0, (busy - self._start[2]) - (own - self._start[1])) / (wall - self._start[0])


def wait_for_quiet(what: str, max_wait: float) -> None:
    """Wait (up to ``max_wait`` seconds) until other processes leave the cores alone for half a second."""
    start = time.perf_counter()
    while True:
        load = OtherLoad().start()
        time.sleep(0.5)
        busy = load.stop()
        if busy is None or busy < QUIET:
            if time.perf_counter() - start > 1:
                print(f"  (waited {time.perf_counter() - start:.0f} s for other processes before {what})", flush=True)
            return
        if time.perf_counter() - start > max_wait:
            print(f"  warning: other processes keep {busy:.1f} cores busy before {what}; timings may be low", flush=True)
            return


def is_clean(load: float | None) -> bool:
    return load is None or load < QUIET


# ---------------------------------------------------------------------------- matmul peak
def synchronizer(device: torch.device):
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def matmul_gflops(n: int, dtype: torch.dtype, device: torch.device, warmup: int, min_time: float) -> float:
    """GFLOP/s of the fastest uncontended n x n @ n x n matmul among those run in ``min_time`` seconds (>= 2 calls)."""
    sync = synchronizer(device)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(warmup):
        a @ b
    sync()
    times, start = [], time.perf_counter()
    while len(times) < 2 or time.perf_counter() - start < min_time:
        load, t0 = OtherLoad().start(), time.perf_counter()
        a @ b
        sync()
        seconds = time.perf_counter() - t0
        times.append((not is_clean(load.stop()), seconds))  # clean calls sort first
    return 2 * n**3 / min(times)[1] / 1e9


def matmul_peaks(device: torch.device) -> dict[str, tuple[float, int]]:
    """Best GFLOP/s and the size reaching it, for fp32 and bf16: {"fp32": (gflops, n), "bf16": ...}."""
    slow_bf16 = device.type == "cpu" and not cpu_has_fast_bf16()
    sizes = (4096, 8192) if device.type == "cuda" else (1024, 2048)
    plans = {  # dtype, sizes, warm-up calls, seconds per size
        "fp32": (torch.float32, sizes, 2, 0.5),
        # emulated bf16 runs at ~1 GFLOP/s: one 256^3 matmul already takes ~25 ms
        "bf16": (torch.bfloat16, (256,), 1, 0.05) if slow_bf16 else (torch.bfloat16, sizes, 2, 0.5),
    }
    return {
        name: max((matmul_gflops(n, dtype, device, warmup, min_time), n) for n in sizes) for name, (dtype, sizes, warmup, min_time) in plans.items()
    }


# ---------------------------------------------------------------------------- training step
def precision_name(dtype: torch.dtype | None) -> str:
    return "bf16" if dtype == torch.bfloat16 else "fp32"


def make_step(state: TrainState, cfg, precision: torch.dtype | None) -> Callable[[torch.Tensor, Mark], StepOutcome]:
    """One training step of ``state`` on a batch, as the trainer runs it (grad_accum = 1).

    ``mark(name)`` wraps each phase: a wall-clock timer for the phase breakdown, or
    ``torch.profiler.record_function`` when profiling.
    """

    def step(x0: torch.Tensor, mark: Mark = no_marks) -> StepOutcome:
        return train_step(state, [x0], grad_clip=cfg.train.grad_clip, precision=precision, mark=mark)

    return step


class PhaseTimer:
    """Wall-clock seconds per phase of one step (meaningful on the CPU, where every op is synchronous)."""

    def __init__(self):
        self.seconds = {name: 0.0 for name in PHASES}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] += time.perf_counter() - start


@dataclass
class StepRecord:
    seconds: float
    other_load: float | None  # cores used by other processes during the step
    phases: dict[str, float] | None


@dataclass
class Result:
    size: str
    params: int  # non-embedding parameters
    shape: str
    time_conditioning: bool
    precision: str
    batch: int
    seq_len: int
    flops_per_token: float  # Transformer.flops_per_token(seq_len)
    records: list[StepRecord] = field(default_factory=list)

    @property
    def clean(self) -> list[StepRecord]:
        return [r for r in self.records if is_clean(r.other_load)]

    @property
    def used(self) -> list[StepRecord]:
        """The steps the numbers come from: the uncontended ones, or all when none was."""
        return self.clean or self.records

    @property
    def tokens_per_s(self) -> float:
        return self.batch * self.seq_len * len(self.used) / sum(r.seconds for r in self.used)

    @property
    def median_step(self) -> float:
        return statistics.median(r.seconds for r in self.used)


def build_config(size: str, time_conditioning: bool, seq_len: int | None, batch: int, extra: list[str]):
    preset, overrides = SIZES[size]
    overrides = overrides + [f"model.time_conditioning={time_conditioning}", f"train.batch_size={batch}"]
    if seq_len is not None:
        overrides.append(f"data.seq_len={seq_len}")
    return get_preset(preset).with_overrides(overrides + extra)


def random_splits(count: int, batch: int, seq_len: int, vocab: int) -> Splits:
    """A data set of random token ids, long enough for ``count`` batches of distinct crops."""
    generator = torch.Generator().manual_seed(1234)
    tokens = torch.randint(0, vocab, (count * batch * seq_len,), generator=generator)
    return Splits(train=tokens, valid=tokens[:seq_len], test=tokens[:seq_len])


def benchmark_training(args, size: str, time_conditioning: bool, device, precision) -> tuple[Result, Callable, list]:
    cfg = build_config(size, time_conditioning, args.seq_len, args.batch, args.set)
    state = TrainState.create(cfg, args.vocab, random_splits(4, args.batch, cfg.data.seq_len, args.vocab), device)
    step = make_step(state, cfg, precision)
    m = cfg.model
    result = Result(
        size=size,
        params=state.model.num_parameters(),
        shape=f"{m.n_layers}x{m.d_model}/{m.n_heads}h",
        time_conditioning=time_conditioning,
        precision=precision_name(precision),
        batch=args.batch,
        seq_len=cfg.data.seq_len,
        flops_per_token=state.model.flops_per_token(cfg.data.seq_len),
    )
    batches = [next(state.batches).to(device) for _ in range(4)]
    sync = synchronizer(device)
    for i in range(args.warmup):
        step(batches[i % len(batches)])
    sync()
    wait_for_quiet(f"timing {size}", args.wait_quiet)
    start = time.perf_counter()

    def more() -> bool:
        elapsed, done = time.perf_counter() - start, len(result.records)
        if done < args.steps or elapsed < args.min_time:
            return True
        return len(result.clean) < args.steps and elapsed < args.max_time  # extra steps to replace contended ones

    while more():
        timer = PhaseTimer() if device.type == "cpu" else None  # on a GPU, phase timers would need syncs
        load, t0 = OtherLoad().start(), time.perf_counter()
        step(batches[len(result.records) % len(batches)], timer or no_marks)
        sync()
        seconds = time.perf_counter() - t0
        result.records.append(StepRecord(seconds, load.stop(), timer.seconds if timer else None))
    return result, step, batches


# ---------------------------------------------------------------------------- profiling
def profile_steps(step: Callable, batches: list, steps: int, rows: int, device: torch.device, max_wait: float) -> None:
    """Profile ``steps`` training steps; print time and ops per phase, syncs per step and the top ops by self time."""
    from torch.profiler import ProfilerActivity, profile, record_function

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    wait_for_quiet("profiling", max_wait)
    with profile(activities=activities) as prof:
        for i in range(steps):
            step(batches[i % len(batches)], record_function)
        synchronizer(device)()

    def phase_of(event) -> str | None:
        while event is not None and event.name not in PHASES:
            event = event.cpu_parent
        return event.name if event is not None else None

    ms, ops, syncs = ({name: 0.0 for name in PHASES} for _ in range(3))
    for event in prof.events():
        if event.name in PHASES:
            ms[event.name] += event.cpu_time_total / 1e3 / steps
        elif event.name.startswith("aten::") and (phase := phase_of(event)) is not None:
            ops[phase] += 1 / steps
            syncs[phase] += (event.name == "aten::_local_scalar_dense") / steps
    print_table(
        ["phase", "ms/step", "aten ops/step", "host syncs/step"],
        [[name, f"{ms[name]:,.1f}", f"{ops[name]:,.0f}", f"{syncs[name]:,.0f}"] for name in PHASES],
    )
    print("(aten ops include nested calls; a host sync is aten::_local_scalar_dense: .item()/int()/bool() of a tensor,")
    print(" free on a CPU but a stall on a GPU; the profiler inflates small ops, compare with the un-profiled phases)")
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=48)
    print("\n".join("  " + line for line in table.splitlines()))


# ---------------------------------------------------------------------------- reporting
def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))


def reference(result: Result, threads: int) -> str:
    """The target tokens/s for this size and precision, and ours as a fraction of it."""
    if threads != 2 or result.batch != 32 or result.seq_len != 256:
        return "-"
    ref = TARGET_TOKENS_PER_S.get((result.size, result.precision))
    return f"{ref:,} ({result.tokens_per_s / ref:.0%})" if ref else "-"


def print_results(results: list[Result], peaks: dict, threads: int, warmup: int) -> None:
    print(f"\nTraining throughput (AdamW + clip + EMA, {plural(threads, 'thread')}, after {plural(warmup, 'warm-up step')})")
    headers = [
        "size",
        "params",
        "shape",
        "t-cond",
        "prec",
        "batch x seq",
        "clean/steps",
        "step ms",
        "tokens/s",
        "MFLOP/tok",
        "GFLOP/s",
        "MFU",
        "target tok/s (ours/target)",
    ]
    rows = []
    for r in results:
        peak = peaks.get(r.precision, (math.nan, 0))[0]
        achieved = r.tokens_per_s * r.flops_per_token / 1e9
        rows.append(
            [
                r.size,
                f"{r.params / 1e6:.2f}M",
                r.shape,
                "on" if r.time_conditioning else "off",
                r.precision,
                f"{r.batch} x {r.seq_len}",
                f"{len(r.clean)}/{len(r.records)}",
                f"{r.median_step * 1e3:,.0f}",
                f"{r.tokens_per_s:,.0f}",
                f"{r.flops_per_token / 1e6:.1f}",
                f"{achieved:,.1f}",
                f"{achieved / peak:.0%}" if peaks else "-",
                reference(r, threads),
            ]
        )
    print_table(headers, rows)
    print("params: non-embedding (flops_per_token counts 6 per parameter); MFLOP/tok: Transformer.flops_per_token;")
    print("clean/steps: timed steps without other processes on the cores (only those count, unless none is clean);")
    print("step ms: median; MFU: achieved / peak matmul of the precision in use (time-conditioning weights count")
    print("  once per sequence, as they run).")

    if any(r.records[0].phases for r in results):
        print("\nWhere a step goes (mean ms per step, wall clock, un-profiled, clean steps)")
        rows = []
        for r in results:
            used = r.used
            phases = [sum(s.phases[name] for s in used) / len(used) for name in PHASES]
            total = sum(s.seconds for s in used) / len(used)
            rows.append(
                [
                    r.size,
                    "on" if r.time_conditioning else "off",
                    *(f"{p * 1e3:,.1f}" for p in phases),
                    f"{(total - sum(phases)) * 1e3:,.1f}",
                    f"{total * 1e3:,.1f}",
                ]
            )
        print_table(["size", "t-cond", *PHASES, "other", "total"], rows)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure matmul peak and maskdiff training throughput (tokens/s, GFLOP/s, MFU).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--sizes", default="tiny,5M,25M", help=f"comma-separated sizes from {', '.join(SIZES)}")
    parser.add_argument("--steps", type=int, default=5, help="minimum clean (uncontended) timed steps per size")
    parser.add_argument("--min-time", type=float, default=3.0, help="minimum timed seconds per size")
    parser.add_argument(
        "--max-time", type=float, default=60.0, help="seconds after which a size stops timing extra steps meant to replace contended ones"
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps per size")
    parser.add_argument("--batch", type=int, default=32, help="sequences per step")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per sequence [default: the preset's, 128 for tiny, 256 otherwise]")
    parser.add_argument("--vocab", type=int, default=BUILT_IN_VOCAB_SIZE, help="vocabulary size V (default: the built-in corpus's characters)")
    parser.add_argument(
        "--time-conditioning",
        choices=("on", "off", "both"),
        default="on",
        help="adaLN time conditioning (the performance targets are set with it on)",
    )
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help="as train.precision")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="as train.device")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads [default: leave as is]")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override for every size, repeatable (e.g. train.ema_decay=0)"
    )
    parser.add_argument(
        "--wait-quiet", type=float, default=30.0, help="seconds to wait for other processes to leave the cores before each measurement"
    )
    parser.add_argument("--skip-peak", action="store_true", help="skip the matmul peak (MFU is then not reported)")
    parser.add_argument("--profile", action="store_true", help="also profile a few steps per size with torch.profiler")
    parser.add_argument("--profile-steps", type=int, default=3, help="steps traced by --profile")
    parser.add_argument("--profile-rows", type=int, default=25, help="ops listed by --profile")
    args = parser.parse_args()
    args.steps = max(1, args.steps)
    args.sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in args.sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown size(s) {', '.join(unknown)}; choose from {', '.join(SIZES)}")
    return args


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    fast_bf16 = device.type == "cuda" or cpu_has_fast_bf16()
    print(f"torch {torch.__version__}, device {device}, {plural(threads, 'thread')}, native bf16: {'yes' if fast_bf16 else 'no'}")

    peaks = {}
    if not args.skip_peak:
        wait_for_quiet("the matmul peak", args.wait_quiet)
        peaks = matmul_peaks(device)
        print("\nPeak matmul throughput (square n x n @ n x n, fastest uncontended call of the best size)")
        print_table(["dtype", "n", "GFLOP/s"], [[name, str(n), f"{g:,.1f}"] for name, (g, n) in peaks.items()])

    if args.precision == "auto" and precision is None and not fast_bf16:
        bf16_note = f" ({peaks['bf16'][0]:.1f} GFLOP/s in bf16 vs {peaks['fp32'][0]:.0f} in fp32)" if peaks else ""
        print(
            f"\nNote: this CPU has no native bf16{bf16_note}, so precision 'auto' resolves to fp32 and bf16 "
            "training is not benchmarked;\nthe bf16 targets need AVX512-BF16 or AMX. --precision bf16 forces it."
        )
    elif precision == torch.bfloat16 and not fast_bf16:
        print("\nWarning: bf16 forced on a CPU without native bf16: expect training far slower than in fp32.")

    print()
    conditionings = {"on": [True], "off": [False], "both": [True, False]}[args.time_conditioning]
    results = []
    for size in args.sizes:
        for tc in conditionings:
            label = f"{size}, t-cond={'on' if tc else 'off'}"
            t0 = time.perf_counter()
            result, step, batches = benchmark_training(args, size, tc, device, precision)
            results.append(result)
            print(
                f"  {label}: {len(result.clean)}/{len(result.records)} clean steps, {result.tokens_per_s:,.0f} tokens/s "
                f"({time.perf_counter() - t0:.0f} s with warm-up)",
                flush=True,
            )
            if args.profile:
                print(f"\nProfile of {label}, {plural(args.profile_steps, 'step')}")
                profile_steps(step, batches, args.profile_steps, args.profile_rows, device, args.wait_quiet)
                print()
            del step, batches

    print_results(results, peaks, threads, args.warmup)


if __name__ == "__main__":
    main()

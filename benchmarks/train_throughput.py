"""Training-throughput benchmark for maskdiff (DESIGN.md section 4, "Performance targets").

What it measures
  1. The machine's peak matmul throughput (GFLOP/s) in fp32 and bf16 on the current thread
     count: square matmuls after a few warm-up iterations, best size kept. On a CPU without
     native bf16 (no AVX512-BF16/AMX) bf16 is emulated at ~1 GFLOP/s, so only one small
     (256x256) bf16 matmul is timed there.
  2. The real maskdiff training step for a few model sizes, exactly as maskdiff/training.py
     runs it: ``build_model`` from a preset (plus overrides), ``make_optimizer`` (AdamW),
     the LambdaLR warm-up/cosine schedule, an ``AveragedModel`` EMA with ``ema_with_warmup``,
     the loss ``model.train_loss(x0, generator).mean() / seq_len`` under
     ``maskdiff.hardware.autocast`` with the precision from ``resolve_precision``, backward,
     gradient clipping, optimizer step and EMA update. Batches are random token ids
     (vocabulary 84, the size of the built-in character corpus) made up front, so data
     loading is not part of the timing. After a few warm-up steps it times at least
     ``--steps`` steps (and at least ``--min-time`` seconds) and reports tokens/s, the median
     step time, model FLOPs per token (``Transformer.flops_per_token``), achieved GFLOP/s and
     MFU = achieved / measured matmul peak of the precision in use. On a CPU each step is also
     split into phases (forward+loss, backward, clip, optimizer, EMA) with wall-clock timers.
  3. With ``--profile``: a torch.profiler trace of a few more steps per size, printing the time
     per phase, the number of ops dispatched and host syncs per step, and the top ops by self
     CPU time, so per-step Python/dispatch overhead shows up.

Sizes: ``tiny`` (the tiny preset: 4 layers, width 128, 128 tokens), ``5M`` (6 layers, width 256,
4 heads) and ``25M`` (8 layers, width 512, 8 heads), the two sizes of DESIGN.md section 4 with
256 tokens. Parameter counts are quoted without adaLN: time conditioning adds 6 d^2 per block.

Run from the repository root (maskdiff must be importable, e.g. ``pip install -e .``):

    python benchmarks/train_throughput.py                       # default: all sizes, ~2 min on 2 cores
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
from dataclasses import dataclass, field

import torch
from torch.optim.swa_utils import AveragedModel

from maskdiff.hardware import autocast, cpu_has_fast_bf16, resolve_device, resolve_precision
from maskdiff.models import build_model
from maskdiff.presets import get_preset
from maskdiff.training import ema_with_warmup, lr_factor, make_optimizer

# name -> (preset, overrides). Presets fix seq_len (tiny: 128, small: 256) unless --seq-len is given.
SIZES: dict[str, tuple[str, list[str]]] = {
    "tiny": ("tiny", []),
    "5M": ("small", []),
    "25M": ("small", ["model.n_layers=8", "model.d_model=512", "model.n_heads=8"]),
}

# DESIGN.md section 4: a plain PyTorch transformer, 2 threads, batch 32, 256 tokens, AdamW (tokens/s).
DESIGN_REFERENCE = {("5M", "bf16"): 11_000, ("25M", "bf16"): 2_900, ("5M", "fp32"): 4_500, ("25M", "fp32"): 900}

PHASES = ("forward+loss", "backward", "clip_grad", "optimizer", "ema")


# ---------------------------------------------------------------------------- machine
class OtherLoad:
    """Cores kept busy by *other* processes between start() and stop(): all CPU time on the machine
    (Linux /proc/stat) minus this process's own. None where /proc/stat is missing.

    It matters: with OpenMP, sharing the cores with another busy process does not just halve the
    speed, threads waiting at barriers for a descheduled sibling can make small ops many times slower.
    """

    @staticmethod
    def _machine_busy_seconds() -> float:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:9]]  # user .. steal (guest time is inside user)
        return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait

    def start(self) -> "OtherLoad":
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


def check_quiet(what: str, seconds: float = 0.5) -> None:
    """Warn when other processes are busy right before a measurement."""
    load = OtherLoad().start()
    time.sleep(seconds)
    busy = load.stop()
    if busy is not None and busy > 0.3:
        print(f"  warning: other processes keep {busy:.1f} cores busy before {what}; timings will be low and noisy", flush=True)


# ---------------------------------------------------------------------------- matmul peak
def synchronizer(device: torch.device):
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def matmul_gflops(n: int, dtype: torch.dtype, device: torch.device, warmup: int, min_time: float) -> float:
    """GFLOP/s of an n x n @ n x n matmul, timed over at least ``min_time`` seconds (at least 2 calls)."""
    sync = synchronizer(device)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(warmup):
        a @ b
    sync()
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < min_time:
        a @ b
        calls += 1
        sync()
    return 2 * n**3 * calls / (time.perf_counter() - start) / 1e9


def matmul_peaks(device: torch.device) -> dict[str, tuple[float, int]]:
    """Best GFLOP/s and the size reaching it, for fp32 and bf16: {"fp32": (gflops, n), "bf16": ...}."""
    slow_bf16 = device.type == "cpu" and not cpu_has_fast_bf16()
    plans = {
        "fp32": (torch.float32, (1024, 2048), 3, 0.5),
        # emulated bf16 runs at ~1 GFLOP/s: one 256^3 matmul already takes ~25 ms
        "bf16": (torch.bfloat16, (256,) if slow_bf16 else (1024, 2048), 1 if slow_bf16 else 3, 0.05 if slow_bf16 else 0.5),
    }
    peaks = {}
    for name, (dtype, sizes, warmup, min_time) in plans.items():
        peaks[name] = max((matmul_gflops(n, dtype, device, warmup, min_time), n) for n in sizes)
    return peaks


# ---------------------------------------------------------------------------- training step
def precision_name(dtype: torch.dtype | None) -> str:
    return "bf16" if dtype == torch.bfloat16 else "fp32"


class TrainStep:
    """One optimizer step of maskdiff/training.py (grad_accum = 1), with optional phase markers.

    ``mark(name)`` wraps each phase: a wall-clock timer for the phase breakdown, or
    ``torch.profiler.record_function`` when profiling.
    """

    def __init__(self, cfg, vocab_size: int, device: torch.device, precision: torch.dtype | None):
        tc = cfg.train
        self.device, self.precision, self.seq_len = device, precision, cfg.data.seq_len
        self.model = build_model(cfg, vocab_size, seed=tc.seed).to(device)
        self.optimizer = make_optimizer(self.model, tc)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, tc.warmup_steps, tc.steps, tc.min_lr_ratio)
        )
        self.ema = (
            AveragedModel(self.model, multi_avg_fn=ema_with_warmup(tc.ema_decay), use_buffers=True) if tc.ema_decay else None
        )
        self.grad_clip = tc.grad_clip if tc.grad_clip > 0 else math.inf
        self.noise = torch.Generator(device=device).manual_seed(tc.seed + 2)
        self.loss_sum = torch.zeros((), device=device)
        self.model.train()

    def __call__(self, x0: torch.Tensor, mark=lambda name: contextlib.nullcontext()) -> None:
        with mark("forward+loss"), autocast(self.device, self.precision):
            loss = self.model.train_loss(x0, generator=self.noise).mean() / self.seq_len  # nats per token
        with mark("backward"):
            loss.backward()
            self.loss_sum += loss.detach()
        with mark("clip_grad"):
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        with mark("optimizer"):
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            with mark("ema"):
                self.ema.update_parameters(self.model)


class PhaseTimer:
    """Wall-clock time per phase (meaningful on the CPU, where every op is synchronous)."""

    def __init__(self):
        self.seconds = {name: 0.0 for name in PHASES}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] += time.perf_counter() - start


@dataclass
class Result:
    size: str
    params: int  # non-embedding parameters
    shape: str
    time_conditioning: bool
    precision: str
    batch: int
    seq_len: int
    flops_per_token: float
    other_load: float | None = None  # cores used by other processes during the timed steps
    step_seconds: list[float] = field(default_factory=list)
    phase_seconds: dict[str, float] | None = None  # summed over the timed steps

    @property
    def tokens_per_step(self) -> int:
        return self.batch * self.seq_len

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step * len(self.step_seconds) / sum(self.step_seconds)

    @property
    def gflops(self) -> float:
        return self.tokens_per_s * self.flops_per_token / 1e9


def build_config(size: str, time_conditioning: bool, seq_len: int | None, batch: int, extra: list[str]):
    preset, overrides = SIZES[size]
    overrides = overrides + [f"model.time_conditioning={time_conditioning}", f"train.batch_size={batch}"]
    if seq_len is not None:
        overrides.append(f"data.seq_len={seq_len}")
    return get_preset(preset).with_overrides(overrides + extra)


def random_batches(count: int, batch: int, seq_len: int, vocab: int, device: torch.device) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1234)
    return [torch.randint(0, vocab, (batch, seq_len), generator=generator).to(device) for _ in range(count)]


def benchmark_training(args, size: str, time_conditioning: bool, device: torch.device, precision) -> tuple[Result, TrainStep, list]:
    check_quiet(f"{size}, t-cond={'on' if time_conditioning else 'off'}")
    cfg = build_config(size, time_conditioning, args.seq_len, args.batch, args.set)
    step = TrainStep(cfg, args.vocab, device, precision)
    m = cfg.model
    result = Result(
        size=size,
        params=step.model.denoiser.num_parameters(),
        shape=f"{m.n_layers}x{m.d_model}/{m.n_heads}h",
        time_conditioning=time_conditioning,
        precision=precision_name(precision),
        batch=args.batch,
        seq_len=cfg.data.seq_len,
        flops_per_token=step.model.denoiser.flops_per_token(cfg.data.seq_len),
    )
    batches = random_batches(4, args.batch, cfg.data.seq_len, args.vocab, device)
    sync = synchronizer(device)
    for i in range(args.warmup):
        step(batches[i % len(batches)])
    sync()
    timer = PhaseTimer() if device.type == "cpu" else None
    mark = timer if timer is not None else (lambda name: contextlib.nullcontext())
    load, start = OtherLoad().start(), time.perf_counter()
    while len(result.step_seconds) < args.steps or time.perf_counter() - start < args.min_time:
        t0 = time.perf_counter()
        step(batches[len(result.step_seconds) % len(batches)], mark)
        sync()
        result.step_seconds.append(time.perf_counter() - t0)
    result.other_load = load.stop()
    result.phase_seconds = timer.seconds if timer is not None else None
    return result, step, batches


# ---------------------------------------------------------------------------- profiling
def profile_steps(step: TrainStep, batches: list, steps: int, rows: int, device: torch.device) -> None:
    """Profile ``steps`` training steps; print phases, ops and syncs per step, and the top ops by self CPU time."""
    from torch.profiler import ProfilerActivity, profile, record_function

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    step(batches[0])  # one unprofiled step so the profile sees only steady state
    with profile(activities=activities) as prof:
        for i in range(steps):
            step(batches[i % len(batches)], record_function)
        synchronizer(device)()

    events = prof.events()
    phase_us = {name: 0.0 for name in PHASES}
    direct_ops = {name: 0 for name in PHASES}
    for event in events:
        if event.name in phase_us:
            phase_us[event.name] += event.cpu_time_total
        parent = event.cpu_parent
        if parent is not None and parent.name in direct_ops:
            direct_ops[parent.name] += 1
    totals = {e.key: e for e in prof.key_averages()}

    def calls(name: str) -> float:
        return totals[name].count / steps if name in totals else 0.0

    print(f"\n  phase            ms/step   ops/step (top-level calls under the phase)")
    for name in PHASES:
        print(f"  {name:<15} {phase_us[name] / 1e3 / steps:>8.1f}   {direct_ops[name] / steps:>8.0f}")
    print(
        f"  host syncs/step (aten::_local_scalar_dense, i.e. .item()/int()/bool() of a tensor): {calls('aten::_local_scalar_dense'):.0f}; "
        f"aten::copy_/step: {calls('aten::copy_'):.0f}; aten::to/step: {calls('aten::to'):.0f}; "
        f"aten::empty/step: {calls('aten::empty'):.0f}"
    )
    print(f"  (profiler overhead inflates small ops; compare with the un-profiled phase table above)\n")
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=48)
    print("\n".join("  " + line for line in table.splitlines()))
    if device.type == "cuda":
        table = prof.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=48)
        print("\n".join("  " + line for line in table.splitlines()))


# ---------------------------------------------------------------------------- reporting
def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join("-" * w for w in widths)
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths)))
    print(line)
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))


def reference(result: Result, threads: int) -> str:
    if threads != 2 or result.batch != 32 or result.seq_len != 256:
        return "-"
    ref = DESIGN_REFERENCE.get((result.size, result.precision))
    return f"{ref:,} ({result.tokens_per_s / ref:.0%})" if ref else "-"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure matmul peak and maskdiff training throughput (tokens/s, GFLOP/s, MFU).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--sizes", default="tiny,5M,25M", help=f"comma-separated sizes from {', '.join(SIZES)}")
    parser.add_argument("--steps", type=int, default=5, help="minimum timed steps per size")
    parser.add_argument("--min-time", type=float, default=3.0, help="minimum timed seconds per size")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps per size")
    parser.add_argument("--batch", type=int, default=32, help="sequences per step")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: the preset's, 128 for tiny, 256 otherwise)")
    parser.add_argument("--vocab", type=int, default=84, help="vocabulary size V (the built-in corpus has 84 characters)")
    parser.add_argument(
        "--time-conditioning", choices=("on", "off", "both"), default="on",
        help="adaLN time conditioning (DESIGN.md section 4 asks for the targets with it on)",
    )
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help="as train.precision")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="as train.device")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave as is)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override, repeatable (e.g. train.ema_decay=0)")
    parser.add_argument("--skip-peak", action="store_true", help="skip the matmul peak (MFU is then not reported)")
    parser.add_argument("--profile", action="store_true", help="also profile a few steps per size with torch.profiler")
    parser.add_argument("--profile-steps", type=int, default=3, help="steps traced by --profile")
    parser.add_argument("--profile-rows", type=int, default=25, help="ops listed by --profile")
    args = parser.parse_args()
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
    print(f"torch {torch.__version__}, device {device}, {threads} threads, native bf16: {'yes' if fast_bf16 else 'no'}")

    peaks = {}
    if not args.skip_peak:
        check_quiet("the matmul peak")
        load = OtherLoad().start()
        peaks = matmul_peaks(device)
        other = load.stop()
        other = "" if other is None else f", other processes used {other:.2f} cores meanwhile"
        print(f"\nPeak matmul throughput (square n x n @ n x n, best size{other})")
        print_table(["dtype", "n", "GFLOP/s"], [[name, str(n), f"{g:,.1f}"] for name, (g, n) in peaks.items()])

    if args.precision == "auto" and precision is None and device.type == "cpu" and not fast_bf16:
        bf16_note = f" ({peaks['bf16'][0]:.1f} GFLOP/s bf16 vs {peaks['fp32'][0]:.0f} fp32)" if peaks else ""
        print(
            f"\nNote: this CPU has no native bf16{bf16_note}, so precision 'auto' resolves to fp32 and bf16 "
            "training is not benchmarked; DESIGN.md's bf16 targets need AVX512-BF16/AMX. Pass --precision bf16 to force it."
        )
    elif precision == torch.bfloat16 and not fast_bf16:
        print("\nWarning: bf16 forced on a CPU without native bf16: expect training to be far slower than fp32.")

    conditionings = {"on": [True], "off": [False], "both": [True, False]}[args.time_conditioning]
    results = []
    for size in args.sizes:
        for tc in conditionings:
            t0 = time.perf_counter()
            result, step, batches = benchmark_training(args, size, tc, device, precision)
            results.append(result)
            print(
                f"  {size} t-cond={'on' if tc else 'off'}: {len(result.step_seconds)} steps, "
                f"{result.tokens_per_s:,.0f} tokens/s ({time.perf_counter() - t0:.0f} s incl. warm-up)",
                flush=True,
            )
            if args.profile:
                print(f"\nProfile of {size}, t-cond={'on' if tc else 'off'}, {args.profile_steps} steps")
                profile_steps(step, batches, args.profile_steps, args.profile_rows, device)
            del step, batches

    print(f"\nTraining throughput (AdamW + clip + EMA, {threads} threads, timed steps after {args.warmup} warm-up)")
    headers = ["size", "params", "shape", "t-cond", "prec", "batch x seq", "steps", "step ms", "tokens/s",
               "MFLOP/tok", "GFLOP/s", "MFU", "DESIGN ref (ours/ref)", "other load"]
    rows = []
    for r in results:
        peak = peaks.get(r.precision, (math.nan, 0))[0]
        rows.append([
            r.size, f"{r.params / 1e6:.2f}M", r.shape, "on" if r.time_conditioning else "off", r.precision,
            f"{r.batch} x {r.seq_len}", str(len(r.step_seconds)), f"{statistics.median(r.step_seconds) * 1e3:,.0f}",
            f"{r.tokens_per_s:,.0f}", f"{r.flops_per_token / 1e6:.1f}", f"{r.gflops:,.1f}",
            f"{r.gflops / peak:.0%}" if peaks else "-", reference(r, threads),
            "-" if r.other_load is None else f"{r.other_load:.2f}",
        ])
    print_table(headers, rows)
    print("params: non-embedding (what flops_per_token counts as 6N); MFU: achieved / peak matmul of the precision in use;")
    print("other load: cores kept busy by other processes while timing (above ~0.2 the row is not trustworthy).")

    if any(r.phase_seconds for r in results):
        print("\nWhere a step goes (ms per step, wall clock, un-profiled)")
        headers = ["size", "t-cond", *PHASES, "other", "total"]
        rows = []
        for r in results:
            n, total = len(r.step_seconds), sum(r.step_seconds)
            phases = [r.phase_seconds[name] for name in PHASES]
            rows.append([r.size, "on" if r.time_conditioning else "off", *(f"{s / n * 1e3:,.1f}" for s in phases),
                         f"{(total - sum(phases)) / n * 1e3:,.1f}", f"{total / n * 1e3:,.1f}"])
        print_table(headers, rows)


if __name__ == "__main__":
    main()

"""``maskdiff bench train``: training throughput and model FLOPs utilisation (MFU) against the measured matmul peak.

What it measures, per model size and precision:

1. The machine's matmul peak for that precision: the fastest of repeated square n x n @ n x n
   matmuls on the threads training uses, n = the model's MLP width (4 d_model, at least 512),
   the largest matmul of the step.
   On a GPU, the chip's dense peak instead: 8192 x 8192 matmuls, ten per timing.
2. The real training step: :meth:`maskdiff.training.TrainState.create` (model from a preset plus
   overrides, AdamW, the LR schedule, EMA, noise generator) and
   :func:`maskdiff.training.train_step` (loss under autocast for bf16, backward, clipping and the
   finite check, optimizer, EMA), eager and, with ``compile``, also with the loss under
   ``torch.compile`` (:func:`maskdiff.training.step.compile_loss`; the warm-up steps compile, and
   their time is reported). Batches are random token ids drawn up front, so data loading is
   not timed. After warm-up steps it times at least ``steps`` steps and ``min_time`` seconds and
   reports tokens/s, the median step time, FLOPs per token (``Objective.flops_per_token``: 6 per
   weight for forward and backward, plus 12 n_layers L d for the attention scores and values),
   achieved GFLOP/s and MFU = achieved / peak. On a GPU the steps run back to back (the host
   waits for the device only at the end of the timing), as they do in training.

Sizes: maskdiff's own (tiny, 5M, 25M, time conditioning on) and the shapes of larger models as
they are trained or imported (md4-small: GPT-2 small; smdm-170m; llama-135m: the 135M Llama
shape, 30 layers of width 576 with 9 heads and a SwiGLU MLP, vocabulary 49,152 - with 9 key/value
heads and an MLP of hidden width 2 x 576, the nearest the transformer's options come to 3 key/value
heads and 1536: 6% fewer weights).

Shared machines: every timed step records the CPU time other processes used meanwhile
(:class:`maskdiff.hardware.OtherLoad`); the figures come from the uncontended steps, extra steps
replacing contended ones for up to ``max_time`` seconds per size. On a CPU each step is also split
into its phases (forward+loss, backward, clip_grad, optimizer, ema) by wall-clock timers; with
``profile`` a torch.profiler trace lists the ops by CPU time.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import torch

from maskdiff.data import Splits
from maskdiff.data.text import BUILT_IN_VOCAB_SIZE
from maskdiff.errors import MaskdiffError
from maskdiff.hardware import OtherLoad, cpu_description, cpu_has_fast_bf16, resolve_device
from maskdiff.presets import get_preset
from maskdiff.training import TrainState, train_step
from maskdiff.training.step import Mark, compile_loss, no_marks

# name -> (preset, overrides, vocabulary); tiny trains 128 tokens, 5M and 25M 256, md4-small 1024,
# smdm-170m 2048 and llama-135m 2048 (the preset's seq_len; --seq-len changes it)
OWN = ["model.time_conditioning=true"]  # maskdiff's sizes, as the performance targets are stated
SIZES: dict[str, tuple[str, list[str], int]] = {
    "tiny": ("tiny", OWN, BUILT_IN_VOCAB_SIZE),
    "5M": ("small", OWN, BUILT_IN_VOCAB_SIZE),
    "25M": ("small", [*OWN, "model.n_layers=8", "model.d_model=512", "model.n_heads=8"], BUILT_IN_VOCAB_SIZE),
    "md4-small": ("md4-small", ["data.format=text"], 50_257),
    "smdm-170m": ("smdm-170m", ["data.format=text"], 32_000),
    "llama-135m": ("smdm-48m", ["data.format=text", "model.n_layers=30", "model.mlp_ratio=2"], 49_152),
}
PRECISIONS = ("fp32", "bf16")
MODES = ("eager", "compiled")
GPU_PEAK_N, GPU_PEAK_REPEATS = 8192, 10
PHASES = ("forward+loss", "backward", "clip_grad", "optimizer", "ema")
QUIET = 0.2  # cores used by other processes below which a measurement counts as uncontended


@dataclass
class Timing:
    """How a size is timed."""

    steps: int = 5  # minimum uncontended timed steps
    min_time: float = 3.0  # minimum timed seconds
    max_time: float = 60.0  # seconds after which no more steps replace contended ones
    warmup: int = 2  # untimed steps first
    wait_quiet: float = 30.0  # seconds to wait for other processes to leave the cores before each measurement


@dataclass
class SizeResult:
    """One size at one precision."""

    size: str
    precision: str
    mode: str  # eager, or compiled (the loss under torch.compile)
    params: int  # non-embedding parameters
    shape: str  # layers x width / heads
    batch: int
    seq_len: int
    flops_per_token: float
    tokens_per_s: float
    step_ms: float  # median over the steps used
    achieved_gflops: float
    peak_gflops: float
    peak_n: int  # the matmul size of the peak
    mfu: float
    clean_steps: int  # timed steps without other processes on the cores (the figures use these, unless none was)
    timed_steps: int
    phases_ms: dict[str, float] = field(default_factory=dict)  # mean wall-clock ms per phase (CPU only)
    warmup_s: float = 0.0  # the untimed warm-up steps (compiling, when compiled)
    device_busy: float | None = None  # GPU only: share of a step's wall time the device runs kernels (torch.profiler)


@dataclass
class TrainBenchmark:
    """What ``maskdiff bench train`` reports."""

    cpu: str
    device: str
    torch: str
    threads: int
    results: list[SizeResult]
    skipped: dict[str, str]  # precision -> why it was not measured

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------- timing helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def wait_for_quiet(max_wait: float) -> None:
    """Wait (up to ``max_wait`` seconds) until other processes leave the cores alone for half a second."""
    start = time.perf_counter()
    while time.perf_counter() - start < max_wait:
        load = OtherLoad().start()
        time.sleep(0.5)
        busy = load.stop()
        if busy is None or busy < QUIET:
            return


def is_clean(load: float | None) -> bool:
    return load is None or load < QUIET


def matmul_peak(n: int, dtype: torch.dtype, device: torch.device, min_time: float = 0.5, repeats: int = 1) -> float:
    """GFLOP/s of the fastest uncontended n x n @ n x n matmul in ``dtype`` among those run in ``min_time``
    seconds (>= 3 timings of ``repeats`` back-to-back matmuls each; random operands, never zeros)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b  # warm-up
    _sync(device)
    times: list[tuple[bool, float]] = []
    start = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < min_time:
        load, t0 = OtherLoad().start(), time.perf_counter()
        for _ in range(repeats):
            a @ b
        _sync(device)
        times.append((not is_clean(load.stop()), (time.perf_counter() - t0) / repeats))  # clean calls sort first
    return 2 * n**3 / min(times)[1] / 1e9


def peak_matmul_size(cfg, device: torch.device) -> int:
    """The matmul size of the peak a size is measured against: on a CPU the step's largest matmul
    (the MLP's, at least 512); on a GPU the chip's dense peak (:data:`GPU_PEAK_N`)."""
    if device.type == "cuda":
        return GPU_PEAK_N
    return max(512, cfg.model.mlp_ratio * cfg.model.d_model)


def device_busy_share(run: Callable[[], object], device: torch.device) -> float:
    """The share of ``run()``'s wall time the GPU spends in kernels and copies (torch.profiler's device
    time over the wall time of an unprofiled call): well below 1, the GPU waits for the host."""
    from torch.profiler import ProfilerActivity, profile

    _sync(device)
    start = time.perf_counter()
    run()
    _sync(device)
    wall = time.perf_counter() - start
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        _sync(device)
    return sum(e.self_device_time_total for e in prof.key_averages()) / 1e6 / wall


class PhaseTimer:
    """Wall-clock seconds per phase of a step (meaningful on a CPU, where every op is synchronous)."""

    def __init__(self) -> None:
        self.seconds = {name: 0.0 for name in PHASES}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[name] += time.perf_counter() - start


# ---------------------------------------------------------------------------- one size
def size_config(size: str, batch: int, seq_len: int | None, overrides: list[str], precision: str):
    """The run config of a benchmark size (time conditioning on, as the performance targets are stated)."""
    if size not in SIZES:
        raise MaskdiffError(f"unknown size {size!r}; choose from {', '.join(SIZES)}")
    preset, extra, _ = SIZES[size]
    extra = [*extra, f"train.batch_size={batch}", f"train.precision={precision}"]
    extra += [f"data.seq_len={seq_len}"] if seq_len is not None else []
    return get_preset(preset).with_overrides(extra + overrides)


def training_step(size: str, precision: str, batch: int, seq_len: int | None, overrides: list[str], device: torch.device, compiled: bool = False):
    """A training state of ``size`` and its step: ``(step(x0, mark), batches, state, cfg)``; ``compiled``:
    the loss under ``torch.compile``."""
    cfg = size_config(size, batch, seq_len, overrides, precision)
    vocab, length = SIZES[size][2], cfg.data.seq_len
    tokens = torch.randint(0, vocab, (4 * batch * length,), generator=torch.Generator().manual_seed(1234))
    state = TrainState.create(cfg, vocab, Splits(train=tokens, valid=tokens[:length], test=tokens[:length]), device)
    dtype = torch.bfloat16 if precision == "bf16" else None
    batches = [next(state.batches).to(device) for _ in range(4)]
    module = compile_loss(state.model) if compiled else state.model

    def step(x0: torch.Tensor, mark: Mark = no_marks) -> None:
        train_step(state, [x0], grad_clip=cfg.train.grad_clip, precision=dtype, model=module, mark=mark)

    return step, batches, state, cfg


def bench_size(
    size: str,
    precision: str,
    batch: int,
    seq_len: int | None,
    overrides: list[str],
    device: torch.device,
    timing: Timing,
    peaks: dict,
    mode: str = "eager",
) -> SizeResult:
    """Time the training step of one size at one precision in ``mode`` (eager, compiled); ``peaks``
    caches matmul peaks by (precision, n)."""
    if mode == "compiled":
        torch._dynamo.reset()  # a fresh model: no earlier size's graphs count towards the recompile limit
    step, batches, state, cfg = training_step(size, precision, batch, seq_len, overrides, device, compiled=mode == "compiled")
    m = cfg.model
    n = peak_matmul_size(cfg, device)
    if (precision, n) not in peaks:
        wait_for_quiet(timing.wait_quiet)
        repeats = GPU_PEAK_REPEATS if device.type == "cuda" else 1
        peaks[(precision, n)] = matmul_peak(
            n, torch.bfloat16 if precision == "bf16" else torch.float32, device, min(0.5, max(timing.min_time, 0.05)), repeats
        )
    warm = time.perf_counter()
    # compiled: the first step compiles, the second once more (the network's rotary table, cached
    # by the first, changes what the graph guards on)
    for i in range(max(timing.warmup, 3) if mode == "compiled" else timing.warmup):
        step(batches[i % len(batches)])
    _sync(device)
    warmup_s = time.perf_counter() - warm
    wait_for_quiet(timing.wait_quiet)
    records: list[tuple[float, float | None, dict[str, float]]] = []
    start = time.perf_counter()

    def more() -> bool:
        elapsed, clean = time.perf_counter() - start, sum(is_clean(r[1]) for r in records)
        if len(records) < timing.steps or elapsed < timing.min_time:
            return True
        return clean < timing.steps and elapsed < timing.max_time  # extra steps to replace contended ones

    while device.type == "cuda" and more():  # back to back, as in training: one wait at the end
        t0, count = time.perf_counter(), max(timing.steps, 1)
        for i in range(count):
            step(batches[(len(records) + i) % len(batches)])
        _sync(device)
        records += [((time.perf_counter() - t0) / count, None, {})] * count
    while device.type != "cuda" and more():
        timer = PhaseTimer()
        load, t0 = OtherLoad().start(), time.perf_counter()
        step(batches[len(records) % len(batches)], timer if device.type == "cpu" else no_marks)
        _sync(device)
        records.append((time.perf_counter() - t0, load.stop(), timer.seconds))
    used = [r for r in records if is_clean(r[1])] or records
    seconds = [r[0] for r in used]
    tokens_per_s = batch * cfg.data.seq_len * len(used) / sum(seconds)
    flops = state.model.flops_per_token(cfg.data.seq_len)
    achieved = tokens_per_s * flops / 1e9
    phases = {name: 1e3 * sum(r[2][name] for r in used) / len(used) for name in PHASES} if device.type == "cpu" else {}
    busy = device_busy_share(lambda: [step(batches[i % len(batches)]) for i in range(3)], device) if device.type == "cuda" else None
    return SizeResult(
        size=size,
        precision=precision,
        mode=mode,
        params=state.model.num_parameters(),
        shape=f"{m.n_layers}x{m.d_model}/{m.n_heads}h",
        batch=batch,
        seq_len=cfg.data.seq_len,
        flops_per_token=flops,
        tokens_per_s=tokens_per_s,
        step_ms=1e3 * statistics.median(seconds),
        achieved_gflops=achieved,
        peak_gflops=peaks[(precision, n)],
        peak_n=n,
        mfu=achieved / peaks[(precision, n)],
        clean_steps=sum(is_clean(r[1]) for r in records),
        timed_steps=len(records),
        phases_ms=phases,
        warmup_s=warmup_s,
        device_busy=busy,
    )


def bf16_skip_reason(device: torch.device) -> str | None:
    """Why bf16 is not benchmarked on ``device`` (None: it is)."""
    if device.type == "cpu" and not cpu_has_fast_bf16():
        return "this CPU has no native bf16 (no AVX512-BF16 or AMX): bf16 is emulated, hundreds of times slower than fp32"
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "this GPU has no bf16"
    return None


def bench_train(
    sizes: list[str],
    precisions: list[str],
    batch: int = 32,
    seq_len: int | None = None,
    overrides: list[str] | None = None,
    device: str = "auto",
    timing: Timing | None = None,
    on_result: Callable[[SizeResult], None] | None = None,
    compile: bool = False,
) -> TrainBenchmark:
    """Training tokens/s and MFU of each size at each precision (bf16 only where native; else a stated
    reason), eager and, with ``compile``, compiled right after it."""
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        raise MaskdiffError(f"precisions must be among {', '.join(PRECISIONS)}, not {', '.join(unknown) or 'none'}")
    for size in sizes:
        size_config(size, batch, seq_len, overrides or [], "fp32")  # every problem before the first measurement
    dev = resolve_device(device)
    skipped = {"bf16": reason} if "bf16" in precisions and (reason := bf16_skip_reason(dev)) else {}
    peaks: dict = {}
    results = []
    for precision in [p for p in precisions if p not in skipped]:
        for size in sizes:
            for mode in MODES if compile else MODES[:1]:
                result = bench_size(size, precision, batch, seq_len, overrides or [], dev, timing or Timing(), peaks, mode)
                results.append(result)
                if on_result is not None:
                    on_result(result)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_description()
    return TrainBenchmark(name, str(dev), torch.__version__, torch.get_num_threads(), results, skipped)


# ---------------------------------------------------------------------------- reporting
def format_table(bench: TrainBenchmark) -> str:
    """The results as a text table, with the machine and what the columns mean."""
    headers = ["size", "params", "shape", "prec", "mode", "batch x seq", "clean/timed", "warm-up s", "step ms", "tokens/s", "MFLOP/tok", "GFLOP/s"]
    headers += ["peak (n)", "MFU"]
    rows = [
        [
            r.size,
            f"{r.params / 1e6:.2f}M",
            r.shape,
            r.precision,
            r.mode,
            f"{r.batch} x {r.seq_len}",
            f"{r.clean_steps}/{r.timed_steps}",
            f"{r.warmup_s:,.1f}",
            f"{r.step_ms:,.1f}",
            f"{r.tokens_per_s:,.0f}",
            f"{r.flops_per_token / 1e6:.1f}",
            f"{r.achieved_gflops:,.1f}",
            f"{r.peak_gflops:,.0f} ({r.peak_n})",
            f"{r.mfu:.0%}",
        ]
        for r in bench.results
    ]
    if any(r.device_busy is not None for r in bench.results):  # a GPU: how much of a step the device works
        headers.append("GPU busy")
        for row, r in zip(rows, bench.results):
            row.append("" if r.device_busy is None else f"{r.device_busy:.0%}")
    lines = [f"{bench.cpu} | {bench.device}, {bench.threads} thread(s) | torch {bench.torch}", ""]
    lines += _table(headers, rows)
    lines += [
        "",
        "AdamW + clipping + EMA; tiny, 5M and 25M with time conditioning. MFLOP/tok: forward + backward, 6 per non-embedding",
        "weight plus 12 n_layers L d for attention; peak: fastest n x n matmul in the same precision on the same threads (on a",
        "GPU, n = 8192); MFU = GFLOP/s / peak. compiled: the loss under torch.compile; warm-up s: the untimed first steps (compiling);",
        "GPU busy: kernel time over wall time of three steps (torch.profiler): well under 100%, the GPU waits for the host.",
    ]
    with_phases = [r for r in bench.results if r.phases_ms]
    if with_phases:
        lines += ["", "Where a step goes (mean wall-clock ms per phase)"]
        lines += _table(
            ["size", "prec", "mode", *PHASES], [[r.size, r.precision, r.mode, *(f"{r.phases_ms[p]:,.1f}" for p in PHASES)] for r in with_phases]
        )
    lines += [f"{precision} not measured: {reason}" for precision, reason in bench.skipped.items()]
    return "\n".join(lines)


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    out = ["  ".join(h.rjust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    return out + ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]


def profile_table(
    size: str, precision: str, batch: int, seq_len: int | None, overrides: list[str], steps: int = 3, rows: int = 25, compiled: bool = False
) -> str:
    """torch.profiler's ops of ``steps`` training steps of a size (after one warm-up step), by self CPU time,
    with the host syncs (``aten::_local_scalar_dense``: ``.item()``, ``bool()`` of a tensor) per step."""
    from torch.profiler import ProfilerActivity, profile, record_function

    device = resolve_device("auto")
    step, batches, _, _ = training_step(size, precision, batch, seq_len, overrides, device, compiled)
    step(batches[0])
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for i in range(steps):
            step(batches[i % len(batches)], record_function)
        _sync(device)
    averages = prof.key_averages()
    syncs = sum(e.count for e in averages if e.key == "aten::_local_scalar_dense") / steps
    total = sum(e.self_cpu_time_total for e in averages)
    lines = [f"profile of {size} {precision}, {steps} steps: {syncs:g} host syncs per step; share = self CPU time / all self CPU time"]
    lines.append(f"{'op':48s} {'calls/step':>10s} {'self ms/step':>12s} {'share':>6s}")
    for e in sorted(averages, key=lambda e: -e.self_cpu_time_total)[:rows]:
        lines.append(f"{e.key[:48]:48s} {e.count / steps:10.1f} {e.self_cpu_time_total / 1e3 / steps:12.1f} {e.self_cpu_time_total / total:6.1%}")
    return "\n".join(lines)

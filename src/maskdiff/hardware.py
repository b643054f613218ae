"""Device and numeric-precision choices: where to run and whether bf16 autocast pays off."""

from __future__ import annotations

import contextlib
import os
import time

import torch

from maskdiff.errors import MaskdiffError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MaskdiffError("train.device=cuda but no CUDA device is available")
    return torch.device(name)


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 matmuls (AVX512-BF16 or AMX); elsewhere bf16 is emulated and far slower."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


class OtherLoad:
    """Cores kept busy by *other* processes between :meth:`start` and :meth:`stop`: the machine's
    CPU time (Linux /proc/stat) minus this process's own. ``stop`` returns None where it is unknown."""

    @staticmethod
    def _machine_busy_seconds() -> float:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:9]]  # user .. steal
        return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait

    def start(self) -> OtherLoad:
        try:
            self._start: tuple[float, float, float] | None = (time.perf_counter(), time.process_time(), self._machine_busy_seconds())
        except (OSError, ValueError, IndexError, AttributeError):
            self._start = None
        return self

    def stop(self) -> float | None:
        if self._start is None:
            return None
        try:
            busy = self._machine_busy_seconds()
        except (OSError, ValueError, IndexError, AttributeError):
            return None
        wall, own = time.perf_counter(), time.process_time()
        return max(0.0, (busy - self._start[2]) - (own - self._start[1])) / max(wall - self._start[0], 1e-9)


def other_busy_cores(seconds: float = 0.1) -> float | None:
    """Cores kept busy by other processes over a short window (Linux /proc/stat), or None where unknown."""
    load = OtherLoad().start()
    time.sleep(seconds)
    return load.stop()


def choose_threads(requested: int | None = None) -> int:
    """How many threads torch should use: ``requested`` when given, else the ``--threads auto`` policy.

    auto: this process's share of the cores (all of them, divided among the processes of a
    ``torchrun`` job on this machine), except when other processes already keep at least half a
    core busy: then 1. Next to a busy process, extra threads mostly wait for the one that lost its
    core: sampling and training were 1.1-3x slower with 2 threads than with 1 on a 2-core machine,
    while on an idle one 2 threads were 1.6-2x faster (benchmarks/threads.py; the table is in the
    README). The choice is made once, when the command starts.
    """
    if requested is not None:
        if requested < 1:
            raise MaskdiffError(f"--threads must be >= 1, got {requested}")
        return requested
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    share = max(1, (os.cpu_count() or 1) // local_processes)
    if share > 1 and (other_busy_cores() or 0.0) >= 0.5:
        return 1
    return share


def cpu_description() -> str:
    """The CPU's model name and the vector extensions that matter here (avx512_bf16, amx, avx2)."""
    name, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name == "unknown CPU":
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    shown = [flag for flag in ("avx512_bf16", "amx_bf16", "avx512f", "avx2") if flag in flags]
    return f"{name} ({', '.join(shown) or 'no AVX2'})"


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``name`` (auto, bf16, fp32) on ``device``; None means plain fp32."""
    if name == "fp32":
        return None
    if name == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_fast_bf16() else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """A bf16 autocast context, or a no-op for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)

"""The GPU figures of maskdiff in one short run: matmul peak, training MFU eager and compiled, sampling.

Measures, on the first CUDA device (or the CPU with --quick, to check the script at tiny sizes):

1. the dense bf16 matmul peak (8192^3, random operands, the fastest timing of ten back-to-back products);
2. training tokens/s and MFU against that peak for md4-small (GPT-2 small shape, 1024 tokens) and
   the 25M model (8 layers, width 512, 256 tokens), bf16 autocast, eager and with the loss under
   torch.compile (``maskdiff.bench.train.bench_size``: the trainer's own step, AdamW, clipping,
   EMA), each with the share of the step's wall time the device is busy (kernel time from
   torch.profiler over a few steps): a low share means the step waits for the host;
3. autoregressive decoding of 4 x 512 tokens on the KV cache against recomputing the prefix
   every token (ar-small and ar-md4-small shapes, random weights), tokens/s;
4. MDM sampling of 8 x 1024 tokens with the dual block cache (md4-small shape, random weights,
   blocks of 32, 256 steps): ms per step and the host share of a step (1 - device busy time /
   wall time).

Writes OUT/gpu_check.json (every figure, the GPU, torch) and prints a table at the end.

    python benchmarks/gpu_check.py --out /tmp/gpu                 # on a GPU machine, about 7 minutes
    python benchmarks/gpu_check.py --quick --out /tmp/gpu-quick   # tiny sizes on the CPU: checks the script
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from collections import deque
from dataclasses import asdict
from pathlib import Path

import torch

from maskdiff.bench.train import GPU_PEAK_N, MODES, Timing, bench_size, device_busy_share, matmul_peak
from maskdiff.hardware import autocast, cpu_description, resolve_device
from maskdiff.models import build_model
from maskdiff.presets import get_preset


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training(sizes: list[tuple[str, int, int | None]], quick: bool, device: torch.device, peak_gflops: float, log) -> list[dict]:
    """Eager and compiled bf16 (fp32 on a CPU) training of each (size, batch, seq_len), MFU against ``peak_gflops``."""
    precision = "bf16" if device.type == "cuda" else "fp32"
    timing = Timing(
        steps=2 if quick else 10, min_time=0.0 if quick else 3.0, max_time=0.0 if quick else 20.0, warmup=1 if quick else 3, wait_quiet=0.0
    )
    overrides = ["model.n_layers=1", "model.d_model=64", "model.n_heads=2"] if quick else []
    out = []
    for size, batch, seq_len in sizes:
        for mode in MODES:
            start = time.perf_counter()
            try:
                result = bench_size(size, precision, batch, seq_len, overrides, device, timing, {(precision, GPU_PEAK_N): peak_gflops}, mode)
            except Exception as err:  # the other rows still count
                log(f"train {size} {mode} batch {batch} failed: {type(err).__name__}: {str(err).strip()[:300]}")
                out.append({"size": size, "mode": mode, "batch": batch, "error": traceback.format_exc()})
                continue
            row = asdict(result) | {"mfu_of_measured_peak": result.achieved_gflops / peak_gflops, "wall_s": time.perf_counter() - start}
            out.append(row)
            busy = "" if result.device_busy is None else f"  GPU busy {result.device_busy:6.1%}"
            log(
                f"train {size:10s} {mode:8s} {precision} batch {batch} x {result.seq_len}: {result.tokens_per_s:12,.0f} tokens/s  "
                f"step {result.step_ms:8.1f} ms  MFU {row['mfu_of_measured_peak']:6.1%}{busy}  warm-up {result.warmup_s:5.1f} s"
            )
    return out


def random_model(preset: str, vocab: int, device: torch.device, overrides: list[str]):
    cfg = get_preset(preset).with_overrides(overrides)
    model = build_model(cfg, vocab_size=vocab, seed=0).to(device).eval()
    with torch.no_grad():
        model.get_parameter("denoiser.head.weight").normal_(std=0.5)  # non-uniform draws
    return model


def ar_decoding(presets: list[str], length: int, samples: int, quick: bool, device: torch.device, log) -> list[dict]:
    """Tokens/s of autoregressive decoding on the KV cache and by recomputing the prefix every token."""
    dtype = torch.bfloat16 if device.type == "cuda" else None
    overrides = ["model.n_layers=1", "model.d_model=64", "model.n_heads=2"] if quick else []
    out = []
    for preset in presets:
        model = random_model(preset, 50_257 if "md4" in preset else 84, device, overrides)

        def generate(n: int, recompute: bool, model=model) -> float:
            sync(device)
            start = time.perf_counter()
            with torch.no_grad(), autocast(device, dtype):
                deque(model.iterate(samples, n, n, generator=torch.Generator().manual_seed(0), device=device, recompute=recompute), maxlen=1)
            sync(device)
            return time.perf_counter() - start

        generate(16, False), generate(16, True)  # warm-up
        cached, recomputed = generate(length, False), generate(length, True)
        row = {"preset": preset, "length": length, "samples": samples, "cached_tokens_per_s": samples * length / cached}
        row |= {"recomputed_tokens_per_s": samples * length / recomputed, "speedup": recomputed / cached}
        out.append(row)
        cached_rate, recomputed_rate = row["cached_tokens_per_s"], row["recomputed_tokens_per_s"]
        log(f"ARM {preset:13s} {samples} x {length}: KV cache {cached_rate:8,.0f} tokens/s, recompute {recomputed_rate:8,.0f}: {row['speedup']:.1f}x")
    return out


def mdm_dual_cache(length: int, samples: int, steps: int, block: int, quick: bool, device: torch.device, log) -> dict:
    """ms per step and the host share of a step of MDM sampling with the dual block cache."""
    dtype = torch.bfloat16 if device.type == "cuda" else None
    overrides = ["model.n_layers=1", "model.d_model=64", "model.n_heads=2", f"data.seq_len={length}"] if quick else []
    model = random_model("md4-small", 50_257, device, overrides)
    options = {"block_size": block, "kv_cache": "dual"}

    def run(n_steps: int, n: int) -> None:
        with torch.no_grad(), autocast(device, dtype):
            deque(model.iterate(samples, n, n_steps, generator=torch.Generator().manual_seed(0), device=device, **options), maxlen=1)

    run(4, 2 * block)  # warm-up
    sync(device)
    start = time.perf_counter()
    run(steps, length)
    sync(device)
    wall = time.perf_counter() - start
    busy = device_busy_share(lambda: run(steps, length), device) if device.type == "cuda" else None
    row = {"length": length, "samples": samples, "steps": steps, "block_size": block, "ms_per_step": 1e3 * wall / steps}
    row |= {"tokens_per_s": samples * length / wall, "host_share": None if busy is None else 1 - busy}
    share = "not measured on a CPU" if row["host_share"] is None else f"{row['host_share']:.0%}"
    log(f"MDM dual cache {samples} x {length}, {steps} steps, block {block}: {row['ms_per_step']:.2f} ms/step, host share {share}")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json")
    parser.add_argument("--quick", action="store_true", help="tiny sizes on the CPU: checks that the script runs")
    parser.add_argument("--skip-sampling", action="store_true", help="training figures only")
    args = parser.parse_args()
    device = torch.device("cpu") if args.quick else resolve_device("cuda")
    args.out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def log(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    report: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_description(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "quick": args.quick,
    }
    log(f"{report['device']} | torch {report['torch']} | CUDA {report['cuda']}")

    def save() -> None:
        (args.out / "gpu_check.json").write_text(json.dumps(report | {"lines": lines}, indent=1) + "\n")

    n, dtype = (512, torch.float32) if args.quick else (GPU_PEAK_N, torch.bfloat16)
    report["peak_gflops"] = matmul_peak(n, dtype, device, min_time=0.5, repeats=1 if args.quick else 10)
    report["peak"] = f"{n}^3 {'bf16' if dtype == torch.bfloat16 else 'fp32'} matmul"
    log(f"peak: {report['peak_gflops'] / 1e3:,.1f} TFLOP/s ({report['peak']})")
    save()

    # the targets' rows first, so that a run cut short still has them
    first, last = [("md4-small", 16, None), ("25M", 32, None)], [("25M", 128, None)]
    if args.quick:
        first, last = [("md4-small", 1, 32), ("25M", 2, 16)], []
    sections = [("training", lambda: training(first, args.quick, device, report["peak_gflops"], log))]
    if not args.skip_sampling:
        ar_length, (mdm_length, mdm_samples, mdm_steps, block) = (32, (64, 2, 16, 16)) if args.quick else (512, (1024, 8, 256, 32))
        # the MDM first: host-bound autoregressive decoding takes about a minute per network on an H200
        sections += [
            ("mdm_dual_cache", lambda: mdm_dual_cache(mdm_length, mdm_samples, mdm_steps, block, args.quick, device, log)),
            ("ar_decoding", lambda: ar_decoding(["ar-small", "ar-md4-small"], ar_length, 4, args.quick, device, log)),
        ]
    if last:
        sections.append(("training_large_batch", lambda: training(last, args.quick, device, report["peak_gflops"], log)))
    for name, measure in sections:
        try:
            report[name] = measure()
        except Exception as err:  # one failed measurement must not cost the others
            log(f"{name} failed: {type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}")
            report[name] = {"error": traceback.format_exc()}
        save()
    print("\n".join(["", "summary", *lines]))


if __name__ == "__main__":
    main()

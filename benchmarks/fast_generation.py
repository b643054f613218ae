"""Fast generation: KV-cached block decoding and parallel decoding rules against plain ancestral decoding.

For every sequence length and block size, every combination of cache mode (none, prefix, dual)
and reveal rule (ancestral, threshold, factor) is timed against uncached ancestral decoding of
the whole sequence with one step per token: network evaluations (NFE), tokens/s, the speed-up,
tokens revealed per evaluation, and sample quality (generative perplexity under the offline
judge, with the samples' unigram entropy, which collapses for repetitive text).

The model: ``--checkpoint RUN``, or a `tiny` model trained here with sequence length
max(--lengths), so that every length is one the model was trained at (its rotary position
embeddings would run at 1024 after training at 256, but on positions it never saw). The trained
run is kept in OUT/model and reused by the next call.

    python benchmarks/fast_generation.py --quick                      # small settings, a minute or two
    python benchmarks/fast_generation.py --out runs/fast-generation   # lengths 256 and 1024, block 32

Writes OUT/fast_generation.json (every figure, the machine) and OUT/fast_generation.png
(speed-up against judge perplexity). Timings are only meaningful on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from maskdiff.checkpoint import latest_checkpoint, load_run
from maskdiff.evaluation.judge import load_judge, sample_quality
from maskdiff.generation.text import generate_from_run
from maskdiff.hardware import cpu_description, resolve_device, resolve_precision
from maskdiff.presets import get_preset
from maskdiff.training import train

CACHES = ("none", "prefix", "dual")
RULES = {"ancestral": {}, "threshold": {"method": "threshold", "threshold": 0.9}, "factor": {"method": "factor", "factor": 1.0}}


def trained_run(out: Path, seq_len: int, steps: int, batch_size: int, quick: bool) -> Path:
    """OUT/model, trained here unless it already holds a checkpoint."""
    run_dir = out / "model"
    if latest_checkpoint(run_dir) is not None:
        return run_dir
    overrides = [f"data.seq_len={seq_len}", f"train.steps={steps}", f"train.batch_size={batch_size}", f"train.warmup_steps={max(1, steps // 10)}"]
    if quick:
        overrides += ["model.n_layers=2", "model.d_model=64", "train.eval_every=0"]
    print(f"training a tiny model at sequence length {seq_len} for {steps} steps into {run_dir}")
    train(get_preset("tiny").with_overrides(overrides), run_dir, progress=True)
    return run_dir


def configurations(block_sizes: list[int]) -> list[dict]:
    """The baseline (uncached ancestral, no blocks), then every block size x cache x rule."""
    out = [{"name": "ancestral (baseline)", "block_size": 0, "kv_cache": "none", "rule": "ancestral"}]
    for block in block_sizes:
        for cache in CACHES:
            for rule in RULES:
                out.append({"name": f"block {block} {cache} {rule}", "block_size": block, "kv_cache": cache, "rule": rule})
    return out


def plot(results: list[dict], path: Path, quality_key: str) -> None:
    """Speed-up (x) against sample quality (y), one point per configuration and length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for length in sorted({r["length"] for r in results}):
        rows = [r for r in results if r["length"] == length and r[quality_key] is not None]
        ax.scatter([r["speedup"] for r in rows], [r[quality_key] for r in rows], label=f"length {length}")
        for r in rows:
            ax.annotate(r["name"].replace("block ", "b"), (r["speedup"], r[quality_key]), fontsize=6, alpha=0.7)
    ax.set_xscale("log")
    ax.set_xlabel("speed-up over uncached ancestral decoding (tokens/s)")
    ax.set_ylabel("judge perplexity (lower is better)" if quality_key == "gen_perplexity" else "unigram entropy, bits (higher is better)")
    ax.set_title("maskdiff fast generation")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a trained text run (default: train a tiny model at max(--lengths) into OUT/model)")
    parser.add_argument("--out", default="runs/fast-generation", help="output folder (default runs/fast-generation)")
    parser.add_argument("--lengths", type=int, nargs="+", help="sequence lengths (default 256 1024; --quick: 64 128)")
    parser.add_argument("--block-sizes", type=int, nargs="+", help="block sizes (default 32; --quick: 16)")
    parser.add_argument("--num-samples", type=int, help="samples per configuration (default 8; --quick: 2)")
    parser.add_argument("--train-steps", type=int, help="training steps of the benchmark's model (default 1000; --quick: 20)")
    parser.add_argument("--train-batch", type=int, help="training batch size (default 8; --quick: 4)")
    parser.add_argument("--judge", help="judge for generative perplexity: smollm2 (default), a model folder or .gguf, or none (--quick: none)")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="small settings that run in a minute or two (checks that everything runs)")
    args = parser.parse_args()

    quick = args.quick
    lengths = args.lengths or ([64, 128] if quick else [256, 1024])
    block_sizes = args.block_sizes or ([16] if quick else [32])
    num_samples = args.num_samples or (2 if quick else 8)
    judge_name = args.judge or ("none" if quick else "smollm2")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    device = resolve_device(args.device)
    dtype = resolve_precision(args.precision, device)
    if args.checkpoint:
        run_dir = Path(args.checkpoint)
    else:
        run_dir = trained_run(out, max(lengths), args.train_steps or (20 if quick else 1000), args.train_batch or (4 if quick else 8), quick)
    run = load_run(run_dir, device=device)
    judge = None if judge_name == "none" else load_judge(judge_name, device=str(device))
    quality_key = "gen_perplexity" if judge is not None else "unigram_entropy"

    machine = {
        "cpu": cpu_description(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "precision": "bf16" if dtype is not None else "fp32",
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    print(f"{machine['cpu']} | {machine['device']}, {machine['threads']} threads, {machine['precision']} | run {run_dir} | judge {judge_name}")
    generate_from_run(run, 1, 16, 4, device=device, dtype=dtype)  # warm-up: one-time costs out of the first timing

    results: list[dict] = []
    header = f"{'length':>6s}  {'configuration':30s} {'NFE':>6s} {'tok/eval':>8s} {'tokens/s':>9s} {'speed-up':>8s} {'judge ppl':>9s} {'entropy':>7s}"
    print(header)
    for length in lengths:
        baseline = None
        for config in configurations([b for b in block_sizes if b < length]):
            options = {**RULES[config["rule"]], "block_size": config["block_size"], "kv_cache": config["kv_cache"]}
            start = time.perf_counter()
            gen = generate_from_run(run, num_samples, length, length, args.seed, device=device, dtype=dtype, **options)
            seconds = time.perf_counter() - start
            quality = sample_quality(gen.texts, judge)
            tokens_per_s = num_samples * length / seconds
            baseline = baseline or tokens_per_s
            row = {
                **config,
                "length": length,
                "steps": length,
                "num_samples": num_samples,
                "nfe": gen.nfe,
                "tokens_per_evaluation": gen.tokens_per_evaluation,
                "seconds": seconds,
                "tokens_per_s": tokens_per_s,
                "speedup": tokens_per_s / baseline,
                **quality.to_dict(),
            }
            results.append(row)
            ppl = f"{row['gen_perplexity']:9.1f}" if row["gen_perplexity"] is not None else f"{'-':>9s}"
            print(
                f"{length:6d}  {config['name']:30s} {gen.nfe:6d} {gen.tokens_per_evaluation:8.2f} {tokens_per_s:9.0f} "
                f"{row['speedup']:7.2f}x {ppl} {row['unigram_entropy']:7.2f}"
            )

    report = {"machine": machine, "run": str(run_dir), "judge": judge_name, "results": results}
    (out / "fast_generation.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(results, out / "fast_generation.png", quality_key)
    print(f"wrote {out / 'fast_generation.json'} and {out / 'fast_generation.png'}")


if __name__ == "__main__":
    main()

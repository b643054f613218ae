"""What LLaDA-8B costs on this machine: weight memory, and the time of one sampling step.

A sampling step of a masked diffusion model is one forward pass of the network over the whole
canvas (prompt + answer). An 8B model in bf16 needs 16 GB for its weights alone, more than a
2-core CI machine can spare next to the pass's activations, so this script measures networks of
LLaDA-8B's exact width (d_model 4096, 32 heads, SwiGLU hidden 12288, RMSNorm, vocabulary 126,464)
with 1, 2 and 4 of its 32 blocks, fits time = fixed + per_block * blocks (least squares), and
extrapolates to 32 blocks. The output says it is extrapolated. Random weights: the arithmetic of
a pass does not depend on their values.

    python benchmarks/llada_8b_cpu.py                       # bf16, 1 x 256 tokens
    python benchmarks/llada_8b_cpu.py --length 512 --precision fp32

Run it alone: with other work on the machine the figures drop several-fold.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from maskdiff.hardware import cpu_description
from maskdiff.nets.transformer import Transformer, TransformerConfig

LLADA_8B = dict(d_model=4096, n_heads=32, mlp_hidden=12288, mlp="swiglu", norm="rmsnorm", norm_eps=1e-5, rope_base=500_000.0)
LLADA_8B_BLOCKS = 32
LLADA_8B_VOCAB = 126_464  # the output layer's rows; the mask id 126336 is one of them


def network(blocks: int, dtype: torch.dtype) -> Transformer:
    cfg = TransformerConfig(n_layers=blocks, **LLADA_8B)  # type: ignore[arg-type]
    with torch.device("meta"):
        net = Transformer(cfg, LLADA_8B_VOCAB)
    net = net.to_empty(device="cpu").to(dtype)
    for p in net.parameters():  # random weights of a sane scale (meta init leaves them empty)
        torch.nn.init.normal_(p, std=0.02)
    return net.eval()


def time_pass(net: Transformer, length: int, repeats: int) -> float:
    z = torch.randint(0, LLADA_8B_VOCAB, (1, length))
    t = torch.zeros(1)
    with torch.inference_mode():
        net(z, t)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            net(z, t)
            times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=256, help="tokens in the canvas (prompt + answer)")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    measured = {}
    for blocks in (1, 2, 4):
        net = network(blocks, dtype)
        measured[blocks] = time_pass(net, args.length, args.repeats)
        print(f"{blocks} block(s): {measured[blocks]:.3f} s per pass", flush=True)
        del net
    xs = torch.tensor(list(measured), dtype=torch.float64)
    ys = torch.tensor(list(measured.values()), dtype=torch.float64)
    slope = float(((xs - xs.mean()) * (ys - ys.mean())).sum() / ((xs - xs.mean()) ** 2).sum())
    fixed = float(ys.mean() - slope * xs.mean())
    step = fixed + slope * LLADA_8B_BLOCKS
    with torch.device("meta"):
        full = Transformer(TransformerConfig(n_layers=LLADA_8B_BLOCKS, **LLADA_8B), LLADA_8B_VOCAB)  # type: ignore[arg-type]
    params = sum(p.numel() for p in full.parameters())
    weight_gb = params * (2 if dtype == torch.bfloat16 else 4) / 1e9
    figures = {
        "cpu": cpu_description(),
        "threads": torch.get_num_threads(),
        "precision": args.precision,
        "length": args.length,
        "parameters": params,
        "weights_gb": round(weight_gb, 2),
        "seconds_per_block": round(slope, 4),
        "seconds_fixed": round(fixed, 4),
        "seconds_per_step_extrapolated": round(step, 2),
        "measured": {str(k): round(v, 4) for k, v in measured.items()},
    }
    print(
        f"LLaDA-8B shape, {args.precision}, 1 x {args.length} tokens on {figures['cpu']} ({figures['threads']} threads): "
        f"{params / 1e9:.2f}B parameters, {weight_gb:.1f} GB of weights; one sampling step (one pass) "
        f"{step:.1f} s, extrapolated from 1, 2 and 4 blocks ({slope:.3f} s per block + {fixed:.3f} s embedding and output layer)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()

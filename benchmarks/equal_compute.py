"""Masked diffusion against the autoregressive baseline at equal training compute, on the built-in corpus.

For each compute level it trains the `tiny` preset (MDM, the NELBO bound) and its twin `ar-tiny`
(ARM, the exact likelihood) for the same number of steps: the same network, batch and sequence
length, so the same training FLOPs (6 N D plus attention, ``Objective.flops_per_token``) and, on
the same core, about the same CPU time. It prints validation bits/char of each (the MDM's with
its standard error) and the compute multiple the MDM needs to reach the ARM's loss, by
interpolating the MDM's loss linearly in log-compute between its levels (extrapolating from the
last two when the ARM is below all of them, marked with ~).

    taskset -c 0 python benchmarks/equal_compute.py --steps 250,500,1000 --threads 1 --set model.n_layers=4 --out runs/equal-compute

Runs already finished in --out are read back, not retrained, so an interrupted study resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from maskdiff.hardware import cpu_description
from maskdiff.presets import get_preset
from maskdiff.training import train


def run_one(preset: str, steps: int, out: Path, extra: list[str]) -> dict:
    result_file = out / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    warmup = max(10, steps // 10)
    cfg = get_preset(preset).with_overrides(
        [f"train.steps={steps}", f"train.warmup_steps={warmup}", "train.eval_every=0", f"train.checkpoint_every={steps}", *extra]
    )
    start = time.perf_counter()
    result = train(cfg, out, progress=False)
    seconds = time.perf_counter() - start
    assert result.valid is not None
    from maskdiff.models import build_model

    flops_per_token = build_model(cfg, 81).flops_per_token(cfg.data.seq_len)
    tokens = steps * cfg.train.batch_size * cfg.train.grad_accum * cfg.data.seq_len
    record = {
        "preset": preset,
        "steps": steps,
        "tokens": tokens,
        "flops": flops_per_token * tokens,
        "seconds": seconds,
        "bits": result.valid.bits_per_token,
        "stderr": result.valid.bits_per_token_stderr,
        "estimator": result.valid.estimator,
    }
    result_file.write_text(json.dumps(record, indent=1) + "\n")
    return record


def compute_to_reach(target: float, levels: list[dict]) -> tuple[float, bool]:
    """The compute at which the MDM's loss (linear in log C between levels) reaches ``target``; extrapolated?"""
    points = sorted((math.log(r["flops"]), r["bits"]) for r in levels)
    for (c0, l0), (c1, l1) in zip(points, points[1:]):
        if min(l0, l1) <= target <= max(l0, l1) and l0 != l1:
            return math.exp(c0 + (target - l0) * (c1 - c0) / (l1 - l0)), False
    (c0, l0), (c1, l1) = points[-2], points[-1]
    if l1 >= l0:
        return math.inf, True
    return math.exp(c1 + (target - l1) * (c1 - c0) / (l1 - l0)), True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="250,500,1000", help="compute levels as training steps of the tiny shape")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/equal-compute")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override for every run")
    parser.add_argument("--mdm-only-steps", default="", help="extra levels trained for the MDM alone (to reach the ARM's loss), e.g. 2000,4000")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    print(f"CPU: {cpu_description()}; {args.threads} thread(s); torch {torch.__version__}", flush=True)
    rows: dict[str, list[dict]] = {"tiny": [], "ar-tiny": []}
    levels = [("tiny", int(s)) for s in args.mdm_only_steps.split(",") if s]
    levels = [(preset, int(s)) for s in args.steps.split(",") for preset in rows] + levels
    for preset, steps in levels:
        record = run_one(preset, steps, out / f"{preset}-{steps}", args.set)
        rows[preset].append(record)
        print(f"  {preset:8s} {steps:5d} steps: {record['bits']:.4f} ± {record['stderr']:.4f} bits/char, {record['seconds']:.0f} s", flush=True)
    print(
        print(
            "\n| training FLOPs | steps | MDM (`tiny`) NELBO, bits/char | ARM (`ar-tiny`) NLL, bits/char | MDM time | ARM time "
            "| compute the MDM needs for the ARM's loss |"
        )
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    arms = {r["steps"]: r for r in rows["ar-tiny"]}
    for mdm in rows["tiny"]:
        arm = arms.get(mdm["steps"])
        if arm is None:
            print(f"| {mdm['flops']:.2e} | {mdm['steps']} | {mdm['bits']:.3f} ± {mdm['stderr']:.3f} | - | {mdm['seconds']:.0f} s | - | - |")
            continue
        needed, extrapolated = compute_to_reach(arm["bits"], rows["tiny"])
        multiple = "never (the MDM stops improving)" if math.isinf(needed) else f"{'~' if extrapolated else ''}{needed / arm['flops']:.1f}x"
        print(
            f"| {mdm['flops']:.2e} | {mdm['steps']} | {mdm['bits']:.3f} ± {mdm['stderr']:.3f} | {arm['bits']:.3f} | "
            f"{mdm['seconds']:.0f} s | {arm['seconds']:.0f} s | {multiple} |"
        )


if __name__ == "__main__":
    main()

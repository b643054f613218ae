"""The training loop: AdamW with warm-up and cosine decay, EMA, periodic evaluation, checkpoints.

The trainer knows the objective only through ``objective(x0, generator) -> [B]`` (its
``train_loss``, nats per sequence) and ``objective.nelbo`` for evaluation, so any objective with those two
methods trains the same way. Every random choice (initialisation, data crops, masking noise)
comes from seeded generators whose states are checkpointed: ``resume=True`` continues
bit-exactly where the last checkpoint left off.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from maskdiff import distributed
from maskdiff.checkpoint import latest_checkpoint, load_state, load_weights, save_checkpoint
from maskdiff.config import RunConfig
from maskdiff.data import chunks, prepare_data, training_batches
from maskdiff.training.ema import EMA
from maskdiff.errors import MaskdiffError
from maskdiff.evaluation.bound import EvalResult, evaluate_nelbo
from maskdiff.hardware import autocast, resolve_device, resolve_precision
from maskdiff.training.interrupt import StopRequest
from maskdiff.metrics import MetricsLog
from maskdiff.plots import plot_loss
from maskdiff.models import build_model
from maskdiff.tokenizer import load_tokenizer


@dataclass
class TrainResult:
    """What a finished run reports."""

    run_dir: Path
    checkpoint: Path
    steps: int
    final_train_bits: float
    valid: EvalResult | None  # None when the run was stopped early
    tokens_per_s: float
    is_main: bool = True  # False on the other processes of a torchrun job
    unit: str = "token"  # what one token is: "char" for character models
    stopped_by: str | None = None  # the signal that stopped the run early (SIGTERM, SIGINT)


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak LR at optimizer step ``step``: linear warm-up, then cosine to min_ratio."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, cfg) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms, biases or scalars)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # the fused kernel runs the whole update in a few ops, on CPU as on GPU
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Resuming needs a checkpoint in ``run_dir``; a new run must not overwrite one."""
    if resume:
        if latest_checkpoint(run_dir) is None:
            raise MaskdiffError(f"cannot resume: {str(run_dir)!r} holds no checkpoint")
    elif latest_checkpoint(run_dir) is not None or (run_dir / "config.json").exists():
        raise MaskdiffError(f"{str(run_dir)!r} already holds a run; pass --resume to continue it or choose another --out")


def create_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MaskdiffError(f"cannot create run folder {str(run_dir)!r}: {err.strerror}") from None


def train(cfg: RunConfig, run_dir: str | Path, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train ``cfg`` in ``run_dir`` (or continue the run there with ``resume=True``).

    Under ``torchrun`` every process trains on its own random crops with DistributedDataParallel;
    rank 0 writes the run folder.
    """
    run_dir = Path(run_dir)
    tc = cfg.train
    ctx, device = distributed.setup(resolve_device(tc.device))
    try:
        return _train(cfg, run_dir, resume, progress and ctx.is_main, ctx, device)
    finally:
        distributed.teardown(ctx)


def _train(cfg: RunConfig, run_dir: Path, resume: bool, progress: bool, ctx: distributed.Context, device) -> TrainResult:
    tc = cfg.train
    precision = resolve_precision(tc.precision, device)
    check_run_dir(run_dir, resume)
    # read and check the data before anything is written
    tokenizer = load_tokenizer(run_dir / "tokenizer.json") if resume else None
    tokenizer, splits = prepare_data(cfg.data, tokenizer)
    model = build_model(cfg, tokenizer.vocab_size, seed=tc.seed).to(device)
    if progress:
        tqdm.write(
            f"maskdiff: run folder {run_dir} | preset {cfg.preset} | {splits.train.numel():,} training tokens, "
            f"vocabulary {tokenizer.vocab_size} | {model.num_parameters():,} parameters | "
            f"{device.type} {'bf16 autocast' if precision else 'fp32'}"
            + (f" | {ctx.world_size} processes" if ctx.active else "")
        )

    optimizer = make_optimizer(model, tc)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, tc.warmup_steps, tc.steps, tc.min_lr_ratio)
    )
    ema = EMA(model, tc.ema_decay) if tc.ema_decay else None
    # each process draws its own crops and masks; the streams are part of the checkpoint
    crops = training_batches(splits, cfg, tc.batch_size, seed=tc.seed + 1 + 1000 * ctx.rank)
    noise = torch.Generator(device=device).manual_seed(tc.seed + 2 + 1000 * ctx.rank)
    valid = chunks(splits.valid, cfg.data.seq_len)

    step = 0
    if resume:
        checkpoint = latest_checkpoint(run_dir, verify=True)
        if checkpoint is None:
            raise MaskdiffError(f"cannot resume: every checkpoint in {str(run_dir)!r} is damaged")
        state = load_state(checkpoint)
        saved_world = len(state["data"])
        if saved_world != ctx.world_size:
            raise MaskdiffError(f"the run was trained with {saved_world} process(es); resume it with the same number, not {ctx.world_size}")
        load_weights(model, checkpoint / "model.safetensors")
        if ema is not None:
            load_weights(ema.module, checkpoint / "ema.safetensors")
            ema.updates = state["ema_updates"]
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        crops.load_state_dict(state["data"][ctx.rank])
        noise.set_state(state["noise_generator"][ctx.rank])
        torch.set_rng_state(state["torch_rng"][ctx.rank])
        step = state["step"]
        if step >= tc.steps:
            raise MaskdiffError(f"the run already finished {step} of train.steps={tc.steps}; raise train.steps to go on")
    # everything is checked: only now is anything written (a failed start changes nothing)
    distributed.barrier(ctx)
    if ctx.is_main:
        create_run_dir(run_dir)
        if not resume:
            tokenizer.save(run_dir / "tokenizer.json")
        cfg.save(run_dir / "config.json")
    trained = DistributedDataParallel(model) if ctx.active else model

    def evaluate(sequences: torch.Tensor, show: bool = False) -> EvalResult:
        target = ema.module if ema is not None else model
        return evaluate_nelbo(target, sequences, tc.batch_size, seed=tc.seed + 3, precision=precision, progress=show)

    def checkpoint_state() -> dict:
        """What resumes the run exactly; collective: every process calls it at the same step."""
        return {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "data": distributed.gather(crops.state_dict(), ctx),
            "noise_generator": distributed.gather(noise.get_state(), ctx),
            "torch_rng": distributed.gather(torch.get_rng_state(), ctx),
            "ema_updates": ema.updates if ema is not None else 0,
        }

    log = MetricsLog(run_dir, resume_step=step) if ctx.is_main else None
    tokens_per_step = tc.batch_size * tc.grad_accum * cfg.data.seq_len * ctx.world_size
    seq_len = cfg.data.seq_len
    model.train()
    loss_sum = torch.zeros((), device=device)
    # throughput counts training only: time spent in evaluation and checkpointing is set aside
    window_start, window_steps, window_good, window_tokens_per_s, set_aside = time.perf_counter(), 0, 0, 0.0, 0.0
    last_bits = float("nan")
    bad_in_a_row, skipped = 0, state.get("skipped_steps", 0) if resume else 0
    bar = tqdm(total=tc.steps, initial=step, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    checkpoint = latest_checkpoint(run_dir)
    stop = StopRequest()
    with stop:
        try:
            while step < tc.steps:
                step_loss = torch.zeros((), device=device)
                for micro in range(tc.grad_accum):
                    batch = next(crops)
                    # class-conditional image batches come with labels, which go to the denoiser
                    x0, labels = batch if isinstance(batch, tuple) else (batch, None)
                    x0 = x0.to(device, non_blocking=True)
                    extra = {} if labels is None else {"labels": labels.to(device, non_blocking=True)}
                    # DDP averages gradients once per optimizer step, on the last micro-batch
                    sync = micro == tc.grad_accum - 1 or not ctx.active
                    with contextlib.nullcontext() if sync else trained.no_sync():
                        with autocast(device, precision):
                            loss = trained(x0, generator=noise, **extra).mean() / seq_len  # train_loss in nats per token
                        (loss / tc.grad_accum).backward()
                    step_loss += loss.detach() / tc.grad_accum
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip if tc.grad_clip > 0 else math.inf)
                # a non-finite loss or gradient skips the update (same decision on every process:
                # the gradients were averaged); too many in a row stop the run
                if torch.isfinite(grad_norm) and torch.isfinite(distributed.mean(step_loss, ctx)):
                    optimizer.step()
                    if ema is not None:
                        ema.update(model)
                    loss_sum += step_loss
                    window_good += 1
                    bad_in_a_row = 0
                else:
                    bad_in_a_row += 1
                    skipped += 1
                    if bad_in_a_row >= tc.max_bad_steps:
                        raise MaskdiffError(
                            f"{bad_in_a_row} steps in a row had a non-finite loss or gradient (up to step {step + 1}); "
                            f"stopped. The last good checkpoint is {checkpoint}; lower train.lr or check the data"
                        )
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                window_steps += 1
                bar.update()

                if step % tc.log_every == 0 or step == tc.steps:
                    elapsed = time.perf_counter() - window_start - set_aside
                    window_tokens_per_s = window_steps * tokens_per_step / elapsed
                    train_loss = distributed.mean(loss_sum, ctx).item() / max(1, window_good)
                    last_bits = train_loss / math.log(2)
                    if log is not None:
                        log.log(
                            step,
                            tokens=step * tokens_per_step,
                            lr=scheduler.get_last_lr()[0],
                            train_loss=train_loss,
                            train_bits=last_bits,
                            grad_norm=float(grad_norm),
                            tokens_per_s=window_tokens_per_s,
                            skipped_steps=skipped,
                        )
                    bar.set_postfix({"loss": f"{train_loss:.3f}", f"bits/{tokenizer.unit}": f"{last_bits:.3f}", "tok/s": f"{window_tokens_per_s:,.0f}"})
                    loss_sum.zero_()
                    window_start, window_steps, window_good, set_aside = time.perf_counter(), 0, 0, 0.0

                pause = time.perf_counter()
                stopping = not distributed.all_agree(stop.requested is None, ctx)
                if tc.eval_every and step % tc.eval_every == 0 and step < tc.steps and not stopping:
                    result = evaluate(valid[: tc.eval_sequences])
                    if log is not None:
                        log.log(step, valid_bits=result.bits_per_token)
                    if progress:
                        bar.write(f"step {step}: validation {result.bits_per_token:.4f} ± {result.bits_per_token_stderr:.4f} bits/{tokenizer.unit}")

                if step % tc.checkpoint_every == 0 or step == tc.steps or stopping:
                    state = checkpoint_state()
                    state["skipped_steps"] = skipped
                    if ctx.is_main:
                        ema_weights = ema.module if ema is not None else None
                        checkpoint = save_checkpoint(run_dir, step, model, ema_weights, state, tc.keep_checkpoints)
                    distributed.barrier(ctx)
                set_aside += time.perf_counter() - pause
                if stopping:
                    break
        finally:
            bar.close()
            if log is not None and step < tc.steps:
                log.close()

    checkpoint = latest_checkpoint(run_dir) or checkpoint
    if step < tc.steps:  # stopped by a signal, with a checkpoint of this very step
        return TrainResult(run_dir, checkpoint, step, last_bits, None, window_tokens_per_s, ctx.is_main, tokenizer.unit, stop.requested)
    final = evaluate(valid, show=progress)
    if log is not None:
        log.log(step, valid_bits=final.bits_per_token)
        log.close()
        plot_loss(run_dir / "metrics.csv", run_dir / "loss.png", unit=tokenizer.unit)
        (ema.module if ema is not None else model).write_artifacts(run_dir, tokenizer.labels())
    return TrainResult(run_dir, checkpoint, step, last_bits, final, window_tokens_per_s, ctx.is_main, tokenizer.unit)

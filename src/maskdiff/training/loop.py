"""The training loop: set up or resume a run, then train step, log, evaluate, checkpoint, until done.

The trainer knows the objective only through its interface (:class:`maskdiff.objectives.Objective`):
``forward`` (its ``train_loss``, nats per sequence) in :func:`train_step`, ``nelbo`` for evaluation,
``num_parameters`` for the banner and ``write_artifacts`` at the end. Every random choice
(initialisation, data crops, masking noise) comes from seeded generators in the
:class:`TrainState`, which is what a checkpoint holds: ``resume=True`` continues bit-exactly where
the last checkpoint left off.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from maskdiff import distributed
from maskdiff.checkpoint import latest_checkpoint
from maskdiff.config import RunConfig
from maskdiff.data import evaluation_sequences, prepare_data
from maskdiff.errors import MaskdiffError, plural
from maskdiff.evaluation.bound import EvalResult, evaluate_nelbo
from maskdiff.hardware import resolve_device, resolve_precision
from maskdiff.metrics import MetricsLog
from maskdiff.objectives.estimator import Estimator
from maskdiff.plots import plot_loss
from maskdiff.tokenizer import Tokenizer, load_tokenizer
from maskdiff.training.interrupt import StopRequest
from maskdiff.training.parallel import training_module
from maskdiff.training.progress import Progress
from maskdiff.training.resume import Outcome, ResumeMode, ResumePlan, plan_resume
from maskdiff.training.state import TrainState
from maskdiff.training.step import StepOutcome, compile_loss, train_step


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


@dataclass
class StartFrom:
    """Where a new run starts instead of from scratch (fine-tuning, :mod:`maskdiff.training.finetune`):
    another run's weights and the vocabulary they were trained with."""

    checkpoint: Path  # a checkpoint folder of a run whose network fits the config
    weights: str  # which of its weights: "ema" or "model"
    tokenizer: Tokenizer  # the vocabulary of those weights (the embedding fits only it)
    record: dict = field(default_factory=dict)  # what the run folder records about the start, RUN/finetune.json

    FILE = "finetune.json"


# ---------------------------------------------------------------------------- set-up
def create_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MaskdiffError(f"cannot create run folder {str(run_dir)!r}: {err.strerror}") from None


def write_run_files(
    run_dir: Path, cfg: RunConfig, tokenizer: Tokenizer, resume: bool, ctx: distributed.Context, start_from: StartFrom | None = None
) -> None:
    """Create the run folder with its config (and tokenizer, for a new run, and where a fine-tuned
    run started from); rank 0 writes."""
    distributed.barrier(ctx)
    if ctx.is_main:
        create_run_dir(run_dir)
        if not resume:
            tokenizer.save(run_dir / "tokenizer.json")
            if start_from is not None:
                (run_dir / StartFrom.FILE).write_text(json.dumps(start_from.record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        cfg.save(run_dir / "config.json")


# ---------------------------------------------------------------------------- logging
class Window:
    """The steps since the last logged row: their good-step losses and their throughput.

    Throughput counts training only: time inside :meth:`set_aside` (logging, evaluation,
    checkpoints) is not. The losses, the good-step count and the longest run of skipped steps
    stay on the device until :meth:`close` reads them.
    """

    def __init__(self, tokens_per_step: int, device: torch.device):
        self.tokens_per_step = tokens_per_step
        self.loss_sum = torch.zeros((), device=device)
        self.good = torch.zeros((), dtype=torch.int64, device=device)
        self.bad_in_a_row = torch.zeros((), dtype=torch.int64, device=device)  # skipped steps up to the last one
        self.most_bad_in_a_row = torch.zeros((), dtype=torch.int64, device=device)  # since the run (re)started
        self.tokens_per_s = 0.0  # of the last closed window
        self._reset()

    def _reset(self) -> None:
        self.start, self.steps, self.aside = time.perf_counter(), 0, 0.0

    def add(self, outcome: StepOutcome) -> None:
        """Count one step; its loss counts only when its update was applied."""
        self.steps += 1
        self.loss_sum += torch.where(outcome.applied, outcome.loss, 0.0)
        self.good += outcome.applied
        self.bad_in_a_row = torch.where(outcome.applied, 0, self.bad_in_a_row + 1)
        torch.maximum(self.most_bad_in_a_row, self.bad_in_a_row, out=self.most_bad_in_a_row)

    @contextlib.contextmanager
    def set_aside(self) -> Iterator[None]:
        """Time spent inside is left out of the throughput."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.aside += time.perf_counter() - start

    def close(self, ctx: distributed.Context) -> float:
        """The mean training loss (nats per token, over processes and good steps); starts a new window."""
        self.tokens_per_s = self.steps * self.tokens_per_step / (time.perf_counter() - self.start - self.aside)
        loss = distributed.mean(self.loss_sum, ctx).item() / max(1, int(self.good))
        self.loss_sum.zero_()
        self.good.zero_()
        self._reset()
        return loss


# ---------------------------------------------------------------------------- the run
def train(
    cfg: RunConfig,
    run_dir: str | Path,
    resume: bool | ResumePlan = False,
    progress: bool = True,
    start_from: StartFrom | None = None,
    header: bool = True,
) -> TrainResult:
    """Train ``cfg`` in ``run_dir`` (or continue the run there with ``resume=True``).

    ``progress``: a progress bar on a terminal, a plain line per logged step in a log (stderr not
    a terminal), and the periodic validation results; ``header``: the line that says what is
    trained (parameters, data, precision), which a log needs even without progress.

    ``resume`` may also be the :class:`~maskdiff.training.resume.ResumePlan` a caller already
    made for this folder and config (the command line's ``--resume auto``, the scaling runner), so
    the folder is judged once. Under ``torchrun`` every process trains on its own rows of each
    batch, with DistributedDataParallel or FSDP2 (``train.parallel``), and evaluation is split
    across the processes; rank 0 writes the run folder. SIGTERM or SIGINT stops the run after a
    checkpoint of the current step (``TrainResult.stopped_by``). ``start_from`` (a new run only;
    fine-tuning) starts the model and its EMA from another run's weights, with that run's
    vocabulary; a resumed run continues from its own checkpoint whatever it started from.
    """
    run_dir = Path(run_dir)
    plan = resume if isinstance(resume, ResumePlan) else plan_resume(run_dir, ResumeMode.YES if resume else ResumeMode.NO, cfg)
    if plan.outcome not in (Outcome.NEW, Outcome.CONTINUE):
        raise MaskdiffError(plan.reason)
    if plan.run_dir != run_dir or plan.config not in (None, cfg):
        raise ValueError(f"the resume plan is for {plan.run_dir} and its config, not for {run_dir} and this one")
    ctx, device = distributed.setup(resolve_device(cfg.train.device))
    try:
        return _train(
            cfg, plan, progress and ctx.is_main, header and ctx.is_main, ctx, device, None if plan.outcome is Outcome.CONTINUE else start_from
        )
    finally:
        distributed.teardown(ctx)


def _train(
    cfg: RunConfig,
    plan: ResumePlan,
    progress: bool,
    header: bool,
    ctx: distributed.Context,
    device: torch.device,
    start_from: StartFrom | None,
) -> TrainResult:
    tc = cfg.train
    precision = resolve_precision(tc.precision, device)

    # set up: read the data, build the state and restore it (the plan has judged the run
    # folder); a failed start writes nothing
    run_dir, resume = plan.run_dir, plan.outcome is Outcome.CONTINUE
    given_tokenizer = load_tokenizer(run_dir / "tokenizer.json") if resume else start_from.tokenizer if start_from else None
    accum = tc.accumulation(ctx.world_size)
    tokenizer, splits = prepare_data(cfg.data, given_tokenizer)
    state = TrainState.create(cfg, tokenizer.vocab_size, splits, device, ctx)
    if start_from is not None:
        state.start_from(start_from.checkpoint, start_from.weights)
    if header:
        print(
            f"maskdiff: run folder {run_dir} | preset {cfg.preset} | {splits.num_tokens('train'):,} training tokens, "
            f"vocabulary {tokenizer.vocab_size} | {state.model.num_parameters():,} parameters | "
            f"{device.type} {'bf16 autocast' if precision else 'fp32'}"
            + (f" | {ctx.world_size} processes ({tc.parallel})" if ctx.active else "")
            + f" | {tc.batch_size * accum * ctx.world_size} sequences per step"
            + (f" ({accum} micro-batches)" if accum > 1 else "")
            + (f" | starting from {start_from.checkpoint} ({start_from.weights} weights)" if start_from is not None else ""),
            flush=True,
        )
    checkpoint = plan.checkpoint
    if checkpoint is not None:
        state.restore(checkpoint, ctx, previous_steps=plan.saved.train.steps if plan.saved else None)
    write_run_files(run_dir, cfg, tokenizer, resume, ctx, start_from)

    trained = training_module(state.model, ddp=ctx.active)
    loss_module = compile_loss(trained) if tc.compile else trained
    valid, valid_masks = evaluation_sequences(splits, "valid", cfg.data.seq_len)  # masks: the responses of prompt/response pairs
    if len(valid) < 2 and ctx.is_main:
        print(
            f"maskdiff: warning: the validation split holds {plural(len(valid), 'sequence')}: too few for an error bar that covers "
            "how sequences differ (use more data or a larger data.valid_fraction)",
            file=sys.stderr,
        )

    def evaluate(count: int | None = None, show: bool = False, draws: int = 1) -> EvalResult:
        masks = None if valid_masks is None else valid_masks[:count]
        # batches of the whole micro-batch (each on one process), so the bound does not depend on the process count
        batch = tc.batch_size * ctx.world_size
        return evaluate_nelbo(
            state.eval_model, valid[:count], batch, draws, seed=tc.seed + 3, precision=precision, progress=show, loss_masks=masks, ctx=ctx
        )

    log = MetricsLog(run_dir, resume_step=state.step) if ctx.is_main else None
    window = Window(tc.batch_size * accum * cfg.data.seq_len * ctx.world_size, device)
    last_bits = float("nan")
    stop = StopRequest()
    try:
        # the loop: one optimizer step, then log, evaluate, checkpoint and stop when due
        with stop, Progress(tc.steps, state.step, progress) as bar:
            while state.step < tc.steps:
                micro_batches = [next(state.batches) for _ in range(accum)]
                outcome = train_step(state, micro_batches, grad_clip=tc.grad_clip, precision=precision, ctx=ctx, model=loss_module)
                window.add(outcome)
                step = state.step
                bar.step()

                if step % tc.log_every == 0 or step == tc.steps:
                    # a non-finite loss or gradient skipped the update; too many in a row stop the run
                    # (read here, with the metrics, so that no step waits for the device)
                    bad_in_a_row = int(window.most_bad_in_a_row)
                    if bad_in_a_row >= tc.max_bad_steps:
                        raise MaskdiffError(
                            f"{plural(bad_in_a_row, 'step')} in a row had a non-finite loss or gradient (up to step {state.step}); "
                            f"stopped. The last good checkpoint is {checkpoint}; lower train.lr or check the data"
                        )
                    train_loss = window.close(ctx)
                    last_bits = train_loss / math.log(2)
                    with window.set_aside():
                        if log is not None:
                            log.log(
                                step,
                                tokens=step * window.tokens_per_step,
                                lr=float(state.scheduler.get_last_lr()[0]),
                                train_loss=train_loss,
                                train_bits=last_bits,
                                grad_norm=float(outcome.grad_norm),
                                tokens_per_s=window.tokens_per_s,
                                skipped_steps=state.skipped_steps,
                            )
                        bar.logged(
                            step, {"loss": f"{train_loss:.3f}", f"bits/{tokenizer.unit}": f"{last_bits:.3f}", "tok/s": f"{window.tokens_per_s:,.0f}"}
                        )

                with window.set_aside():
                    stopping = not distributed.all_agree(stop.requested is None, ctx)
                    if tc.eval_every and step % tc.eval_every == 0 and step < tc.steps and not stopping:
                        result = evaluate(tc.eval_sequences)
                        if log is not None:
                            log.log(step, valid_bits=result.bits_per_token)
                        if progress:
                            bar.write(f"step {step}: validation {result.bits_figure(tokenizer.unit)}")
                    if step % tc.checkpoint_every == 0 or step == tc.steps or stopping:
                        checkpoint = state.save(run_dir, ctx, tc.keep_checkpoints)
                if stopping:
                    break

        checkpoint = latest_checkpoint(run_dir) or checkpoint
        assert checkpoint is not None  # every way out of the loop saved one
        if state.step < tc.steps:  # stopped by a signal, with a checkpoint of this very step
            return TrainResult(run_dir, checkpoint, state.step, last_bits, None, window.tokens_per_s, ctx.is_main, tokenizer.unit, stop.requested)

        # the end: evaluate on the whole validation split, plot, and let the objective describe itself;
        # several draws per sequence, so that the bound agrees with `maskdiff eval` within its error bars
        draws = Estimator(state.eval_model.estimator).draws(tc.final_eval_samples)
        final = evaluate(show=progress and bar.live, draws=draws)
        if log is not None:
            log.log(state.step, valid_bits=final.bits_per_token)
    finally:
        if log is not None:
            log.close()
    if ctx.is_main:
        plot_loss(run_dir / "metrics.csv", run_dir / "loss.png", unit=tokenizer.unit)
        state.eval_model.write_artifacts(run_dir, tokenizer.labels())
    return TrainResult(run_dir, checkpoint, state.step, last_bits, final, window.tokens_per_s, ctx.is_main, tokenizer.unit)

"""The training state: everything a run saves in a checkpoint and restores to continue bit-exactly.

A :class:`TrainState` holds the model, its EMA, the optimizer, the LR schedule, the step count,
the number of skipped (non-finite) steps, the batch stream (the data position), the masking-noise
generator and, implicitly, the process's global torch RNG (dropout and label dropout draw from
it). It is the one thing the trainer saves and restores::

    RUN/checkpoints/step-N/model.safetensors   state.model's weights
                           ema.safetensors     state.ema's weights (when there is an EMA)
                           state.pt            the rest: "step", "optimizer", "scheduler",
                                               "data", "noise_generator", "torch_rng",
                                               "ema_updates", "skipped_steps"

With ``train.parallel=fsdp`` the weights of both and the optimizer state are written sharded,
with torch.distributed.checkpoint (maskdiff/checkpoint.py), and state.pt holds the rest.

Under ``torchrun`` every process draws the same batches and noise (each computes the loss of its
own rows, :class:`maskdiff.objectives.BatchShard`), so a run's numbers do not depend on how
many processes share it; state.pt holds each process's batch stream, noise generator and torch
RNG (dropout) in rank order, and a resume needs the same number of processes.
Checkpoints saved before "skipped_steps" existed resume with a count of 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict, set_model_state_dict, set_optimizer_state_dict

from maskdiff import distributed
from maskdiff.checkpoint import (
    CHECKPOINTS,
    checkpoint_name,
    is_sharded_checkpoint,
    load_checkpoint_weights,
    load_sharded,
    load_state,
    save_checkpoint,
    save_sharded_checkpoint,
)
from maskdiff.config import RunConfig
from maskdiff.data import BatchStream, Splits, training_batches
from maskdiff.errors import MaskdiffError
from maskdiff.hardware import resolve_precision
from maskdiff.models import build_model
from maskdiff.objectives import Objective
from maskdiff.training.ema import EMA
from maskdiff.training.optim import lr_schedule, make_optimizer, make_scheduler
from maskdiff.training.parallel import checkpoint_activations, shard


@dataclass
class TrainState:
    """Model, EMA, optimizer, LR schedule, step, skipped steps, data position and noise of a run.

    Build a fresh one with :meth:`create`; :meth:`save` writes it as a checkpoint and
    :meth:`restore` loads a checkpoint into it. :func:`maskdiff.training.train_step` advances it
    by one optimizer step.
    """

    model: Objective
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batches: BatchStream
    noise: torch.Generator  # the masking noise (times and masks) of the training loss
    device: torch.device
    ema: EMA | None = None
    step: int = 0  # optimizer steps taken, skipped ones included
    sharded: bool = False  # checkpoints written with torch.distributed.checkpoint (train.parallel=fsdp)
    skipped: torch.Tensor = field(init=False)  # [] int64 on the device: steps whose loss or gradient was not finite

    def __post_init__(self) -> None:
        self.skipped = torch.zeros((), dtype=torch.int64, device=self.device)

    @property
    def skipped_steps(self) -> int:
        """Steps whose loss or gradient was not finite (no update); counted on the device, so reading it waits for it."""
        return int(self.skipped)

    @skipped_steps.setter
    def skipped_steps(self, count: int) -> None:
        self.skipped.fill_(count)

    @classmethod
    def create(cls, cfg: RunConfig, vocab_size: int, splits: Splits, device: torch.device, ctx: distributed.Context | None = None) -> TrainState:
        """A fresh state for ``cfg``: every part built from ``cfg.train.seed``.

        The model is initialised from the seed itself; the batch stream and the noise generator
        are seeded ``seed + 1`` and ``seed + 2``. Under ``torchrun`` (``ctx``) each batch holds
        ``batch_size`` sequences per process (every process draws all of them and trains on its
        own rows), and with ``train.parallel=fsdp`` the model and its EMA are sharded
        (:mod:`maskdiff.training.parallel`) before the optimizer is built on the shards.
        """
        tc, ctx = cfg.train, ctx or distributed.Context()
        model = build_model(cfg, vocab_size, seed=tc.seed).to(device)
        ema = EMA(model, tc.ema_decay) if tc.ema_decay else None
        if tc.activation_checkpointing:
            checkpoint_activations(model)
        if tc.parallel == "fsdp" and ctx.active:
            precision = resolve_precision(tc.precision, device)
            for module in (model, *([ema.module] if ema is not None else [])):
                shard(module, precision)
        optimizer = make_optimizer(model, tc)
        scheduler = make_scheduler(optimizer, tc)
        batches = training_batches(splits, cfg, tc.batch_size * ctx.world_size, seed=tc.seed + 1)
        noise = torch.Generator(device=device).manual_seed(tc.seed + 2)
        model.train()
        return cls(model, optimizer, scheduler, batches, noise, device, ema, sharded=tc.parallel == "fsdp")

    def start_from(self, checkpoint: str | Path, which: str) -> None:
        """Load another run's ``which`` ("model" or "ema") weights from one of its checkpoints into the
        model and its EMA: the start of a fine-tuning run."""
        load_checkpoint_weights(self.model, Path(checkpoint), which)
        if self.ema is not None:
            load_checkpoint_weights(self.ema.module, Path(checkpoint), which)

    @property
    def eval_model(self) -> Objective:
        """The weights evaluation and sampling use: the EMA's when there is one."""
        return self.ema.module if self.ema is not None else self.model  # type: ignore[return-value]

    def checkpoint_state(self, ctx: distributed.Context) -> dict:
        """What state.pt holds (everything but the weights).

        Collective under ``torchrun``: every process calls it at the same step, and each gets the
        per-process parts (data position, noise, torch RNG) of all of them, in rank order.
        """
        return {
            "step": self.step,
            # sharded: keyed by parameter names, so that it loads on any number of processes
            "optimizer": get_optimizer_state_dict(self.model, self.optimizer) if self.sharded else self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "data": distributed.gather(self.batches.state_dict(), ctx),
            "noise_generator": distributed.gather(self.noise.get_state(), ctx),
            "torch_rng": distributed.gather(torch.get_rng_state(), ctx),
            "ema_updates": self.ema.updates if self.ema is not None else 0,
            "skipped_steps": self.skipped_steps,
        }

    def sharded_tensors(self, optimizer: dict | None = None) -> dict:
        """What a sharded checkpoint's dcp/ folder holds: the state dicts of the model, the EMA and
        the optimizer (``optimizer``, or this state's own), keyed by parameter names."""
        tensors = {"model": get_model_state_dict(self.model), "optimizer": optimizer or get_optimizer_state_dict(self.model, self.optimizer)}
        if self.ema is not None:
            tensors["ema"] = get_model_state_dict(self.ema.module)
        return tensors

    def save(self, run_dir: str | Path, ctx: distributed.Context, keep: int) -> Path:
        """Write checkpoint ``step`` of ``run_dir`` atomically and keep only the newest ``keep``.

        Collective under ``torchrun``: every process calls it at the same step; rank 0 writes and
        the others wait until it has. Returns the checkpoint folder (on every process).
        """
        state = self.checkpoint_state(ctx)
        if self.sharded:
            return save_sharded_checkpoint(Path(run_dir), self.step, self.sharded_tensors(state.pop("optimizer")), state, keep, ctx)
        checkpoint = Path(run_dir) / CHECKPOINTS / checkpoint_name(self.step)
        if ctx.is_main:
            ema = self.ema.module if self.ema is not None else None
            checkpoint = save_checkpoint(Path(run_dir), self.step, self.model, ema, state, keep)
        distributed.barrier(ctx)
        return checkpoint

    def restore(self, checkpoint: str | Path, ctx: distributed.Context, previous_steps: int | None = None) -> None:
        """Load every part of the state from ``checkpoint`` (a folder written by :meth:`save`).

        The run must resume with as many processes as it was trained with; this process takes
        the data position, noise and torch RNG of its own rank. When this state was created for
        a different ``train.steps`` than the checkpoint's run, the learning-rate decay is
        re-planned from the rate reached, so it continues without a jump; ``previous_steps`` is
        the run's earlier ``train.steps``, needed only for checkpoints that predate saved schedules.
        """
        checkpoint = Path(checkpoint)
        state = load_state(checkpoint)
        saved_world = len(state["data"])
        if saved_world != ctx.world_size:
            raise MaskdiffError(f"the run was trained with {saved_world} process(es); resume it with the same number, not {ctx.world_size}")
        if is_sharded_checkpoint(checkpoint):
            tensors = self.sharded_tensors()
            load_sharded(checkpoint, tensors)
            self.load_sharded_tensors(tensors)
        else:
            load_checkpoint_weights(self.model, checkpoint, "model")
            if self.ema is not None:
                load_checkpoint_weights(self.ema.module, checkpoint, "ema")
            self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            self.ema.updates = state["ema_updates"]
        schedule = lr_schedule(self.scheduler)
        wanted_total = schedule.total
        self.scheduler.load_state_dict(state["scheduler"])  # restores the schedule's plan too
        if state["scheduler"].get("lr_lambdas", [None])[0] is None and previous_steps is not None:
            schedule.total = previous_steps  # a checkpoint from before schedules were saved
        # every process draws the same batches and noise (rank 0's); a checkpoint from before that held one stream each
        self.batches.load_state_dict(state["data"][0])
        self.noise.set_state(state["noise_generator"][0])
        torch.set_rng_state(state["torch_rng"][ctx.rank])
        self.step = state["step"]
        self.skipped_steps = state.get("skipped_steps", 0)
        if schedule.total != wanted_total:
            schedule.replan(self.step, wanted_total)

    def load_sharded_tensors(self, tensors: dict) -> None:
        """Set the model, EMA and optimizer from state dicts filled by :func:`maskdiff.checkpoint.load_sharded`."""
        set_model_state_dict(self.model, tensors["model"])
        if self.ema is not None:
            set_model_state_dict(self.ema.module, tensors["ema"])
        set_optimizer_state_dict(self.model, self.optimizer, tensors["optimizer"])

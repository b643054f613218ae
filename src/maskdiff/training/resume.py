"""The resume policy: what a run folder, a requested config and a resume mode mean together.

:func:`plan_resume` decides it once, and every front asks it: ``maskdiff train`` and ``maskdiff
finetune`` (``--resume``, ``--resume auto``), :func:`maskdiff.training.train` (``resume=True``)
and the scaling runner (every planned run in ``auto`` mode). The answer is a :class:`ResumePlan`:

- *new*: nothing was trained in the folder; a new run starts there;
- *continue*: the run continues from its newest intact checkpoint, with the requested config,
  which may differ from the run's own only in :data:`maskdiff.config.RESUMABLE_KEYS`;
- *finished* (``auto`` only): the newest checkpoint is at or past ``train.steps``: nothing to do;
- *refused*: a one-line reason (a new run over an existing one, nothing to continue, a change
  a resume may not make, a finished run asked to continue).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from maskdiff.checkpoint import checkpoint_step, latest_checkpoint, list_checkpoints
from maskdiff.config import RESUMABLE_KEYS, RunConfig, resume_conflicts
from maskdiff.errors import MaskdiffError

CONFIG_FILE = "config.json"

# the config a caller asks for: a whole one, or one made from the run's own saved config (the
# command line's --set on a continued run); the latter may raise MaskdiffError for a run it refuses
Requested = RunConfig | Callable[[RunConfig], RunConfig]


class ResumeMode(Enum):
    """What the caller asks of the run folder; the values are those of the ``--resume`` flag."""

    NO = "no"  # a new run: a folder that holds one is refused
    YES = "yes"  # continue the run: a folder without a checkpoint, or a finished run, is refused
    AUTO = "auto"  # continue the run if it has a checkpoint, else start it; a finished one has nothing to do


class Outcome(Enum):
    NEW = "new"
    CONTINUE = "continue"
    FINISHED = "finished"
    REFUSED = "refused"


@dataclass(frozen=True)
class ResumePlan:
    """What happens to a run folder: see the module's docstring."""

    outcome: Outcome
    run_dir: Path
    config: RunConfig | None = None  # the config to train with; None for a new run asked for by a function of the saved config
    saved: RunConfig | None = None  # the run's own config.json (continue, finished)
    checkpoint: Path | None = None  # the newest intact checkpoint (continue, finished)
    reason: str = ""  # refused: why; finished: what was done

    @property
    def step(self) -> int:
        """The step training continues from (0 for a new run)."""
        return 0 if self.checkpoint is None else checkpoint_step(self.checkpoint)

    def accepted(self) -> ResumePlan:
        """This plan, unless it is refused: then its reason as a :class:`MaskdiffError`."""
        if self.outcome is Outcome.REFUSED:
            raise MaskdiffError(self.reason)
        return self


def plan_resume(run_dir: str | Path, mode: ResumeMode, requested: Requested, preset: str | None = None) -> ResumePlan:
    """Decide what training in ``run_dir`` with the ``requested`` config in ``mode`` does.

    ``preset``, when the caller named one, must be the continued run's own. The newest checkpoint
    is checked against its checksums (damaged ones are skipped with a warning), so the plan's
    checkpoint is the one training restores.
    """
    run_dir = Path(run_dir)
    has_config = (run_dir / CONFIG_FILE).exists()
    if mode is ResumeMode.NO:
        if latest_checkpoint(run_dir) is not None or has_config:
            return _refused(run_dir, f"{str(run_dir)!r} already holds a run; pass --resume to continue it or choose another --out")
        return ResumePlan(Outcome.NEW, run_dir, requested if isinstance(requested, RunConfig) else None)

    if not list_checkpoints(run_dir):
        if mode is ResumeMode.AUTO and not has_config:
            return ResumePlan(Outcome.NEW, run_dir, requested if isinstance(requested, RunConfig) else None)
        if mode is ResumeMode.AUTO:
            return _refused(run_dir, f"{run_dir} holds a run that stopped before its first checkpoint; remove the folder to start it again")
        missing = "" if has_config else f" and no {CONFIG_FILE} (no run was started there)"
        return _refused(run_dir, f"cannot resume: {str(run_dir)!r} holds no checkpoint{missing}")

    saved = RunConfig.load(run_dir / CONFIG_FILE)
    if preset is not None and preset != saved.preset:
        return _refused(
            run_dir,
            f"{run_dir} holds a run of preset {saved.preset!r}, not {preset!r}: resume it with --preset {saved.preset} "
            "(or no --preset), or start the other preset in another --out",
        )
    config = requested if isinstance(requested, RunConfig) else requested(saved)
    conflicts = resume_conflicts(saved, config)
    if conflicts:
        return _refused(run_dir, conflict_message(conflicts))
    checkpoint = latest_checkpoint(run_dir, verify=True)
    if checkpoint is None:
        return _refused(run_dir, f"cannot resume: every checkpoint in {str(run_dir)!r} is damaged")

    step, steps = checkpoint_step(checkpoint), config.train.steps
    if step < steps:
        return ResumePlan(Outcome.CONTINUE, run_dir, config, saved, checkpoint)
    if mode is ResumeMode.YES:
        return _refused(run_dir, f"the run already finished {step} of train.steps={steps}; raise train.steps to go on")
    done = f"{run_dir} already finished {step} of train.steps={steps} steps; nothing to do"
    return ResumePlan(Outcome.FINISHED, run_dir, config, saved, checkpoint, done)


def _refused(run_dir: Path, reason: str) -> ResumePlan:
    return ResumePlan(Outcome.REFUSED, run_dir, reason=reason)


def conflict_message(conflicts: list[str]) -> str:
    """The one line that refuses changes a resume may not make (``key (V in the run, W asked)`` each)."""
    return (
        f"cannot change on resume: {'; '.join(conflicts)}. A resumed run may change only "
        f"{', '.join(RESUMABLE_KEYS)}; start a new run (another --out) for the rest"
    )


def check_resume_config(run_dir: Path, cfg: RunConfig) -> RunConfig:
    """The run's saved config, after checking that ``cfg`` changes only what a resume may change
    (:data:`maskdiff.config.RESUMABLE_KEYS`); every other difference is refused in one line."""
    saved = RunConfig.load(Path(run_dir) / CONFIG_FILE)
    conflicts = resume_conflicts(saved, cfg)
    if conflicts:
        raise MaskdiffError(conflict_message(conflicts))
    return saved

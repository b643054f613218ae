"""Training: the run loop, one optimizer step, the state that is saved and restored, EMA and stops."""

from maskdiff.training.loop import TrainResult, check_resume_config, train
from maskdiff.training.optim import LRSchedule, lr_factor, make_optimizer, make_scheduler
from maskdiff.training.state import TrainState
from maskdiff.training.step import StepOutcome, train_step

__all__ = [
    "LRSchedule",
    "StepOutcome",
    "TrainResult",
    "check_resume_config",
    "TrainState",
    "lr_factor",
    "make_optimizer",
    "make_scheduler",
    "train",
    "train_step",
]

"""Training: the run loop, one optimizer step, the state that is saved and restored, EMA and stops."""

from maskdiff.training.loop import TrainResult, train
from maskdiff.training.optim import lr_factor, make_optimizer, make_scheduler
from maskdiff.training.state import TrainState
from maskdiff.training.step import StepOutcome, train_step

__all__ = ["StepOutcome", "TrainResult", "TrainState", "lr_factor", "make_optimizer", "make_scheduler", "train", "train_step"]

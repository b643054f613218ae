"""Training: the run loop, one optimizer step, the state that is saved and restored, EMA and stops."""

from maskdiff.training.loop import TrainResult, lr_factor, make_optimizer, train

__all__ = ["TrainResult", "lr_factor", "make_optimizer", "train"]

"""Training: the run loop, the resume policy, one optimizer step, the state that is saved and restored, EMA and stops,
and fine-tuning (a run that starts from another run's weights)."""

from maskdiff.training.finetune import finetune, finetune_config
from maskdiff.training.loop import StartFrom, TrainResult, train
from maskdiff.training.optim import LRSchedule, lr_factor, make_optimizer, make_scheduler
from maskdiff.training.resume import Outcome, ResumeMode, ResumePlan, check_resume_config, plan_resume
from maskdiff.training.state import TrainState
from maskdiff.training.step import StepOutcome, train_step

__all__ = [
    "LRSchedule",
    "Outcome",
    "ResumeMode",
    "ResumePlan",
    "plan_resume",
    "StartFrom",
    "finetune",
    "finetune_config",
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

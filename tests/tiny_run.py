"""A tiny trained run folder for the evaluation tests (a few steps on the synthetic corpus)."""

from pathlib import Path

from maskdiff.presets import get_preset
from maskdiff.training import train


def train_tiny(run_dir: Path, corpus: Path, steps: int = 6, preset: str = "tiny") -> Path:
    """Train a one-layer model of ``preset`` (tiny, ar-tiny, ...) for ``steps`` steps on ``corpus``; returns the run folder."""
    cfg = get_preset(preset).with_overrides(
        [
            f"data.path={corpus}",
            "data.seq_len=32",
            "model.n_layers=1",
            "model.d_model=32",
            "train.batch_size=4",
            f"train.steps={steps}",
            "train.eval_every=0",
            "train.log_every=2",
            "train.precision=fp32",
            "train.warmup_steps=2",
        ]
    )
    train(cfg, run_dir, progress=False)
    return run_dir

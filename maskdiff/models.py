"""Assemble a trainable objective (denoiser + diffusion) from a run config."""

from __future__ import annotations

import torch

from maskdiff.config import RunConfig
from maskdiff.diffusion import MaskedDiffusion
from maskdiff.transformer import Transformer


def build_model(cfg: RunConfig, vocab_size: int, seed: int | None = None) -> MaskedDiffusion:
    """The MD4 model a config describes; parameters are initialised from ``seed`` when given."""
    if seed is not None:
        torch.manual_seed(seed)
    denoiser = Transformer(cfg.model, vocab_size)
    return MaskedDiffusion(denoiser, schedule=cfg.diffusion.schedule, vocab_size=vocab_size)

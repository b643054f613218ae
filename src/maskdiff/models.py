"""Assemble a trainable objective (denoiser + objective) from a run config.

Two independent choices, each looked up in its registry: the network (``model.architecture`` in
:data:`maskdiff.nets.ARCHITECTURES`) and the objective that wraps it (``objective.name`` in
:data:`maskdiff.objectives.OBJECTIVES`).
"""

from __future__ import annotations

import torch
from torch import nn

from maskdiff.config import RunConfig
from maskdiff.errors import MaskdiffError
from maskdiff.nets import ARCHITECTURES
from maskdiff.objectives import OBJECTIVES, Objective


def build_denoiser(cfg: RunConfig, vocab_size: int) -> nn.Module:
    """The network ``(z_t [B, L], t [B]) -> logits [B, L, vocab_size]`` a config describes.

    Image networks (unet, uvit) take the image shape from ``cfg.data`` and accept an optional
    ``labels=`` keyword; they need data whose format declares the image modality.
    """
    name = cfg.model.architecture
    architecture = ARCHITECTURES.get(name)
    if not cfg.data.data_format.fits(architecture.modality):
        raise MaskdiffError(f"model.architecture={name} models images; set data.format to an image format")
    return architecture.build(cfg.model, vocab_size, cfg.data.image_size, cfg.data.channels)


def build_model(cfg: RunConfig, vocab_size: int, seed: int | None = None) -> Objective:
    """The objective a config describes (MD4, GenMD4, ...); parameters are initialised from ``seed`` when given."""
    if seed is not None:
        torch.manual_seed(seed)
    denoiser = build_denoiser(cfg, vocab_size)
    return OBJECTIVES.get(cfg.objective.name).build(cfg.objective, denoiser, vocab_size)

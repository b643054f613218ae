"""Assemble a trainable objective (denoiser + diffusion) from a run config.

Two independent choices: the network (``build_denoiser``, from ``cfg.model``) and the
objective that wraps it (``build_model``, from ``cfg.diffusion``).
"""

from __future__ import annotations

import torch
from torch import nn

from maskdiff.config import RunConfig
from maskdiff.diffusion import DiffusionModel, MaskedDiffusion
from maskdiff.errors import MaskdiffError
from maskdiff.genmd4 import GenMD4
from maskdiff.transformer import Transformer
from maskdiff.unet import UNet
from maskdiff.uvit import UViT


def build_denoiser(cfg: RunConfig, vocab_size: int) -> nn.Module:
    """The network ``(z_t [B, L], t [B]) -> logits [B, L, vocab_size]`` a config describes.

    ``model.architecture``: the transformer models any sequence; the image networks (unet, uvit)
    take the image shape from ``cfg.data`` and accept an optional ``labels=`` keyword.
    """
    arch = cfg.model.architecture
    if arch == "transformer":
        return Transformer(cfg.model, vocab_size)
    if not cfg.data.is_image:
        raise MaskdiffError(f"model.architecture={arch} models images; set data.format to an image format")
    network = {"unet": UNet, "uvit": UViT}[arch]
    return network(cfg.model, vocab_size, cfg.data.image_size, cfg.data.channels)


def build_model(cfg: RunConfig, vocab_size: int, seed: int | None = None) -> DiffusionModel:
    """The diffusion model a config describes (MD4 or GenMD4); parameters are initialised from ``seed`` when given."""
    if seed is not None:
        torch.manual_seed(seed)
    denoiser = build_denoiser(cfg, vocab_size)
    diffusion = cfg.diffusion
    if diffusion.objective == "genmd4":
        return GenMD4(denoiser, vocab_size, power_init=diffusion.power_init, t1=diffusion.t1)
    return MaskedDiffusion(denoiser, schedule=diffusion.schedule, vocab_size=vocab_size)

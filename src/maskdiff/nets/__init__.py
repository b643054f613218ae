"""Denoiser networks ``(z_t [B, L], t [B]) -> logits [B, L, V]`` and their registry.

Each architecture registers its own config section (the run config's ``model`` section is of
that type), the modality it models and how to build it. Adding an architecture is one module
here plus one ``ARCHITECTURES.add`` line below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from maskdiff.nets.transformer import Transformer, TransformerConfig
from maskdiff.nets.unet import UNet, UNetConfig
from maskdiff.nets.uvit import UViT, UViTConfig
from maskdiff.registry import Registry


@dataclass(frozen=True)
class Architecture:
    """What a network contributes: its config section, what it models and how to build it."""

    config: type[Any]  # a Section dataclass with an ``architecture`` field
    modality: str  # "any" (token sequences of any kind) or "image" (needs the image shape)
    build: Callable[..., nn.Module]  # (section, vocab_size, image_size, channels) -> denoiser


ARCHITECTURES: Registry[Architecture] = Registry("model.architecture")
ARCHITECTURES.add("transformer", Architecture(TransformerConfig, "any", lambda cfg, vocab, size, channels: Transformer(cfg, vocab)))
ARCHITECTURES.add("unet", Architecture(UNetConfig, "image", UNet))
ARCHITECTURES.add("uvit", Architecture(UViTConfig, "image", UViT))

__all__ = ["ARCHITECTURES", "Architecture", "Transformer", "TransformerConfig", "UNet", "UNetConfig", "UViT", "UViTConfig"]

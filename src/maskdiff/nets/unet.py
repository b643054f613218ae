"""A U-Net denoiser over the pixel grid in the style MD4 uses for CIFAR-10.

Every sub-pixel token is embedded, the C embeddings of a pixel are concatenated into its
feature vector, and the grid runs through residual blocks at full resolution (no down-sampling),
self-attention in the middle, and a mirrored stack of residual blocks with skip connections.
The condition c (time and/or class label) is added inside every residual block. A final 1x1
convolution gives 256 logits per sub-pixel; it starts at zero, so a fresh model predicts the
uniform distribution (exactly 8 bits/dim).

    (z_t [B, H*W*C], t [B], labels [B] | None) -> logits [B, H*W*C, V]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from maskdiff.nets.image_layers import Condition, ImageNetConfig, SubpixelEmbedding, count_parameters, init_weights
from maskdiff.sections import option


@dataclass
class UNetConfig(ImageNetConfig):
    """The ``model`` section of a U-Net run."""

    architecture: str = option("unet", "denoiser network: transformer (any data), unet or uvit (images; see data.format)")
    n_layers: int = option(2, "residual blocks on each side of the middle (all at full resolution)")
    d_model: int = option(32, "channels of every residual block")
    n_heads: int = option(1, "attention heads of the self-attention in the middle; d_model must be a multiple of 2 * n_heads")


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


class ResBlock(nn.Module):
    """norm-SiLU-conv, + condition, norm-SiLU-dropout-conv, with a residual connection."""

    def __init__(self, in_channels: int, channels: int, cond_width: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = group_norm(in_channels), nn.Conv2d(in_channels, channels, 3, padding=1)
        self.cond = nn.Linear(cond_width, channels) if cond_width else None
        self.norm2, self.conv2 = group_norm(channels), nn.Conv2d(channels, channels, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(in_channels, channels, 1) if in_channels != channels else nn.Identity()

    def forward(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.cond is not None:
            h = h + self.cond(c)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all H*W positions, residual."""

    def __init__(self, channels: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).view(B, 3, self.n_heads, C // self.n_heads, H * W).transpose(-1, -2).unbind(1)
        y = F.scaled_dot_product_attention(q, k, v)  # [B, heads, HW, C/heads]
        return x + self.out(y.transpose(-1, -2).reshape(B, C, H, W))


class UNet(nn.Module):
    """The image denoiser; ``d_model`` channels, ``n_layers`` residual blocks before and after the middle."""

    def __init__(self, cfg: UNetConfig, vocab_size: int, image_size: int, channels: int):
        super().__init__()
        self.cfg, self.vocab_size, self.image_size, self.channels = cfg, vocab_size, image_size, channels
        width = cfg.d_model
        self.embed = SubpixelEmbedding(vocab_size, cfg.pixel_features, image_size, channels)
        self.condition = Condition(cfg, width)
        cond_width = width if self.condition.enabled else 0
        self.conv_in = nn.Conv2d(channels * cfg.pixel_features, width, 3, padding=1)
        self.down = nn.ModuleList(ResBlock(width, width, cond_width, cfg.dropout) for _ in range(cfg.n_layers))
        self.mid1 = ResBlock(width, width, cond_width, cfg.dropout)
        self.attn = AttentionBlock(width, cfg.n_heads)
        self.mid2 = ResBlock(width, width, cond_width, cfg.dropout)
        self.up = nn.ModuleList(ResBlock(2 * width, width, cond_width, cfg.dropout) for _ in range(cfg.n_layers))
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, channels * vocab_size, 1)
        # residual branches start at zero: every block begins as the identity
        init_weights(self, [self.conv_out, self.attn.out, *(cast(ResBlock, b).conv2 for b in (*self.down, self.mid1, self.mid2, *self.up))])

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """z_t [B, H*W*C] ids in 0..V (V = mask), t [B], labels [B] or None -> logits [B, H*W*C, V]."""
        B, S, C = z_t.shape[0], self.image_size, self.channels
        x = self.embed(z_t).permute(0, 3, 1, 2)  # [B, C*features, H, W]
        c = self.condition(t, labels)
        h = self.conv_in(x)
        skips = []
        for block in self.down:
            h = block(h, c)
            skips.append(h)
        h = self.mid2(self.attn(self.mid1(h, c)), c)
        for block in self.up:
            h = block(torch.cat([h, skips.pop()], dim=1), c)
        logits = self.conv_out(F.silu(self.norm_out(h)))  # [B, C*V, H, W]
        return logits.view(B, C, self.vocab_size, S, S).permute(0, 3, 4, 1, 2).reshape(B, S * S * C, self.vocab_size)

    def num_parameters(self, non_embedding: bool = True) -> int:
        return count_parameters(self, self.embed) if non_embedding else sum(p.numel() for p in self.parameters())

"""A U-ViT / DiT-style denoiser for larger images (MD4's ImageNet 64x64 network is of this kind).

Sub-pixel tokens are embedded, every ``patch_size`` x ``patch_size`` patch becomes one
transformer token (its pixel features concatenated and projected), and maskdiff's transformer
blocks (adaLN-Zero conditioning on t and/or the class label) run over the patch sequence with
learned and rotary positions and U-ViT's long skips from the first half of the blocks to the
second. A linear head gives 256 logits for every sub-pixel of a patch; it starts at zero.

    (z_t [B, H*W*C], t [B], labels [B] | None) -> logits [B, H*W*C, V]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from maskdiff.errors import MaskdiffError
from maskdiff.nets.image_layers import Condition, ImageNetConfig, SubpixelEmbedding, count_parameters, init_weights
from maskdiff.nets.transformer import Block, modulate, rotary_tables
from maskdiff.sections import option


@dataclass
class UViTConfig(ImageNetConfig):
    """The ``model`` section of a U-ViT run."""

    architecture: str = option("uvit", "denoiser network: transformer (any data), unet or uvit (images; see data.format)")
    n_layers: int = option(4, "transformer blocks over the patch sequence (the first half feeds long skips to the second)")
    d_model: int = option(128, "width of the transformer over patches")
    n_heads: int = option(4, "attention heads; d_model must be a multiple of 2 * n_heads")
    mlp_ratio: int = option(4, "hidden width of the MLP as a multiple of d_model")
    patch_size: int = option(4, "side of the square patches that become transformer tokens")
    rope_base: float = option(10_000.0, "base of the rotary position embedding frequencies")

    def problems(self) -> list[str]:
        out = super().problems()
        if self.mlp_ratio < 1 or self.patch_size < 1:
            out.append("model.mlp_ratio and model.patch_size must be >= 1")
        if self.rope_base <= 1:
            out.append("model.rope_base must be > 1")
        return out


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """Pixel features [B, H, W, F] -> one row per patch in raster order [B, (H/p)*(W/p), p*p*F]."""
    B, H, W, F = x.shape
    x = x.view(B, H // patch, patch, W // patch, patch, F).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, (H // patch) * (W // patch), patch * patch * F)


def unpatchify(x: torch.Tensor, patch: int, height: int) -> torch.Tensor:
    """The inverse of :func:`patchify`: [B, (H/p)*(W/p), p*p*F] -> [B, H, W, F]."""
    B, n, D = x.shape
    rows, F = height // patch, D // (patch * patch)
    cols = n // rows
    x = x.view(B, rows, cols, patch, patch, F).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, rows * patch, cols * patch, F)


class UViT(nn.Module):
    """Patchified transformer over the image; ``n_layers`` blocks of width ``d_model``."""

    def __init__(self, cfg: UViTConfig, vocab_size: int, image_size: int, channels: int):
        super().__init__()
        if image_size % cfg.patch_size:
            raise MaskdiffError(f"data.image_size ({image_size}) must be a multiple of model.patch_size ({cfg.patch_size})")
        self.cfg, self.vocab_size, self.image_size, self.channels = cfg, vocab_size, image_size, channels
        p, width = cfg.patch_size, cfg.d_model
        self.grid = image_size // p
        self.embed = SubpixelEmbedding(vocab_size, cfg.pixel_features, image_size, channels)
        self.patch_in = nn.Linear(p * p * channels * cfg.pixel_features, width)
        self.position = nn.Parameter(torch.zeros(1, self.grid * self.grid, width))
        self.condition = Condition(cfg, width)
        conditioned = self.condition.enabled
        self.blocks = nn.ModuleList(Block(width, cfg.n_heads, cfg.mlp_ratio, cfg.dropout, conditioned) for _ in range(cfg.n_layers))
        self.skips = nn.ModuleList(nn.Linear(2 * width, width) for _ in range(cfg.n_layers // 2))
        self.norm = nn.LayerNorm(width, elementwise_affine=not conditioned)
        self.final_modulation = nn.Linear(width, 2 * width) if conditioned else None
        self.head = nn.Linear(width, p * p * channels * vocab_size)
        init_weights(self, [self.head, self.final_modulation, *(cast(Block, b).modulation for b in self.blocks)])
        nn.init.normal_(self.position, std=0.02)
        cos, sin = rotary_tables(self.grid * self.grid, width // cfg.n_heads, cfg.rope_base, "cpu")
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """z_t [B, H*W*C] ids in 0..V (V = mask), t [B], labels [B] or None -> logits [B, H*W*C, V]."""
        B, p = z_t.shape[0], self.cfg.patch_size
        x = self.patch_in(patchify(self.embed(z_t), p)) + self.position  # [B, patches, D]
        c = self.condition(t, labels)
        half, stored = len(self.skips), list[torch.Tensor]()
        for i, block in enumerate(self.blocks):
            if i >= len(self.blocks) - half:  # second half: U-ViT long skip from the mirrored block
                x = self.skips[len(self.blocks) - 1 - i](torch.cat([x, stored.pop()], dim=-1))
            x = block(x, self.cos, self.sin, c)
            if i < half:
                stored.append(x)
        x = self.norm(x)
        if self.final_modulation is not None:
            x = modulate(x, *self.final_modulation(c).chunk(2, dim=-1))
        # head: p*p*C*V values per patch -> [B, H, W, C*V] -> one row of V logits per sub-pixel
        return unpatchify(self.head(x), p, self.image_size).reshape(B, -1, self.vocab_size)

    def num_parameters(self, non_embedding: bool = True) -> int:
        return count_parameters(self, self.embed) if non_embedding else sum(p.numel() for p in self.parameters())

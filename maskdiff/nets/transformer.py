"""A bidirectional transformer denoiser: (z_t [B, L], t [B]) -> logits [B, L, V].

Pre-norm blocks with rotary position embeddings and ``scaled_dot_product_attention``.
With ``time_conditioning`` every norm is modulated by an embedding of t (adaLN-Zero, as in
DiT/MDLM); without it the network ignores t, which is exact for masked diffusion (the true
posterior of a masked token does not depend on t) and lets samplers reuse predictions.
The output layer starts at zero, so a fresh model predicts the uniform distribution.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from maskdiff.sections import Section, at_least_one, option


@dataclass
class TransformerConfig(Section):
    """The ``model`` section of a transformer run (any token sequence)."""

    architecture: str = option("transformer", "denoiser network: transformer (any data), unet or uvit (images; see data.format)")
    n_layers: int = option(4, "number of transformer blocks")
    d_model: int = option(128, "width of the residual stream")
    n_heads: int = option(4, "attention heads; d_model must be a multiple of 2 * n_heads")
    mlp_ratio: int = option(4, "hidden width of the MLP as a multiple of d_model")
    time_conditioning: bool = option(False, "condition every block on t with adaLN-Zero (off: the network ignores t)")
    time_features: int = option(256, "size of the sinusoidal embedding of t (with time_conditioning)")
    dropout: float = option(0.0, "dropout probability in attention and MLP")
    rope_base: float = option(10_000.0, "base of the rotary position embedding frequencies")

    def problems(self) -> list[str]:
        out = at_least_one(self, "model", ("n_layers", "d_model", "n_heads", "mlp_ratio", "time_features"))
        out += head_problems(self.d_model, self.n_heads)
        if not 0 <= self.dropout < 1:
            out.append("model.dropout must be in [0, 1)")
        if self.rope_base <= 1:
            out.append("model.rope_base must be > 1")
        return out


def head_problems(d_model: int, n_heads: int) -> list[str]:
    """Rotary embeddings rotate channel pairs, so every head needs an even width."""
    if n_heads >= 1 and d_model % (2 * n_heads):
        return [f"model.d_model ({d_model}) must be a multiple of 2 * model.n_heads ({2 * n_heads})"]
    return []


def rotary_tables(length: int, head_dim: int, base: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables for rotary embeddings.  -> two [length, head_dim/2] tensors"""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (first half, second half) of x [B, H, L, D] by position-dependent angles."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1] (scaled by 1000 as in DDPM/DiT).  [B] -> [B, dim]"""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat((args.cos(), args.sin()), dim=-1)


def zero_init(modules: Iterable[nn.Module | None]) -> None:
    """Set every parameter of these layers (weights and biases) to zero; None entries are skipped."""
    for module in modules:
        if module is not None:
            for parameter in module.parameters(recurse=False):
                nn.init.zeros_(parameter)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x [B, L, D] * (1 + scale [B, D]) + shift [B, D]."""
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, L, D))


class MLP(nn.Module):
    def __init__(self, d_model: int, mlp_ratio: int, dropout: float):
        super().__init__()
        hidden = mlp_ratio * d_model
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.gelu(self.up(x))))


class Block(nn.Module):
    """Pre-norm attention + MLP; with a condition c [B, D], adaLN-Zero shifts, scales and gates both."""

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: int, dropout: float, conditioned: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model, elementwise_affine=not conditioned)
        self.attn = Attention(d_model, n_heads, dropout)
        self.norm2 = nn.LayerNorm(d_model, elementwise_affine=not conditioned)
        self.mlp = MLP(d_model, mlp_ratio, dropout)
        self.modulation = nn.Linear(d_model, 6 * d_model) if conditioned else None

    def forward(self, x, cos, sin, c=None):
        if self.modulation is None:
            x = x + self.attn(self.norm1(x), cos, sin)
            return x + self.mlp(self.norm2(x))
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c).chunk(6, dim=-1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1), cos, sin)
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class Transformer(nn.Module):
    """The denoiser network. ``vocab_size`` is V: V+1 input embeddings (mask id V), V output logits."""

    def __init__(self, cfg: TransformerConfig, vocab_size: int):
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        self.embed = nn.Embedding(vocab_size + 1, cfg.d_model)
        self.time_embed = (
            nn.Sequential(nn.Linear(cfg.time_features, cfg.d_model), nn.SiLU(), nn.Linear(cfg.d_model, cfg.d_model), nn.SiLU())
            if cfg.time_conditioning
            else None
        )
        self.blocks = nn.ModuleList(Block(cfg.d_model, cfg.n_heads, cfg.mlp_ratio, cfg.dropout, cfg.time_conditioning) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model, elementwise_affine=not cfg.time_conditioning)
        self.final_modulation = nn.Linear(cfg.d_model, 2 * cfg.d_model) if cfg.time_conditioning else None
        self.head = nn.Linear(cfg.d_model, vocab_size)
        self._rotary_cache: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = 0.02
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                # residual projections are scaled down with depth (GPT-2)
                scale = 1 / math.sqrt(2 * self.cfg.n_layers) if name.endswith(("attn.out", "mlp.down")) else 1.0
                nn.init.normal_(module.weight, std=std * scale)
                bias = getattr(module, "bias", None)
                if bias is not None:
                    nn.init.zeros_(bias)
        zero_init([self.head, *self.modulations(), self.final_modulation])

    def modulations(self) -> list[nn.Module | None]:
        """The adaLN layers of the blocks (None without time conditioning)."""
        return [cast(Block, block).modulation for block in self.blocks]

    def rotary(self, length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (length, device)
        if key not in self._rotary_cache:
            self._rotary_cache[key] = rotary_tables(length, self.cfg.d_model // self.cfg.n_heads, self.cfg.rope_base, device)
        return self._rotary_cache[key]

    def forward(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """z_t [B, L] ids in 0..V (V = mask), t [B] -> logits [B, L, V]."""
        x = self.embed(z_t)
        cos, sin = self.rotary(z_t.shape[1], z_t.device)
        c = self.time_embed(timestep_features(t, self.cfg.time_features)) if self.time_embed is not None else None
        for block in self.blocks:
            x = block(x, cos, sin, c)
        x = self.norm(x)
        if self.final_modulation is not None:
            shift, scale = self.final_modulation(c).chunk(2, dim=-1)
            x = modulate(x, shift, scale)
        return self.head(x)

    def num_parameters(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if non_embedding else n

    def flops_per_token(self, length: int) -> float:
        """Training FLOPs per token (forward + backward) at sequence length ``length``.

        6 per weight that touches every token, plus the attention scores (12 n_layers L d); the
        time-conditioning weights run once per sequence, so they count 1/L per token.
        """
        per_sequence = [self.time_embed, self.final_modulation, *self.modulations()]
        n_sequence = sum(p.numel() for m in per_sequence if m is not None for p in m.parameters())
        n_token = self.num_parameters() - n_sequence
        return 6 * (n_token + n_sequence / length) + 12 * self.cfg.n_layers * length * self.cfg.d_model

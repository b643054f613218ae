"""What image denoisers share: sub-pixel token embeddings and the condition vector from t and a class label.

A class-conditional network has ``num_classes + 1`` label embeddings; the last one is the
"null" label, used for unconditional predictions (classifier-free guidance) and wherever no
label is given (``labels=None`` or a negative label). In training, labels are replaced by the
null label with probability ``label_dropout``, so one network learns both.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from maskdiff.errors import MaskdiffError
from maskdiff.nets.transformer import head_problems, timestep_features, zero_init
from maskdiff.sections import Section, at_least_one, option


@dataclass
class ImageNetConfig(Section):
    """Fields every image denoiser has; :class:`maskdiff.nets.unet.UNetConfig` and
    :class:`maskdiff.nets.uvit.UViTConfig` add their own shape."""

    architecture: str = option("unet", "denoiser network: transformer (any data), unet or uvit (images; see data.format)")
    n_layers: int = option(2, "network depth (see the architecture's own doc)")
    d_model: int = option(32, "network width (see the architecture's own doc)")
    n_heads: int = option(1, "attention heads; d_model must be a multiple of 2 * n_heads")
    pixel_features: int = option(32, "embedding size of each sub-pixel token before the first layer")
    time_conditioning: bool = option(False, "condition the network on t (off: the network ignores t)")
    time_features: int = option(256, "size of the sinusoidal embedding of t (with time_conditioning)")
    dropout: float = option(0.0, "dropout probability")
    num_classes: int = option(0, "number of class labels to condition on (0: unconditional)")
    label_dropout: float = option(0.1, "with num_classes: probability of training on the null label (for guidance)")

    def problems(self) -> list[str]:
        out = at_least_one(self, "model", ("n_layers", "d_model", "n_heads", "pixel_features", "time_features"))
        out += head_problems(self.d_model, self.n_heads)
        if self.num_classes < 0:
            out.append("model.num_classes must be >= 0")
        if not 0 <= self.label_dropout < 1:
            out.append("model.label_dropout must be in [0, 1)")
        if not 0 <= self.dropout < 1:
            out.append("model.dropout must be in [0, 1)")
        return out


class Condition(nn.Module):
    """c [B, width] = MLP(sinusoidal features of t) + label embedding; None when neither is on."""

    def __init__(self, cfg: ImageNetConfig, width: int):
        super().__init__()
        self.time_features, self.num_classes, self.label_dropout = cfg.time_features, cfg.num_classes, cfg.label_dropout
        self.time = nn.Sequential(nn.Linear(cfg.time_features, width), nn.SiLU(), nn.Linear(width, width)) if cfg.time_conditioning else None
        self.labels = nn.Embedding(cfg.num_classes + 1, width) if cfg.num_classes else None

    @property
    def enabled(self) -> bool:
        return self.time is not None or self.labels is not None

    @property
    def null_label(self) -> int:
        return self.num_classes

    def forward(self, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor | None:
        """t [B] in [0, 1], labels [B] (negative or None: the null label).  -> [B, width] or None"""
        c = None
        if self.time is not None:
            c = self.time(timestep_features(t, self.time_features))
        if self.labels is not None:
            null = torch.full_like(t, self.null_label, dtype=torch.long)
            if labels is None:
                labels = null
            else:
                if labels.shape != t.shape:
                    raise MaskdiffError(f"labels have shape {tuple(labels.shape)}, expected {tuple(t.shape)}")
                if int(labels.max()) >= self.num_classes + 1:
                    raise MaskdiffError(f"label {int(labels.max())} is out of range: the model has {self.num_classes} classes")
                labels = torch.where(labels < 0, null, labels)
            if self.training and self.label_dropout > 0:
                labels = torch.where(torch.rand(labels.shape, device=labels.device) < self.label_dropout, null, labels)
            emb = self.labels(labels)
            c = emb if c is None else c + emb
        return c


class SubpixelEmbedding(nn.Module):
    """Token ids [B, H*W*C] (mask id = vocab_size) -> features [B, H, W, C * features]."""

    def __init__(self, vocab_size: int, features: int, image_size: int, channels: int):
        super().__init__()
        self.image_size, self.channels = image_size, channels
        self.embed = nn.Embedding(vocab_size + 1, features)

    @property
    def length(self) -> int:
        return self.image_size * self.image_size * self.channels

    def forward(self, z_t: torch.Tensor) -> torch.Tensor:
        if z_t.shape[1] != self.length:
            raise MaskdiffError(
                f"the network models {self.image_size}x{self.image_size}x{self.channels} images "
                f"({self.length} tokens), got sequences of {z_t.shape[1]}"
            )
        B, S = z_t.shape[0], self.image_size
        return self.embed(z_t).view(B, S, S, -1)


def init_weights(module: nn.Module, zero: Iterable[nn.Module | None]) -> None:
    """Normal(0, 0.02) linear/conv/embedding weights and zero biases; ``zero`` modules start at zero
    (the output layer, so a fresh network predicts the uniform distribution)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            bias = getattr(m, "bias", None)
            if bias is not None:
                nn.init.zeros_(bias)
    zero_init(zero)


def count_parameters(module: nn.Module, embedding: nn.Module) -> int:
    """Parameters outside the input embedding (as Transformer.num_parameters counts them)."""
    return sum(p.numel() for p in module.parameters()) - sum(p.numel() for p in embedding.parameters())

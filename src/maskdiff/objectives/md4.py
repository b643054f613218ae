"""MD4: masked diffusion with one masking schedule for every token (docs/method.md).

continuous:  NELBO = E_t[ w(t) * sum_{masked i} -log mu(z_t, t)_i[x_i] ],  w = -alpha'/(1-alpha)
discrete T:  NELBO = E_i[ T * (alpha_s - alpha_t)/(1 - alpha_t) * sum_{masked i} CE ], t = i/T, s = t - 1/T
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from maskdiff import schedules
from maskdiff.errors import MaskdiffError
from maskdiff.objectives.base import Denoiser, DiffusionModel, ObjectiveSection, discrete_grid_previous, masked_cross_entropy, objective_name
from maskdiff.schedules import ScheduleLike, resolve
from maskdiff.sections import option


@dataclass
class MD4Config(ObjectiveSection):
    """``objective.name=md4``: one masking schedule for every token."""

    name: str = objective_name("md4")

    schedule: str = option("linear", "masking schedule alpha(t): linear, cosine, polyK (e.g. poly2), geometric, loglinear")

    def problems(self) -> list[str]:
        try:
            schedules.get(self.schedule)
        except MaskdiffError as err:
            return [f"objective.schedule: {err}"]
        return []


class MaskedDiffusion(DiffusionModel):
    """MD4: a denoiser plus a masking schedule, giving the NELBO and an ancestral sampler.

    Args:
        denoiser: callable ``(z_t, t) -> logits [B, L, vocab_size]``; registered as a submodule
            when it is an ``nn.Module`` so its parameters train with this object.
        schedule: a schedule name (see :func:`maskdiff.schedules.get`) or any object with
            ``alpha(t)`` and ``dalpha(t)``.
        vocab_size: V; token ids are 0..V-1 and the mask id is V.
    """

    def __init__(self, denoiser: Denoiser, schedule: str | ScheduleLike = "linear", vocab_size: int | None = None):
        super().__init__(denoiser, vocab_size)
        self.schedule = resolve(schedule)

    # ----------------------------------------------------------------- the bound
    def loss_from_logits(
        self,
        logits: torch.Tensor,
        x0: torch.Tensor,
        z_t: torch.Tensor,
        t: torch.Tensor,
        timesteps: int | None = None,
    ) -> torch.Tensor:
        """The one-sample NELBO (nats per sequence) for given logits [B,L,V], x0, z_t [B,L] and t [B].

        Deterministic: continuous time weights the masked cross-entropy by -alpha'(t)/(1-alpha(t));
        with ``timesteps=T`` t must lie on the grid i/T and the weight is T (alpha_s - alpha_t)/(1 - alpha_t).
        """
        masked = z_t == self.mask_id
        ce = masked_cross_entropy(logits, x0, masked)
        weight = self._weight(t, timesteps)
        return weight.to(ce.dtype) * ce

    def _weight(self, t: torch.Tensor, timesteps: int | None) -> torch.Tensor:
        alpha_t = self.schedule.alpha(t)
        if timesteps is None:
            return -self.schedule.dalpha(t) / (1 - alpha_t)
        alpha_s = self.schedule.alpha(discrete_grid_previous(t, timesteps))
        return timesteps * (alpha_s - alpha_t) / (1 - alpha_t)

    def keep_probability(self, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """alpha(t): every token survives to t with the same chance.  -> [B]"""
        return self.schedule.alpha(t)

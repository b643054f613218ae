"""The MD4 masked-diffusion objective: forward masking and the continuous/discrete-time NELBO.

Notation (DESIGN.md section 1): x0 holds token ids in 0..V-1, the mask id is V, z_t is x0 with
each token independently replaced by the mask with probability 1 - alpha(t). The denoiser is
any callable ``(z_t [B, L], t [B]) -> logits [B, L, V]``; it never predicts the mask.

    continuous:  NELBO = E_t[ w(t) * sum_{masked i} -log mu(z_t, t)_i[x_i] ],  w = -alpha'/(1-alpha)
    discrete T:  NELBO = E_i[ T * (alpha_s - alpha_t)/(1 - alpha_t) * sum_{masked i} CE ], t = i/T, s = t - 1/T
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from maskdiff.errors import MaskdiffError
from maskdiff.schedules import ScheduleLike, resolve

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def uniform_draws(shape, generator: torch.Generator | None, device, dtype=torch.float32) -> torch.Tensor:
    """U(0, 1) draws from ``generator`` (on the generator's own device), moved to ``device``."""
    source = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=source, dtype=dtype).to(device)


def stratified_times(batch: int, generator: torch.Generator | None, device, dtype=torch.float32) -> torch.Tensor:
    """t_b = (u + b/B) mod 1 for one shared u ~ U(0,1): a low-variance cover of [0, 1).  -> [B]"""
    u = uniform_draws((1,), generator, device, dtype)
    return (u + torch.arange(batch, device=device, dtype=dtype) / batch) % 1.0


def stratified_grid_times(batch: int, device, timesteps: int | None, generator: torch.Generator | None) -> torch.Tensor:
    """Stratified times in [0, 1); moved up to the grid {1/T, ..., 1} when ``timesteps=T``.  -> [B]"""
    t = stratified_times(batch, generator, device)
    if timesteps is not None:
        t = (torch.floor(t * timesteps) + 1) / timesteps
    return t


def mask_tokens(x0: torch.Tensor, alpha_t: torch.Tensor, mask_id: int, generator: torch.Generator | None) -> torch.Tensor:
    """Forward process q(z_t | x0): keep each token with probability alpha_t ([B], or [B, L] per token), else mask.  -> [B, L]"""
    keep = uniform_draws(x0.shape, generator, x0.device, alpha_t.dtype) < (alpha_t[:, None] if alpha_t.ndim == 1 else alpha_t)
    return torch.where(keep, x0, torch.full_like(x0, mask_id))


def discrete_grid_previous(t: torch.Tensor, timesteps: int) -> torch.Tensor:
    """For t on the grid i/T, the previous grid point s = (i - 1)/T."""
    i = torch.round(t * timesteps)
    return (i - 1) / timesteps


def masked_cross_entropy(logits: torch.Tensor, x0: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """sum over masked positions of -log softmax(logits)[x0], computed in float32.  -> [B]"""
    vocab = logits.shape[-1]
    ce = F.cross_entropy(logits.float().reshape(-1, vocab), x0.reshape(-1), reduction="none")
    return (ce.view(x0.shape) * masked).sum(dim=-1)


class DiffusionModel(nn.Module):
    """What every masked-diffusion objective shares: a denoiser, the mask id, forward() and sample().

    Subclasses give ``schedule``, ``nelbo``, ``loss_from_logits`` and ``train_loss``.
    """

    def __init__(self, denoiser: Denoiser, vocab_size: int | None):
        super().__init__()
        if vocab_size is None or vocab_size < 1:
            raise MaskdiffError(f"{type(self).__name__} needs vocab_size >= 1")
        self.denoiser = denoiser
        self.vocab_size = vocab_size
        self.mask_id = vocab_size

    def forward(self, x0: torch.Tensor, generator: torch.Generator | None = None, **conditioning) -> torch.Tensor:
        """The training loss, so that wrappers such as DistributedDataParallel see it as forward()."""
        return self.train_loss(x0, generator=generator, **conditioning)

    def predict(self, z_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The denoiser's logits; class ``labels`` [B] go to class-conditional denoisers as ``labels=``."""
        return self.denoiser(z_t, t) if labels is None else self.denoiser(z_t, t, labels=labels)

    def sample(
        self,
        num_samples: int,
        length: int,
        steps: int,
        method: str = "ancestral",
        given: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        **rule_options,
    ) -> torch.Tensor:
        """Draw ``num_samples`` sequences of ``length`` tokens with ``steps`` reverse steps.  -> [N, L]

        ``method`` is a rule of :mod:`maskdiff.sampling` (ancestral, mean, low_confidence,
        random, threshold); ``given`` [N, L] fixes every position that is not the mask id
        (prompts, infilling); ``rule_options`` are fields of :class:`maskdiff.sampling.SamplerOptions`
        (temperature, top_k, top_p, grid, block_size, cfg, ...).
        """
        from maskdiff.sampling import sample as run_sampler

        return run_sampler(self, num_samples, length, steps, given=given, generator=generator, method=method, **rule_options)


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

    def draw_times(self, batch: int, device, timesteps: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Stratified t across the batch; on the grid {1/T, ..., 1} when ``timesteps=T``.  -> [B]"""
        return stratified_grid_times(batch, device, timesteps, generator)

    def nelbo(
        self, x0: torch.Tensor, timesteps: int | None = None, generator: torch.Generator | None = None, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One-sample NELBO estimate in nats per sequence [B], t stratified across the batch.

        ``timesteps=T`` gives the discrete-time bound with T steps (looser; tends to the
        continuous one as T grows). ``labels`` [B] (class-conditional denoisers only) are passed
        to the denoiser as ``labels=``.
        """
        if timesteps is not None and timesteps < 1:
            raise MaskdiffError(f"timesteps must be >= 1, got {timesteps}")
        t = self.draw_times(x0.shape[0], x0.device, timesteps, generator)
        z_t = mask_tokens(x0, self.schedule.alpha(t), self.mask_id, generator)
        return self.loss_from_logits(self.predict(z_t, t, labels), x0, z_t, t, timesteps)

    def train_loss(self, x0: torch.Tensor, generator: torch.Generator | None = None, **conditioning) -> torch.Tensor:
        """What the trainer minimises, in nats per sequence [B]: for MD4 the NELBO itself."""
        return self.nelbo(x0, generator=generator, **conditioning)

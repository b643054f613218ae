"""GenMD4: masked diffusion with a learned masking schedule for every token value.

A token of value v is kept at time t with probability

    alpha_v(t) = (1 - 2 eps)(1 - t^{w_v}) + eps,     w = softplus(raw_w) > 0, one exponent per value,

so how fast a token is masked depends on what it is. With r_v(t) = -alpha_v'(t) / (1 - alpha_v(t))
and mu_i the denoiser's probabilities at a masked position i, the bound (MD4 paper, eq. 12) is

    NELBO = int_{t1}^1 E_z[ sum_{masked i} r_{x_i} (-log mu_i[x_i]) + (r . mu_i - r_{x_i}) ] dt
            + reconstruction(t1) + prior(1).

When all w_v are equal r . mu = r_x and it is MD4's bound with the polyK schedule. Below t1 the
integral is replaced by a closed-form reconstruction term: a masked token at t1 is decoded from
c_v proportional to 1 - alpha_v(t1), the chance that value v is masked there (no network call).

The masks depend on w, so the gradient for w has a score-function part. ``train_loss`` draws two
maskings at the same t and uses the leave-one-out (RLOO) estimator
0.5 (l1 - l2) grad(log q(z1) - log q(z2)); its value is the bound itself, so the trainer logs the
true NELBO while descending the surrogate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from maskdiff.errors import MaskdiffError
from maskdiff.objectives.base import (
    BatchShard,
    Denoiser,
    DiffusionModel,
    ObjectiveSection,
    mask_tokens,
    objective_name,
    stratified_grid_times,
    sum_scored,
)
from maskdiff.plots import write_token_powers
from maskdiff.schedules import EPS, Schedule
from maskdiff.sections import option


@dataclass
class GenMD4Config(ObjectiveSection):
    """``objective.name=genmd4``: a learned schedule 1 - t^w per token value."""

    name: str = objective_name("genmd4")
    power_init: float = option(1.0, "initial exponent w of every token's schedule 1 - t^w (1: linear)")
    t1: float = option(1e-3, "smallest time of the integral; a closed-form reconstruction term covers [0, t1]")

    def problems(self) -> list[str]:
        out = []
        if not self.power_init > 0:
            out.append("objective.power_init must be > 0")
        if not 0 <= self.t1 < 1:
            out.append("objective.t1 must be in [0, 1)")
        return out


class TokenPowerSchedule(Schedule):
    """alpha_v(t) = (1 - 2 eps)(1 - t^{w_v}) + eps for every token value v: t [...] -> [..., V]."""

    name = "token-power"

    def __init__(self, power: torch.Tensor, eps: float = EPS):
        super().__init__(eps)
        self.power = power  # [V]

    def abar(self, t: torch.Tensor) -> torch.Tensor:
        return 1 - t.unsqueeze(-1) ** self.power

    def dabar(self, t: torch.Tensor) -> torch.Tensor:
        return -self.power * t.unsqueeze(-1) ** (self.power - 1)


def inverse_softplus(value: float) -> float:
    """raw with softplus(raw) = value."""
    return value + math.log(-math.expm1(-value))


def per_token(values: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """values [B, V] looked up at the tokens x0 [B, L].  -> [B, L]"""
    return values.gather(-1, x0)


class GenMD4(DiffusionModel):
    """GenMD4: a denoiser plus per-token polynomial schedules with learnable exponents ``w``.

    Args:
        denoiser: callable ``(z_t, t) -> logits [B, L, vocab_size]``; it should take t into
            account, since the exact posterior now depends on t.
        vocab_size: V; token ids are 0..V-1 and the mask id is V.
        power_init: initial exponent of every token (1.0 starts from MD4's linear schedule).
        t1: smallest diffusion time of the integral; the reconstruction term covers [0, t1].
        eps: alpha stays inside [eps, 1 - eps], as for the MD4 schedules.
    """

    def __init__(self, denoiser: Denoiser, vocab_size: int, power_init: float = 1.0, t1: float = 1e-3, eps: float = EPS):
        super().__init__(denoiser, vocab_size)
        if not power_init > 0:
            raise MaskdiffError(f"GenMD4 needs power_init > 0, got {power_init}")
        if not 0 <= t1 < 1:
            raise MaskdiffError(f"GenMD4 needs 0 <= t1 < 1, got {t1}")
        self.t1, self.eps = t1, eps
        self.raw_w = nn.Parameter(torch.full((vocab_size,), inverse_softplus(power_init)))

    @property
    def w(self) -> torch.Tensor:
        """The per-token exponents, softplus(raw_w).  -> [V]"""
        return F.softplus(self.raw_w)

    @property
    def schedule(self) -> TokenPowerSchedule:
        """The current schedules; ``alpha(t)`` returns [..., V]."""
        return TokenPowerSchedule(self.w, self.eps)

    # ----------------------------------------------------------------- the bound
    def loss_from_logits(
        self,
        logits: torch.Tensor,
        x0: torch.Tensor,
        z_t: torch.Tensor,
        t: torch.Tensor,
        timesteps: int | None = None,
    ) -> torch.Tensor:
        """The one-sample estimate of the integral term (nats per sequence) for given logits [B,L,V], x0, z_t, t [B].

        Continuous time: (1 - t1) times the integrand at t. With ``timesteps=T``, t must lie on
        the grid t1 + (1 - t1) i/T, and the value is T times the KL of reverse step i.
        """
        masked = z_t == self.mask_id
        log_mu = torch.log_softmax(logits.float(), dim=-1)  # [B, L, V]
        ce = -log_mu.gather(-1, x0.unsqueeze(-1)).squeeze(-1)  # [B, L]
        schedule = self.schedule
        if timesteps is None:
            rate = schedule.weight(t)  # [B, V]
            rate_x = per_token(rate, x0)
            # r.mu - r_x as sum_v mu_v (r_v - r_x): exactly 0 when all rates agree, and elementwise
            # in float32 (an autocast bf16 matmul would lose the small difference of large rates)
            extra = (log_mu.exp() * (rate[:, None, :] - rate_x[..., None]).float()).sum(-1)
            per_position = rate_x * ce + extra
            scale = 1 - self.t1
        else:
            s = self._previous_grid_time(t, timesteps)
            alpha_t, alpha_s = schedule.alpha(t), schedule.alpha(s)
            gamma = (alpha_s - alpha_t) / (1 - alpha_t)  # [B, V]: chance that a masked v is revealed by s
            gamma_x = per_token(gamma, x0)
            gamma_mu = (log_mu.exp() * gamma[:, None, :].float()).sum(-1)
            # KL of {reveal x, stay masked} under q against {reveal v w.p. mu_v gamma_v, stay} under the model
            per_position = gamma_x * ce + (1 - gamma_x) * (torch.log1p(-gamma_x) - torch.log1p(-gamma_mu))
            scale = timesteps
        return scale * (per_position * masked).sum(-1)

    def boundary_terms(self, x0: torch.Tensor, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction at t1 plus the prior term at t = 1, closed forms in nats per sequence.  -> [B]

        Reconstruction: a token of value x is masked at t1 with probability m_x = 1 - alpha_x(t1)
        and then costs -log c_x with c_v = m_v / sum_u m_u. Prior: z_1 against the distribution that
        keeps a token with probability eps (uniform value) and masks it otherwise. Both are sums
        over positions, taken over those of ``loss_mask`` (given positions are never masked).
        """
        schedule = self.schedule
        ends = torch.tensor([self.t1, 1.0], device=x0.device)
        alpha_t1, alpha_1 = schedule.alpha(ends).float()  # [V] each
        masked_t1 = 1 - alpha_t1
        log_c = masked_t1.log() - masked_t1.sum().log()
        recon = -(masked_t1 * log_c)[x0]  # [B, L]
        keep = alpha_1[x0]  # [B, L]
        eps, vocab = self.eps, self.vocab_size
        prior = (1 - keep) * (torch.log1p(-keep) - math.log1p(-eps)) + keep * (keep.log() - math.log(eps / vocab))
        return sum_scored(recon, loss_mask) + sum_scored(prior, loss_mask)

    def draw_times(self, batch: int, device, timesteps: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Stratified t in [t1, 1] across the batch; on the grid t1 + (1 - t1) i/T when ``timesteps=T``.  -> [B]"""
        u = stratified_grid_times(batch, device, timesteps, generator)
        return self.t1 + (1 - self.t1) * u

    def _previous_grid_time(self, t: torch.Tensor, timesteps: int) -> torch.Tensor:
        i = torch.round((t - self.t1) / (1 - self.t1) * timesteps)
        return self.t1 + (1 - self.t1) * (i - 1) / timesteps

    def keep_probability(self, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """alpha_{x_i}(t): the chance that each token of x0 [B, L] is kept at t [B].  -> [B, L]"""
        return per_token(self.schedule.alpha(t), x0)

    def log_q(self, x0: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
        """log q(z_t | x0) of a masking, differentiable in w (given positions, outside ``loss_mask``, are not random).  -> [B]"""
        return self._log_q(self.keep_probability(x0, t), z_t, loss_mask)

    def _log_q(self, keep: torch.Tensor, z_t: torch.Tensor, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
        """log q(z_t | x0) from the tokens' keep probabilities keep [B, L], over the maskable positions.  -> [B]"""
        return sum_scored(torch.where(z_t == self.mask_id, torch.log1p(-keep), keep.log()), loss_mask)

    def train_loss(
        self,
        x0: torch.Tensor,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | None = None,
        loss_mask: torch.Tensor | None = None,
        shard: BatchShard | None = None,
    ) -> torch.Tensor:
        """The NELBO averaged over two maskings at the same t, with the RLOO gradient for w.  -> [B]

        Its value is the bound; its gradient adds 0.5 (l1 - l2) grad(log q(z1) - log q(z2)),
        the score-function term of the masks' dependence on w with a leave-one-out baseline.
        With ``loss_mask`` both maskings leave the other positions given (as in :meth:`nelbo`);
        with ``shard`` the times and masks are drawn for the whole batch (:class:`BatchShard`).
        """
        batch = x0.shape[0]
        t = self.shard_times(batch, x0.device, None, generator, shard)
        keep = self.keep_probability(x0, t)  # [B, L], differentiable in w
        z1 = mask_tokens(x0, keep.detach(), self.mask_id, generator, maskable=loss_mask, shard=shard)
        z2 = mask_tokens(x0, keep.detach(), self.mask_id, generator, maskable=loss_mask, shard=shard)
        both_labels = None if labels is None else torch.cat([labels, labels])
        logits = self.predict(torch.cat([z1, z2]), torch.cat([t, t]), both_labels)  # both maskings in one call
        l1 = self.loss_from_logits(logits[:batch], x0, z1, t)
        l2 = self.loss_from_logits(logits[batch:], x0, z2, t)
        score = 0.5 * (l1 - l2).detach() * (self._log_q(keep, z1, loss_mask) - self._log_q(keep, z2, loss_mask))
        bound = 0.5 * (l1 + l2) + self.boundary_terms(x0, loss_mask)
        return bound + (score - score.detach())  # zero in value, the RLOO term in gradient

    def write_artifacts(self, run_dir: Path, token_labels: list[str]) -> list[Path]:
        """The learned exponents: RUN/token_powers.json and a bar plot RUN/token_powers.png."""
        return write_token_powers(self.w.tolist(), token_labels, run_dir)

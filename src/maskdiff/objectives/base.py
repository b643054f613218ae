"""What every objective offers the rest of maskdiff, and the masked-diffusion bound written once.

:class:`Objective` is the interface the trainer, evaluation and generation use: a training loss,
a likelihood (or a bound on it) and generation. :class:`DiffusionModel` implements it for
masked diffusion (docs/method.md): x0 holds token ids in 0..V-1, the mask id is V, z_t is x0
with each token independently replaced by the mask with probability 1 - alpha(t), and the
denoiser is any callable ``(z_t [B, L], t [B]) -> logits [B, L, V]``; it never predicts the mask.
One estimate of the bound is always the same four moves::

    t    = draw_times(B)                         stratified across the batch
    z_t  = mask_tokens(x0, keep_probability(x0, t), maskable=loss_mask)
    loss = loss_from_logits(predict(z_t, t), x0, z_t, t)     the weighted masked cross-entropy
         + boundary_terms(x0, loss_mask)                      closed forms outside the integral

and an objective (MD4, GenMD4) supplies only what differs: its keep probabilities, its weights
(``loss_from_logits``) and its boundary terms.

Conditional training (SMDM's conditional fine-tuning, ``maskdiff finetune``): an optional
``loss_mask`` [B, L] (bool) marks the positions that are generated and scored, e.g. a response
and its end-of-text. The others (the prompt, padding) are given: the forward process never
masks them (:func:`mask_tokens` with ``maskable``), so the masked cross-entropy never scores
them, and the boundary terms leave them out (:func:`sum_scored`). The result is the same bound
for -log p(scored part | given part). An autoregressive objective scores its next-token loss on
the same positions (the others are context). Without a loss mask every position is scored.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from maskdiff.errors import MaskdiffError
from maskdiff.objectives.estimator import Estimator
from maskdiff.sampling import SamplerOptions, Step, iterate
from maskdiff.sampling.cache import CachedPass
from maskdiff.sections import Section, option

Denoiser = Callable[..., torch.Tensor]  # (z_t [B, L], t [B], labels=None) -> logits [B, L, V]


@dataclass(frozen=True)
class BatchShard:
    """This process's rows ``start:stop`` of a batch of ``total`` sequences split across the processes of a job.

    A loss given a shard draws its noise (times, masks) for the whole batch from the generator,
    which every process holds in the same state, and keeps the rows of the shard: the losses and
    gradients of a run then do not depend on how its batches are split across processes.
    """

    start: int
    stop: int
    total: int

    @property
    def rows(self) -> slice:
        return slice(self.start, self.stop)


def uniform_draws(shape, generator: torch.Generator | None, device, dtype=torch.float32, shard: BatchShard | None = None) -> torch.Tensor:
    """U(0, 1) draws from ``generator`` (on the generator's own device), moved to ``device``.

    With ``shard`` the first dimension of ``shape`` is the shard's rows: the draws are made for
    all ``shard.total`` rows and those of the shard kept.
    """
    source = generator.device if generator is not None else device
    if shard is None:
        return torch.rand(shape, generator=generator, device=source, dtype=dtype).to(device)
    whole = torch.rand((shard.total, *shape[1:]), generator=generator, device=source, dtype=dtype)
    return whole[shard.rows].to(device)


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


def mask_tokens(
    x0: torch.Tensor,
    alpha_t: torch.Tensor,
    mask_id: int,
    generator: torch.Generator | None,
    maskable: torch.Tensor | None = None,
    shard: BatchShard | None = None,
) -> torch.Tensor:
    """Forward process q(z_t | x0): keep each token with probability alpha_t ([B], or [B, L] per token), else mask.  -> [B, L]

    ``maskable`` [B, L] (bool; None: every position) limits the masking to those positions; the
    others are given, always kept. The same uniform draws are made either way. With ``shard``
    x0 holds the shard's rows of a larger batch (:class:`BatchShard`).
    """
    draws = uniform_draws(x0.shape, generator, x0.device, alpha_t.dtype, shard)
    keep = draws < (alpha_t[:, None] if alpha_t.ndim == 1 else alpha_t)
    if maskable is not None:
        keep = keep | ~maskable.to(device=x0.device, dtype=torch.bool)
    return torch.where(keep, x0, torch.full_like(x0, mask_id))


def sum_scored(per_position: torch.Tensor, loss_mask: torch.Tensor | None) -> torch.Tensor:
    """The sum over the scored positions of per-position losses [B, L]: those of ``loss_mask``
    [B, L] (bool), or every position when it is None.  -> [B]"""
    if loss_mask is None:
        return per_position.sum(-1)
    return (per_position * loss_mask.to(per_position.device)).sum(-1)


def discrete_grid_previous(t: torch.Tensor, timesteps: int) -> torch.Tensor:
    """For t on the grid i/T, the previous grid point s = (i - 1)/T."""
    i = torch.round(t * timesteps)
    return (i - 1) / timesteps


def masked_cross_entropy(logits: torch.Tensor, x0: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """sum over masked positions of -log softmax(logits)[x0], computed in float32.  -> [B]"""
    vocab = logits.shape[-1]
    ce = F.cross_entropy(logits.float().reshape(-1, vocab), x0.reshape(-1), reduction="none")
    return (ce.view(x0.shape) * masked).sum(dim=-1)


def objective_name(name: str) -> str:
    """The ``name`` field of an objective's config section, defaulting to that objective's own name."""
    doc = (
        "the training objective: md4 (one masking schedule for all tokens), genmd4 (a learned schedule per token value) "
        "or ar (the autoregressive baseline: next-token prediction, exact likelihood; needs model.causal=true)"
    )
    return option(name, doc)


@dataclass
class ObjectiveSection(Section):
    """The ``objective`` section of a run config: ``name`` picks the objective
    (:data:`maskdiff.objectives.OBJECTIVES`) and each objective registers its own section type,
    a subclass with the objective's settings (as networks do for the ``model`` section)."""

    name: str = field(default="md4", metadata={"doc": ""})  # each objective's section restates it with objective_name()

    def network_problems(self, model: Section) -> list[str]:
        """What this objective needs of the network (the ``model`` section) that it lacks; none by default.

        A config says so rather than the builder switching it on, so config.json shows the
        network that was trained."""
        return []


class Objective(nn.Module):
    """The interface between a model and the rest of maskdiff (trainer, evaluation, generation).

    The trainer calls ``forward`` (= :meth:`train_loss`), evaluation calls :meth:`nelbo` and reads
    :attr:`estimator`, generation calls :meth:`iterate` or :meth:`sample`, and at the end of a run
    the trainer calls :meth:`write_artifacts`. An autoregressive objective implements the same
    methods (its ``nelbo`` is then the exact negative log-likelihood, ``estimator = Estimator.EXACT``).
    """

    estimator = Estimator.NELBO  # what nelbo() returns: a Monte Carlo bound or the exact NLL
    left_to_right = False  # generates only after a prefix (no position after a fixed one): the autoregressive model
    vocab_size: int
    mask_id: int  # the id that marks free positions in ``given`` (and masked inputs of a diffusion model)

    def forward(self, x0: torch.Tensor, generator: torch.Generator | None = None, **conditioning) -> torch.Tensor:
        """The training loss, so that wrappers such as DistributedDataParallel see it as forward()."""
        return self.train_loss(x0, generator=generator, **conditioning)

    def train_loss(
        self,
        x0: torch.Tensor,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | None = None,
        loss_mask: torch.Tensor | None = None,
        shard: BatchShard | None = None,
    ) -> torch.Tensor:
        """What the trainer minimises, in nats per sequence [B].

        ``loss_mask`` [B, L] (bool) restricts the loss to its positions, the rest being given
        (conditional fine-tuning; see the module docstring); None scores every position.
        ``shard``: x0 holds these rows of a batch split across processes (:class:`BatchShard`);
        the noise is drawn for the whole batch.
        """
        raise NotImplementedError

    def nelbo(
        self,
        x0: torch.Tensor,
        timesteps: int | None = None,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | None = None,
        loss_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The negative log-likelihood of x0 [B, L] in nats per sequence [B], or an upper bound on it;
        with ``loss_mask``, of its positions given the others."""
        raise NotImplementedError

    def iterate(self, num_samples: int, length: int, steps: int, **options) -> Iterator[Step]:
        """Every state of generating ``num_samples`` sequences of ``length`` tokens; the last one is the output.

        Keywords: ``given``, ``generator``, ``device``, ``options`` (or their fields), ``labels`` and
        ``seeds`` (one stream seed per row, instead of drawing them from ``generator``)."""
        raise NotImplementedError

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
        """Draw ``num_samples`` sequences of ``length`` tokens with ``steps`` steps.  -> [N, L]

        ``method`` is a sampler rule (``maskdiff.sampling.RULES``: ancestral, mean, low_confidence,
        random, threshold); ``given`` [N, L] fixes every position that is not the mask id
        (prompts, infilling); ``rule_options`` are fields of :class:`maskdiff.sampling.SamplerOptions`
        (temperature, top_k, top_p, grid, block_size, cfg, ...).
        """
        states = self.iterate(num_samples, length, steps, method=method, given=given, generator=generator, **rule_options)
        return deque(states, maxlen=1)[0].z  # the last state; iterate always yields at least the initial one

    def num_parameters(self) -> int:
        """Parameters of the network without its input embedding (what scaling laws count)."""
        raise NotImplementedError

    def flops_per_token(self, length: int) -> float:
        """Training FLOPs per token (forward + backward) at sequence length ``length``."""
        raise NotImplementedError

    def write_artifacts(self, run_dir: Path, token_labels: list[str]) -> list[Path]:
        """Files that describe what this objective learned, written at the end of a run (none by default)."""
        return []


class DiffusionModel(Objective):
    """Masked diffusion: a denoiser, the mask id, the bound (:meth:`nelbo`) and the reverse process.

    Subclasses give ``schedule``, :meth:`keep_probability`, :meth:`loss_from_logits` and, where the
    bound has them, :meth:`boundary_terms`; :meth:`draw_times` may move t to another range.
    """

    def __init__(self, denoiser: Denoiser, vocab_size: int | None):
        super().__init__()
        if vocab_size is None or vocab_size < 1:
            raise MaskdiffError(f"{type(self).__name__} needs vocab_size >= 1")
        self.denoiser = denoiser
        self.vocab_size = vocab_size
        self.mask_id = vocab_size

    # ----------------------------------------------------------------- the network
    def predict(self, z_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None, cached: CachedPass | None = None) -> torch.Tensor:
        """The denoiser's logits; class ``labels`` [B] go to class-conditional denoisers as ``labels=``.

        ``cached``: a call of block decoding on the denoiser's KV cache (``forward_block``); z_t
        then holds the pass's positions only (:meth:`CachedPass.columns`).
        """
        if cached is not None:
            if labels is not None:
                raise MaskdiffError("KV caching is for token sequences; a class-conditional network has none")
            return self.denoiser.forward_block(z_t, t, cached.kv, cached.rows, cached.window)  # type: ignore[attr-defined]
        return self.denoiser(z_t, t) if labels is None else self.denoiser(z_t, t, labels=labels)

    def new_block_cache(self, rows: int, length: int):
        """A KV cache of the denoiser for block decoding (``kv_cache`` prefix or dual): ``rows`` rows of ``length`` positions."""
        new = getattr(self.denoiser, "new_block_cache", None)
        if new is None or getattr(self.denoiser, "causal", False):
            raise MaskdiffError(
                f"KV caching (--cache prefix/dual) needs the bidirectional transformer; this model's network is {type(self.denoiser).__name__}"
            )
        return new(rows, length)

    def guided_predict(
        self,
        z_t: torch.Tensor,
        t: torch.Tensor,
        cfg: float = 0.0,
        prompt: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float64,
        cached: CachedPass | None = None,
    ) -> torch.Tensor:
        """Logits [B, L, V] in ``dtype``, with classifier-free guidance of weight ``cfg``: u + (cfg + 1)(c - u).

        The unconditional pass u sees the null label where class ``labels`` [B] are given, else the
        same sequences with the ``prompt`` positions [B, L] (bool) masked (SMDM's unsupervised
        guidance). Both passes run as one batch. Without cfg, labels or prompt: the plain prediction.
        ``cached``: a call on the block-decoding KV cache; the logits are then those of its
        positions only [B, n, V] (the unconditional rows use rows N..2N-1 of the cache).
        """
        columns = cached.columns if cached is not None else (lambda z: z)
        if cfg == 0 or (labels is None and prompt is None):
            return self.predict(columns(z_t), t, labels, cached).to(dtype)
        if labels is not None:
            unconditional, both_labels = z_t, torch.cat([labels, torch.full_like(labels, -1)])
        else:
            assert prompt is not None
            unconditional, both_labels = torch.where(prompt, self.mask_id, z_t), None
        both_cached = None if cached is None else cached.guided()
        both = self.predict(columns(torch.cat([z_t, unconditional])), torch.cat([t, t]), both_labels, both_cached)
        cond, uncond = both.to(dtype).chunk(2)
        return uncond + (cfg + 1) * (cond - uncond)

    def num_parameters(self) -> int:
        return self.denoiser.num_parameters()  # type: ignore[attr-defined]

    def flops_per_token(self, length: int) -> float:
        return self.denoiser.flops_per_token(length)  # type: ignore[attr-defined]

    # ----------------------------------------------------------------- the bound
    def keep_probability(self, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The chance that each token survives to time t: [B] (one schedule) or [B, L] (per token)."""
        raise NotImplementedError

    def loss_from_logits(
        self, logits: torch.Tensor, x0: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor, timesteps: int | None = None
    ) -> torch.Tensor:
        """The one-sample estimate (nats per sequence [B]) of the integral for given logits, masks and t."""
        raise NotImplementedError

    def boundary_terms(self, x0: torch.Tensor, loss_mask: torch.Tensor | None = None) -> torch.Tensor | None:
        """Closed-form terms of the bound outside the integral, nats per sequence [B] (None: there are none),
        summed over the positions of ``loss_mask`` (all when None)."""
        return None

    def draw_times(self, batch: int, device, timesteps: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Stratified t across the batch; on the grid {1/T, ..., 1} when ``timesteps=T``.  -> [B]"""
        return stratified_grid_times(batch, device, timesteps, generator)

    def shard_times(self, batch: int, device, timesteps: int | None, generator: torch.Generator | None, shard: BatchShard | None) -> torch.Tensor:
        """:meth:`draw_times` for ``batch`` rows, or for the whole batch of ``shard`` and then its rows.  -> [batch]"""
        if shard is None:
            return self.draw_times(batch, device, timesteps, generator)
        return self.draw_times(shard.total, device, timesteps, generator)[shard.rows]

    def nelbo(
        self,
        x0: torch.Tensor,
        timesteps: int | None = None,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | None = None,
        loss_mask: torch.Tensor | None = None,
        shard: BatchShard | None = None,
    ) -> torch.Tensor:
        """One-sample NELBO estimate in nats per sequence [B], t stratified across the batch.

        ``timesteps=T`` gives the discrete-time bound with T steps (looser; tends to the
        continuous one as T grows). ``labels`` [B] (class-conditional denoisers only) are passed
        to the denoiser as ``labels=``. ``loss_mask`` [B, L] (bool): only those positions are
        masked and scored, the others are given, so this bounds -log p(x0[loss_mask] | the rest).
        ``shard``: x0 holds these rows of a larger batch, whose times and masks are drawn (:class:`BatchShard`).
        """
        if timesteps is not None and timesteps < 1:
            raise MaskdiffError(f"timesteps must be >= 1, got {timesteps}")
        t = self.shard_times(x0.shape[0], x0.device, timesteps, generator, shard)
        z_t = mask_tokens(x0, self.keep_probability(x0, t).detach(), self.mask_id, generator, maskable=loss_mask, shard=shard)
        loss = self.loss_from_logits(self.predict(z_t, t, labels), x0, z_t, t, timesteps)  # scores masked positions only
        boundary = self.boundary_terms(x0, loss_mask)
        return loss if boundary is None else loss + boundary

    def train_loss(
        self,
        x0: torch.Tensor,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | None = None,
        loss_mask: torch.Tensor | None = None,
        shard: BatchShard | None = None,
    ) -> torch.Tensor:
        """What the trainer minimises, in nats per sequence [B]: by default the NELBO itself."""
        return self.nelbo(x0, generator=generator, labels=labels, loss_mask=loss_mask, shard=shard)

    # ----------------------------------------------------------------- generation
    def iterate(
        self,
        num_samples: int,
        length: int,
        steps: int,
        given: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        device=None,
        options: SamplerOptions | None = None,
        labels: torch.Tensor | None = None,
        seeds: torch.Tensor | None = None,
        **option_values,
    ) -> Iterator[Step]:
        """Every state of the reverse process (:func:`maskdiff.sampling.iterate`); the last has no mask ids."""
        return iterate(
            self,
            num_samples,
            length,
            steps,
            given=given,
            generator=generator,
            device=device,
            options=options,
            labels=labels,
            seeds=seeds,
            **option_values,
        )

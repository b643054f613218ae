"""The autoregressive baseline (ARM): next-token prediction with a causal network, exact likelihood.

SMDM compares masked diffusion with an autoregressive model trained on the same data with the
same network (docs/method.md, "What SMDM adds"). Here that network is the transformer with
``model.causal=true`` (maskdiff/nets/transformer.py) and this objective is ``objective.name=ar``.

Begin of sequence: the input is x shifted right by one position with id V in front, the id the
diffusion models use as the mask (the embedding table already has that row)::

    input     = (V, x_1, ..., x_{L-1})
    logits    = net(input, t = 0)             position i sees V, x_1..x_{i-1} and predicts x_i
    -log p(x) = sum_i CE(logits_i, x_i)       every token scored, the first one included

so :meth:`Autoregressive.nelbo` is the exact negative log-likelihood of the whole sequence
(``estimator = Estimator.EXACT``): no bound, no Monte Carlo. The network's time input is always 0.

Generation (:meth:`Autoregressive.iterate`) decodes left to right, one token per network call:
the prompt in one pass, then each new token on the KV cache (``forward_cached``), or, with
``recompute=True``, recomputing the whole prefix every step (same tokens; for tests and the
benchmark benchmarks/ar_generation.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from maskdiff.errors import MaskdiffError
from maskdiff.objectives.base import BatchShard, Denoiser, Objective, ObjectiveSection, objective_name, sum_scored
from maskdiff.objectives.estimator import Estimator
from maskdiff.sampling import SamplerOptions, SamplerStats, SampleStreams, Step, categorical, filter_probs
from maskdiff.sampling.loop import initial_state
from maskdiff.sections import Section


@dataclass
class AutoregressiveConfig(ObjectiveSection):
    """``objective.name=ar``: the autoregressive baseline has no settings of its own; it needs a causal transformer."""

    name: str = objective_name("ar")

    def network_problems(self, model: Section) -> list[str]:
        if not hasattr(model, "causal"):
            return [f"objective.name=ar needs model.architecture=transformer, not {getattr(model, 'architecture', type(model).__name__)}"]
        if not model.causal:
            return ["objective.name=ar needs model.causal=true (next-token prediction must not see later tokens)"]
        return []


class Autoregressive(Objective):
    """An autoregressive model over a causal network: training loss, exact likelihood, generation.

    Args:
        denoiser: the causal network ``(z [B, L], t [B]) -> logits [B, L, V]`` (``causal`` true);
            with ``new_cache`` and ``forward_cached`` (the transformer) generation uses a KV cache.
            It keeps the attribute name of :class:`~maskdiff.objectives.DiffusionModel`'s
            network, so both kinds of run store their weights under the same names.
        vocab_size: V; token ids are 0..V-1 and id V is the begin-of-sequence input (and the
            id of free positions in ``given``, as for the diffusion models).
    """

    estimator = Estimator.EXACT
    left_to_right = True

    def __init__(self, denoiser: Denoiser, vocab_size: int | None):
        super().__init__()
        if vocab_size is None or vocab_size < 1:
            raise MaskdiffError("Autoregressive needs vocab_size >= 1")
        if not getattr(denoiser, "causal", False):
            raise MaskdiffError("the autoregressive objective needs a causal network: set model.causal=true")
        self.denoiser = denoiser
        self.vocab_size = vocab_size
        self.mask_id = vocab_size
        self.bos_id = vocab_size  # the begin-of-sequence input: the mask id

    # ----------------------------------------------------------------- the likelihood
    def shift_right(self, x0: torch.Tensor) -> torch.Tensor:
        """The network's input for x0 [B, L]: (BOS, x_1, ..., x_{L-1}).  -> [B, L]"""
        return F.pad(x0[:, :-1], (1, 0), value=self.bos_id)

    def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        """The network's logits [B, n, V] for inputs [B, n]; position i predicts the token after input i."""
        return self.denoiser(inputs, torch.zeros(inputs.shape[0], device=inputs.device))

    def nelbo(
        self,
        x0: torch.Tensor,
        timesteps: int | None = None,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | None = None,
        loss_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The exact negative log-likelihood -log p(x0) in nats per sequence [B], cross-entropy in float32.

        With ``loss_mask`` [B, L] (bool) only its positions are scored, each given every token
        before it: the exact -log p(x0[loss_mask] | the rest) when the unscored positions come
        first (a prompt) or after the scored ones (padding after the end of text).
        ``timesteps`` and ``generator`` are accepted for the :class:`Objective` interface and
        ignored: there is no time and nothing random. ``labels`` are refused (no class-conditional
        network is causal).
        """
        if labels is not None:
            raise MaskdiffError("the autoregressive model takes no class labels")
        logits = self.predict(self.shift_right(x0))
        ce = F.cross_entropy(logits.float().reshape(-1, self.vocab_size), x0.reshape(-1), reduction="none")
        return sum_scored(ce.view(x0.shape), loss_mask)

    def train_loss(
        self,
        x0: torch.Tensor,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | None = None,
        loss_mask: torch.Tensor | None = None,
        shard: BatchShard | None = None,
    ) -> torch.Tensor:
        """Next-token cross-entropy, nats per sequence [B]: the negative log-likelihood itself
        (of the ``loss_mask`` positions when given). Nothing is random, so a ``shard`` changes nothing."""
        return self.nelbo(x0, labels=labels, loss_mask=loss_mask)

    def num_parameters(self) -> int:
        return self.denoiser.num_parameters()  # type: ignore[attr-defined]

    def flops_per_token(self, length: int) -> float:
        """The network's count, as for the diffusion models (SMDM's C = 6 N D for both), although
        causal attention could skip half of the attention scores."""
        return self.denoiser.flops_per_token(length)  # type: ignore[attr-defined]

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
        """Every state of left-to-right decoding: the initial one, then one per generated position.

        ``steps`` is ignored: an autoregressive model takes one step per generated token, and
        ``Step.total`` says how many that is (``length`` minus the shortest prompt). ``given``
        [N, L] holds a prompt per row as its leading ids that are not the mask id (rows may
        differ in length); a fixed id after a free position (an infill template) is refused.
        Each step draws the next position of every row from the network's prediction after
        ``temperature``, ``top_k`` and ``top_p``, with one draw per position from the sample's
        own random stream (so a sample depends only on the seed and its index; ``seeds`` [N] sets
        each row's stream seed instead of ``generator``); positions a
        row's prompt fixes keep their ids. Positions not yet generated hold the mask id.

        Options (:class:`~maskdiff.sampling.SamplerOptions`): ``eos_id`` with ``min_length``
        keeps eos out of positions before ``min_length``; with ``truncate_after_eos`` (what
        ``maskdiff sample --eos`` sets) a row stops at its first eos and the rest of it becomes
        eos, and once every row has stopped the network is not called again. It decodes on the KV
        cache (the prompt in one pass, then one new token per call); ``recompute=True``
        recomputes the whole prefix every step. ``grid`` is ignored (no time);
        another ``method``, ``block_size``, ``cfg`` and ``labels`` are refused.
        """
        if options is None:
            try:
                options = SamplerOptions(**option_values)
            except TypeError as err:
                raise MaskdiffError(f"unknown sampler option: {err}") from None
        problems = []
        if options.method != "ancestral":
            problems.append(f"method {options.method!r} is a reveal rule of the diffusion models; an autoregressive model decodes left to right")
        if options.block_size:
            problems.append("block_size is for diffusion models; an autoregressive model already decodes left to right")
        if options.cfg:
            problems.append("cfg (classifier-free guidance) is for diffusion models; an autoregressive model has no unconditional pass")
        if labels is not None:
            problems.append("the autoregressive model takes no class labels")
        if problems:
            raise MaskdiffError("; ".join(problems))
        if device is None:
            device = next(iter(self.parameters()), torch.empty(0)).device
        z = initial_state(num_samples, length, self.mask_id, given, device)
        free = z == self.mask_id
        if (free.cumsum(-1).bool() & ~free).any():
            raise MaskdiffError(
                "an autoregressive model continues a prompt: it cannot generate positions before fixed ones "
                "(an infill template); give a prefix (--prompt) instead"
            )
        streams = SampleStreams(num_samples, generator, device, seeds)
        return self._decode(z, free, options, streams)

    def _decode(self, z: torch.Tensor, free: torch.Tensor, options: SamplerOptions, streams: SampleStreams) -> Iterator[Step]:
        """The states of :meth:`iterate` for the checked start ``z`` [N, L] with ``free`` [N, L] positions."""
        n, length = z.shape
        first = int(free.float().argmax(-1).masked_fill(~free.any(-1), length).min())  # the first position any row generates
        total = length - first
        u = streams.uniform(length)  # [N, L]: one draw per position, whether it is generated or not
        times = torch.zeros(n, device=z.device)
        net: Any = self.denoiser
        cache = net.new_cache(length) if not options.recompute and hasattr(net, "forward_cached") else None
        eos = options.eos_id
        stop_id = eos if options.truncate_after_eos else None  # a row stops at its first stop_id
        stopped = torch.zeros(n, dtype=torch.bool, device=z.device)
        if stop_id is not None:
            stopped = (z[:, :first] == stop_id).any(-1)  # a prompt that holds eos has stopped already
        bos = torch.full((n, 1), self.bos_id, dtype=z.dtype, device=z.device)
        nfe, reveals = 0, 0
        yield Step(0, total, 1.0, z, nfe, torch.zeros_like(free))
        for i in range(first, length):
            if stop_id is not None and bool(stopped.all()):
                value = torch.full((n,), stop_id, dtype=z.dtype, device=z.device)  # no network call
            else:
                inputs = torch.cat([bos, z[:, :i]], dim=1)  # inputs 0..i; the last one predicts position i
                with torch.no_grad():
                    if cache is None:
                        logits = self.predict(inputs)[:, -1]
                    else:
                        logits = net.forward_cached(inputs[:, cache.length :], times, cache)[:, -1]
                nfe += 1
                logits = logits.double()
                if eos is not None and i < options.min_length:
                    logits[:, eos] = -math.inf
                drawn = categorical(filter_probs(logits, options.temperature, options.top_k, options.top_p), u[:, i])
                value = torch.where(free[:, i], drawn, z[:, i])
                if stop_id is not None:
                    value = value.masked_fill(stopped, stop_id)
            revealed = torch.zeros_like(free)
            revealed[:, i] = value != z[:, i]
            z = z.clone()
            z[:, i] = value
            reveals += int((free[:, i] & ~stopped).sum())  # a stopped row's eos fill is not generated
            if stop_id is not None:
                stopped |= value == stop_id
            index = i - first + 1
            stats = SamplerStats(reveals, nfe * n, nfe)  # every call runs every row, one new position each
            yield Step(index, total, 1.0 - index / total, z, nfe, revealed, stats=stats)

"""``maskdiff.load``: a trained run as a Python object, text in and text out.

    run = maskdiff.load("runs/tiny-20261126")
    run.sample(2, length=64, prompt="ROMEO. ")          # -> two strings
    run.infill("To be, or [[12]] to be", n=3)           # -> three strings, the slot filled
    run.score("To be, or not to be").bits_per_token     # the bound (or the exact NLL) of a text
    run.logits(ids)                                     # the network's output for token ids [B, L]
    maskdiff.load("runs/mnist").sample(16, label=3)     # an image run: uint8 images [16, H, W, C]

Tensors for those who want them: ``run.model`` (an :class:`~maskdiff.objectives.Objective`;
``run.model.sample(n, L, steps, given=...)`` takes token ids with the mask id, ``run.mask_id``,
at the free positions), ``run.encode``/``run.decode``, ``run.tokenizer`` and ``run.config``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from maskdiff.checkpoint import LoadedRun, load_run
from maskdiff.errors import MaskdiffError
from maskdiff.generation.images import plan_images, sample_images, to_pil
from maskdiff.generation.text import generate_from_run
from maskdiff.hardware import autocast, resolve_device, resolve_precision
from maskdiff.objectives import Estimator
from maskdiff.sampling import STEPS


@dataclass
class Score:
    """How likely a text is under a run: its negative log-likelihood, or the bound on it."""

    nats: float  # per text
    bits_per_token: float
    bits_per_token_stderr: float  # Monte Carlo standard error (0 for an exact likelihood)
    num_tokens: int
    estimator: str  # "nelbo" (a bound: the true value is at most this) or "exact"


class Run:
    """A trained run (any objective), loaded for use from Python; see the module docstring."""

    def __init__(self, loaded: LoadedRun, device: torch.device, dtype: torch.dtype | None):
        self.loaded, self.device, self.dtype = loaded, device, dtype

    @property
    def model(self):
        return self.loaded.model

    @property
    def config(self):
        return self.loaded.config

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def mask_id(self) -> int:
        """The id that marks free positions in ``given`` (and masked inputs of a diffusion model)."""
        return self.loaded.model.mask_id

    @property
    def step(self) -> int:
        """The training step of the loaded checkpoint."""
        return self.loaded.step

    def __repr__(self) -> str:
        return f"maskdiff.Run({str(self.loaded.run_dir)!r}, step={self.step}, preset={self.config.preset!r})"

    def encode(self, text: str) -> torch.Tensor:
        """Token ids of ``text``.  -> LongTensor [n]"""
        self._need_text()
        return self.tokenizer.encode(text)

    def decode(self, ids) -> str:
        self._need_text()
        return self.tokenizer.decode([int(i) for i in ids])

    def sample(
        self,
        n: int = 1,
        length: int | None = None,
        steps: int = STEPS.default,
        prompt: str | Sequence[str] | None = None,
        seed: int | Sequence[int] = 0,
        eos: str | None = None,
        label: int | None = None,
        pil: bool = False,
        **options,
    ) -> list[str] | torch.Tensor | list[Any]:
        """``n`` texts of ``length`` tokens (default: the run's sequence length), starting with
        ``prompt`` when given. ``options`` are sampler options (method, temperature, top_p, cfg,
        block_size, kv_cache, refresh, eta, ...: :func:`maskdiff.sampling.every_option`).

        A list of prompts (of any lengths) gives one text per prompt, and a list of seeds one seed
        per text: each text is then what it is alone with its prompt and seed. ``eos`` is an
        end-of-text token (one token of text) at which the texts end (default: a fine-tuned run's own).

        An image run gives ``n`` images instead: a uint8 tensor [n, H, W, C] (``pil``: a list of
        PIL images), of class ``label`` for a class-conditional run (``cfg`` guides towards it).
        """
        if self.config.data.data_format.is_image:
            if length is not None or prompt is not None or eos is not None:
                raise MaskdiffError("length, prompt and eos are for text runs; an image run samples whole images")
            if not isinstance(seed, int):
                raise MaskdiffError("an image run takes one seed for all its images")
            request = plan_images(self.loaded, n, steps, seed, label, **options)
            images, _ = sample_images(self.loaded, request, self.device, self.dtype)
            return [to_pil(image) for image in images] if pil else torch.from_numpy(images)
        if label is not None or pil:
            raise MaskdiffError("label and pil are for image runs; this run models text")
        if n == 1 and prompt is not None and not isinstance(prompt, str):
            n = len(prompt)
        return generate_from_run(self.loaded, n, length, steps, seed, prompt, None, eos, self.device, self.dtype, **options).texts

    def infill(self, template: str, n: int = 1, steps: int = STEPS.default, seed: int = 0, **options) -> list[str]:
        """``n`` completions of an infill template, text with ``[[N]]`` where N tokens are to be generated."""
        self._need_text()
        return generate_from_run(self.loaded, n, None, steps, seed, None, template, None, self.device, self.dtype, **options).texts

    def score(self, text: str, mc_samples: int = 16, seed: int = 0) -> Score:
        """The negative log-likelihood of ``text`` (a bound for diffusion models, averaged over
        ``mc_samples`` draws; exact for autoregressive ones), in pieces of the run's sequence length."""
        if mc_samples < 1:
            raise MaskdiffError(f"mc_samples must be >= 1, got {mc_samples}")
        ids = self.encode(text)
        if ids.numel() == 0:
            raise MaskdiffError("nothing to score: the text is empty")
        draws = Estimator(self.model.estimator).draws(mc_samples)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        total = torch.zeros(draws, dtype=torch.float64)
        seq_len = self.config.data.seq_len
        with torch.no_grad(), autocast(self.device, self.dtype):
            for piece in ids.split(seq_len):
                # the draws of one piece form one batch, so their times are stratified
                batch = piece.to(self.device).expand(draws, -1)
                total += self.model.nelbo(batch, generator=generator).double().cpu()
        nats = total.mean().item()
        stderr = total.std().item() / math.sqrt(draws) if draws > 1 else 0.0
        per_bit = ids.numel() * math.log(2)
        return Score(nats, nats / per_bit, stderr / per_bit, ids.numel(), self.model.estimator)

    def logits(self, ids) -> torch.Tensor:
        """The network's output for token ids [B, L] (or [L]; the mask id allowed), in float32 [B, L, V]:
        one column per vocabulary entry (no mask or padding column). A diffusion model's prediction of
        each position's clean token (at t = the row's fraction of masked positions, which only a
        time-conditioned network reads); an autoregressive model's logits of the token after each
        position (no begin-of-sequence token added)."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        ids = ids[None] if ids.dim() == 1 else ids
        if ids.dim() != 2 or ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) > self.mask_id:
            raise MaskdiffError(f"logits need token ids [B, L] in 0..{self.mask_id} (the mask id), got shape {list(ids.shape)}")
        with torch.no_grad(), autocast(self.device, self.dtype):
            if self.model.left_to_right:
                return self.model.predict(ids).float()
            return self.model.predict(ids, (ids == self.mask_id).float().mean(-1)).float()

    def _need_text(self) -> None:
        self.config.data.data_format.require_text(self.loaded.run_dir, "sample it with run.sample(n, label=...)")


def load(path: str | Path, weights: str = "ema", device: str = "auto", precision: str = "auto") -> Run:
    """The trained run in ``path`` (a run folder or one of its checkpoints), ready to sample,
    infill and score; ``weights`` "ema" or "raw", ``precision`` auto, bf16 or fp32."""
    dev = resolve_device(device)
    return Run(load_run(path, weights=weights, device=dev), dev, resolve_precision(precision, dev))

"""A sampling request: what one call of a model's ``iterate`` samples, as one typed value.

Every front builds one (``maskdiff sample``, :class:`maskdiff.Run`, the server, ``bench
generate``; the text and image plans of :mod:`maskdiff.generation` produce them), and
:func:`maskdiff.generation.run_sampler` runs it. The server samples the rows of requests with
equal :meth:`SamplingRequest.key` as one batch (:func:`combine`): each row keeps its own random
stream, so it draws exactly what it draws alone.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from maskdiff.errors import MaskdiffError
from maskdiff.sampling.loop import Step
from maskdiff.sampling.options import OptionError
from maskdiff.sampling.settings import STEPS, SamplerOptions
from maskdiff.sampling.streams import row_seeds


@dataclass
class SamplingRequest:
    """``rows`` sequences of ``length`` positions in ``steps`` steps, drawn with ``options``.

    ``given`` [rows, length] fixes every position that is not the mask id (prompts, infilling,
    inpainting); ``labels`` [rows] are class labels of a class-conditional network. The rows'
    random streams come from ``seed``, or from ``seeds`` [rows], one stream seed per row
    (:func:`~maskdiff.sampling.stream_seeds`, :func:`~maskdiff.sampling.row_seeds`).
    """

    rows: int
    length: int
    steps: int = STEPS.default
    options: SamplerOptions = field(default_factory=SamplerOptions)
    given: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    seed: int = 0
    seeds: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.rows < 1 and self.length < 1:
            raise OptionError("num_samples", f"{{num_samples}} and {{length}} must be >= 1, got {self.rows} and {self.length}")
        if self.rows < 1:
            raise OptionError("num_samples", f"{{num_samples}} must be >= 1, got {self.rows}")
        if self.length < 1:
            raise OptionError("length", f"{{length}} must be >= 1, got {self.length}")
        problem = STEPS.check("steps", int, self.steps)
        if problem is not None:
            raise problem
        if self.seeds is not None and tuple(self.seeds.shape) != (self.rows,):
            raise MaskdiffError(f"{tuple(self.seeds.shape)} stream seeds for {self.rows} rows: give one per row")

    @classmethod
    def seeded(cls, rows: int, length: int, steps: int, options: SamplerOptions, seed: int | Sequence[int] = 0, **rest) -> SamplingRequest:
        """A request whose rows use ``seed``, or one seed per row (row i then draws what it draws alone with seed i)."""
        if isinstance(seed, int):
            return cls(rows, length, steps, options, seed=seed, **rest)
        if len(seed) != rows:
            raise MaskdiffError(f"{len(seed)} seeds for {rows} samples: give one seed per sample")
        return cls(rows, length, steps, options, seeds=row_seeds(seed), **rest)

    def key(self) -> Hashable:
        """Requests with equal keys can be sampled as one batch."""
        return (self.length, self.steps, self.options.key(), self.given is None, self.labels is None)

    def states(self, model, device: torch.device | None = None) -> Iterator[Step]:
        """Every state of ``model``'s sampler for this request (the objective's ``iterate``)."""
        generator = torch.Generator().manual_seed(self.seed) if self.seeds is None else None
        return model.iterate(
            self.rows,
            self.length,
            self.steps,
            given=self.given,
            generator=generator,
            device=device,
            options=self.options,
            labels=self.labels,
            seeds=self.seeds,
        )


def combine(requests: Sequence[SamplingRequest]) -> SamplingRequest:
    """The rows of requests with equal keys and their own stream seeds as one request."""
    first = requests[0]
    if any(r.key() != first.key() for r in requests) or any(r.seeds is None for r in requests):
        raise MaskdiffError("only requests with equal keys and their own stream seeds form one batch")

    def joined(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
        tensors = [p for p in parts if p is not None]
        return torch.cat(tensors) if tensors else None

    return SamplingRequest(
        sum(r.rows for r in requests),
        first.length,
        first.steps,
        first.options,
        given=joined([r.given for r in requests]),
        labels=joined([r.labels for r in requests]),
        seeds=joined([r.seeds for r in requests]),
    )

"""Masking schedules alpha(t): the probability that a token is still unmasked at time t.

Every schedule here is decreasing on t in [0, 1] and, as in MD4, kept inside
[eps, 1 - eps] by ``alpha(t) = (1 - 2 eps) * abar(t) + eps`` so that the loss weight
``-alpha'(t) / (1 - alpha(t))`` stays finite at t = 0. Anything with ``alpha(t)`` and
``dalpha(t)`` methods can be used wherever a schedule is taken (see :class:`ScheduleLike`).

All functions are pure tensor maps and work in any float dtype, float64 included.
"""

from __future__ import annotations

import math
import re
from typing import Protocol, runtime_checkable

import torch

from maskdiff.errors import MaskdiffError

EPS = 1e-4


@runtime_checkable
class ScheduleLike(Protocol):
    """The interface the diffusion objective and the samplers need from a schedule."""

    def alpha(self, t: torch.Tensor) -> torch.Tensor: ...

    def dalpha(self, t: torch.Tensor) -> torch.Tensor: ...


class Schedule:
    """Base class: subclasses give the raw shape ``abar(t)`` from 1 to 0 and its derivative."""

    name = "schedule"

    def __init__(self, eps: float = EPS):
        self.eps = eps

    def abar(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dabar(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """Probability of a token being unmasked at time t (same shape as t)."""
        return (1 - 2 * self.eps) * self.abar(t) + self.eps

    def dalpha(self, t: torch.Tensor) -> torch.Tensor:
        """d alpha / dt (same shape as t)."""
        return (1 - 2 * self.eps) * self.dabar(t)

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """The continuous-time loss weight -alpha'(t) / (1 - alpha(t))."""
        return -self.dalpha(t) / (1 - self.alpha(t))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class Linear(Schedule):
    """abar(t) = 1 - t; its loss weight is 1/t (up to eps)."""

    name = "linear"

    def abar(self, t):
        return 1 - t

    def dabar(self, t):
        return -torch.ones_like(t)


class Cosine(Schedule):
    """abar(t) = 1 - cos(pi/2 (1 - t)) (MD4's cosine schedule)."""

    name = "cosine"

    def abar(self, t):
        return 1 - torch.cos(math.pi / 2 * (1 - t))

    def dabar(self, t):
        return -math.pi / 2 * torch.sin(math.pi / 2 * (1 - t))


class Poly(Schedule):
    """abar(t) = 1 - t^K for a power K > 0."""

    def __init__(self, power: float, eps: float = EPS):
        super().__init__(eps)
        if not power > 0:
            raise MaskdiffError(f"polynomial schedule needs a positive power, got {power}")
        self.power = power
        self.name = f"poly{power:g}"

    def abar(self, t):
        return 1 - t**self.power

    def dabar(self, t):
        return -self.power * t ** (self.power - 1)


class Geometric(Schedule):
    """abar(t) = exp(-sigma_min^(1-t) * sigma_max^t), the geometric noise of SEDD/MDLM."""

    name = "geometric"

    def __init__(self, sigma_min: float = 1e-4, sigma_max: float = 20.0, eps: float = EPS):
        super().__init__(eps)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def _sigma(self, t):
        return self.sigma_min ** (1 - t) * self.sigma_max**t

    def abar(self, t):
        return torch.exp(-self._sigma(t))

    def dabar(self, t):
        sigma = self._sigma(t)
        return -sigma * math.log(self.sigma_max / self.sigma_min) * torch.exp(-sigma)


class LogLinear(Schedule):
    """abar(t) = 1 - (1 - delta) t, i.e. sigma(t) = -log(1 - (1 - delta) t) (MDLM's log-linear noise)."""

    name = "loglinear"

    def __init__(self, delta: float = 1e-3, eps: float = EPS):
        super().__init__(eps)
        self.delta = delta

    def abar(self, t):
        return 1 - (1 - self.delta) * t

    def dabar(self, t):
        return -(1 - self.delta) * torch.ones_like(t)


NAMES = ("linear", "cosine", "polyK", "geometric", "loglinear")


def get(name: str) -> Schedule:
    """The schedule called ``name``: linear, cosine, polyK (e.g. poly2, poly0.5), geometric or loglinear."""
    simple = {"linear": Linear, "cosine": Cosine, "geometric": Geometric, "loglinear": LogLinear}
    if name in simple:
        return simple[name]()
    match = re.fullmatch(r"poly(\d+(?:\.\d+)?)", name)
    if match:
        return Poly(float(match.group(1)))
    raise MaskdiffError(f"unknown schedule {name!r}; choose one of {', '.join(NAMES)} (e.g. poly2)")


def resolve(schedule: str | ScheduleLike) -> ScheduleLike:
    """A schedule object from a name or an object with alpha/dalpha."""
    if isinstance(schedule, str):
        return get(schedule)
    if not isinstance(schedule, ScheduleLike):
        raise MaskdiffError("a schedule needs alpha(t) and dalpha(t) methods")
    return schedule

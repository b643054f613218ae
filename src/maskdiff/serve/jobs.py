"""From a validated request to the worker's jobs: the served run, seeds, text plans and checks.

Everything here runs on the event loop and never calls the network: a request is checked
completely (its text encoded, its plan built, the sampler's own checks run on the initial
state) before it is queued, so a bad one gets its 400 at once and never reaches the worker.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

import torch

from maskdiff.errors import MaskdiffError
from maskdiff.generation.text import TextPlan, plan_text
from maskdiff.runs import Run
from maskdiff.sampling import OptionError, SamplerOptions, SamplingRequest, stream_seeds
from maskdiff.serve.engine import Engine, Job, Sink
from maskdiff.serve.limits import Limits
from maskdiff.serve.requests import MAX_SEED, OPTION_NAMES, RequestError, SamplerFields, check_limit

# request fields an error message may start by naming: every sampler option, and the text and image fields
FIELDS = (*OPTION_NAMES, "infill", "prompt", "label")
BODY_NAMES = {"num_samples": "n", "eos_id": "eos"}  # the library's names of request fields whose body names differ


@dataclass
class Served:
    """The run a server serves, its worker and its limits."""

    run: Run
    engine: Engine
    limits: Limits
    name: str  # the model id clients see
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def modality(self) -> str:
        return self.run.config.data.modality

    @property
    def max_length(self) -> int:
        return self.limits.max_length or self.run.config.data.seq_len

    def sequence_length(self) -> int:
        """Tokens per sample of an image run (every sub-pixel), or the text run's sequence length."""
        data = self.run.config.data
        return data.image_size * data.image_size * data.channels if data.data_format.is_image else data.seq_len


def fresh_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)


def as_request_error(err: MaskdiffError, param: str | None = None) -> RequestError:
    """A library error about a request as a 400 naming its field: the option an
    :class:`~maskdiff.sampling.OptionError` names, else ``param``, else the field its message starts with."""
    if isinstance(err, OptionError):
        field = BODY_NAMES.get(err.field, err.field)
        return RequestError(err.render(lambda name: BODY_NAMES.get(name, name)), param=param or field)
    message = str(err)
    if param is None:  # the objectives' own refusals (an autoregressive run and a reveal rule) name the option first
        param = next((name for name in FIELDS if message.startswith(name) or f" {name} " in message[:40]), None)
    return RequestError(message, param=param)


def encode_checked(served: Served, text: str, param: str) -> torch.Tensor:
    """Token ids of ``text``, or a 400 naming ``param`` when the vocabulary lacks some character."""
    try:
        return served.run.encode(text)
    except MaskdiffError as err:
        raise RequestError(f"{param}: {err}", param=param) from None


def check_sampling(served: Served, req: SamplerFields, sequences: int) -> int:
    """Check the limits every generation request shares; -> the seed to use."""
    check_limit(sequences, served.limits.max_samples, "n", "sequences per request")
    check_limit(req.steps, served.limits.max_steps, "steps", "steps")
    return fresh_seed() if req.seed is None else req.seed


def text_plan(served: Served, req: SamplerFields, length: int | None, prompt: str | None, infill: str | None, param: str) -> TextPlan:
    """:func:`maskdiff.generation.text.plan_text` with its errors as 400s (``param`` names the text field)."""
    try:
        plan = plan_text(served.run.loaded, length, prompt, infill, req.eos, **req.sampler_options())
    except OptionError as err:
        raise as_request_error(err) from None
    except MaskdiffError as err:  # the text itself: a prompt too long, a template without a slot
        raise as_request_error(err, param) from None
    check_limit(plan.length, served.max_length, param if infill is not None else "max_tokens", "tokens per sequence")
    return plan


def sampling_job(
    served: Served,
    sink: Sink,
    rows: int,
    length: int,
    steps: int,
    options: SamplerOptions,
    seed: int,
    first: int = 0,
    given_row: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    watch: bool = False,
    tag=None,
) -> Job:
    """A job for ``rows`` samples drawn with ``seed`` (samples ``first`` .. ``first + rows - 1`` of
    that seed), checked by a dry run of the sampler's first state (no network call)."""
    seeds = stream_seeds(torch.Generator().manual_seed(seed), rows, first)
    given = given_row.expand(rows, -1).clone() if given_row is not None else None
    try:
        request = SamplingRequest(rows, length, steps, options, given=given, labels=labels, seeds=seeds)
        states = request.states(served.run.model, served.run.device)
        next(states)
    except MaskdiffError as err:
        raise as_request_error(err) from None
    return Job(sink, request, watch, tag=tag)

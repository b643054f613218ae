"""What the server accepts: the request bodies, the limits on them, and errors that name the field.

The sampler's fields are generated from the option declarations (:func:`maskdiff.sampling.every_option`):
every option of every rule is a field by its name (the CLI's flag with underscores), with its
doc, default and range. Bodies are parsed strictly (pydantic, ``extra="forbid"``, no type
coercion): an unknown field, a string where a number belongs or a value out of range is refused with a 400 JSON error in the
OpenAI shape ``{"error": {"message", "type", "param", "code"}}`` whose ``param`` names the
field. A body over the size limit gets 413, malformed JSON 400 (``code: invalid_json``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from maskdiff.sampling import STEPS, every_option
from maskdiff.sampling.options import Declared, spelled

DEFAULT_STEPS = 64  # reverse-process steps when a request names none
MAX_SEED = 2**63 - 1


class RequestError(Exception):
    """A request the server refuses: becomes a 4xx (or 503) JSON error naming ``param`` when it is one field's fault."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str = "invalid_request", headers: dict | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code, self.headers = message, param, status, code, headers or {}

    def body(self) -> dict:
        kind = {401: "authentication_error", 503: "server_overloaded", 500: "server_error"}.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def option_field(item: Declared, default: Any = None) -> tuple[Any, Any]:
    """A request field for a declared sampler option: its type, default, doc and range."""
    option = item.option
    bounds: dict[str, Any] = {"ge": option.minimum, "le": option.maximum, "gt": option.above, "lt": option.below}
    bounds = {k: v for k, v in bounds.items() if v is not None}
    return item.kind, Field(option.default if default is None else default, description=spelled(option.doc), **bounds)


class RequestFields(Strict):
    """What every generation request takes besides the sampler options."""

    steps: int = option_field(Declared("steps", int, STEPS), DEFAULT_STEPS)[1]
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="random seed; omitted: a fresh one")
    n: int = Field(1, ge=1, description="sequences per prompt")
    infill: str | None = Field(None, description="a template with [[N]] where N tokens are generated")
    eos: str | None = Field(None, description="an end-of-text token (one token of text): texts end there (default: a fine-tuned run's own)")

    def sampler_options(self) -> dict:
        """The sampler options this request sets (those it leaves out keep their defaults)."""
        return {name: getattr(self, name) for name in OPTION_NAMES if name in self.model_fields_set}


OPTION_NAMES = tuple(item.name for item, _ in every_option())
if TYPE_CHECKING:  # the fields are generated; to a type checker they are the base's
    SamplerFields = RequestFields
else:
    SamplerFields = create_model(
        "SamplerFields",
        __base__=RequestFields,
        __doc__="The masked-diffusion options of a generation request (extra fields of an OpenAI completion), one per sampler option.",
        **{item.name: option_field(item) for item, _ in every_option()},
    )


def options_info() -> dict:
    """Every sampler option as ``GET /api/info`` lists it: type, default, doc, choices, range and the rules that read it."""
    kinds = {bool: "boolean", int: "integer", float: "number", str: "string"}
    out = {}
    for item, rules in every_option():
        option = item.option
        out[item.name] = {
            "type": kinds[item.kind],
            "default": option.default,
            "doc": spelled(option.doc),
            "choices": list(option.allowed() or []) or None,
            "range": option.range_text(),
            "rules": list(rules) or None,
        }
    return out


class StreamOptions(Strict):
    include_usage: bool = False


class CompletionRequest(SamplerFields):
    """``POST /v1/completions``: the OpenAI completions body plus :class:`SamplerFields`."""

    model: str | None = None  # accepted and echoed as the served model: one server serves one run
    prompt: str | list[str] = ""
    suffix: str | None = None  # text after the completion: the sequence is prompt + max_tokens free positions + suffix
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=5, description="log-probabilities of the generated tokens, with this many most likely alternatives")
    user: str | None = None


class SampleRequest(SamplerFields):
    """``POST /api/sample`` and ``/api/sample/stream``: sequences (or images) from all masks, a prompt or an infill template."""

    prompt: str | None = None
    length: int | None = Field(None, ge=1, description="tokens per text (default: the run's sequence length)")
    label: int | None = Field(None, ge=0, description="images: the class to sample (class-conditional runs)")


class LikelihoodRequest(Strict):
    """``POST /api/likelihood``: the bound (or exact NLL) of a text."""

    text: str
    mc_samples: int = Field(16, ge=1)
    seed: int = Field(0, ge=0, le=MAX_SEED)


def parse_body(model: type[Strict], body: bytes) -> Strict:
    """The validated request, or a :class:`RequestError` naming the first bad field."""
    try:
        return model.model_validate_json(body)
    except ValidationError as err:
        raise _request_error(err) from None


# which of several problems a refusal names: a body that is not JSON (or not an object) first, then an
# unknown field (a misspelt name also shows up as a missing required field, which would mislead), then
# the rest in the library's order; pydantic's own order of errors differs between its releases
_ERROR_PRIORITY = {"json_invalid": 0, "model_type": 1, "extra_forbidden": 2}


def _request_error(err: ValidationError) -> RequestError:
    first = min(err.errors(), key=lambda e: _ERROR_PRIORITY.get(e["type"], len(_ERROR_PRIORITY)))
    kind, loc = first["type"], first["loc"]
    if kind == "json_invalid":
        return RequestError(f"the body is not valid JSON: {first['msg'].removeprefix('Invalid JSON: ')}", code="invalid_json")
    if not loc:
        return RequestError("the body must be a JSON object", code="invalid_json")
    if kind == "extra_forbidden":
        name = ".".join(str(p) for p in loc)
        return RequestError(f"unknown field {name!r}", param=name, code="unknown_field")
    field = str(loc[0])  # deeper parts are pydantic's union tags or list indices
    return RequestError(f"{field}: {first['msg']}", param=field, code="invalid_value")


def check_limit(value: int, limit: int, param: str, what: str) -> None:
    """Refuse ``value`` over ``limit`` with a 400 naming ``param``."""
    if value > limit:
        raise RequestError(f"{param}: {what} {value} exceeds this server's limit of {limit}", param=param, code="limit_exceeded")

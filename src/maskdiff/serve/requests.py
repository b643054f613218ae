"""What the server accepts: the request bodies, the limits on them, and errors that name the field.

Bodies are parsed strictly (pydantic, ``extra="forbid"``, no type coercion): an unknown field, a
string where a number belongs or a value out of range is refused with a 400 JSON error in the
OpenAI shape ``{"error": {"message", "type", "param", "code"}}`` whose ``param`` names the
field. A body over the size limit gets 413, malformed JSON 400 (``code: invalid_json``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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


class SamplerFields(Strict):
    """The masked-diffusion options of a generation request (extra fields of an OpenAI completion)."""

    steps: int = Field(DEFAULT_STEPS, ge=1, description="reverse-process steps (autoregressive runs: ignored)")
    method: str = Field("ancestral", description="the reveal rule, one of /api/info's rules")
    grid: str = Field("cosine", description="time grid: cosine or uniform")
    temperature: float = Field(1.0, ge=0, description="softmax temperature; 0 takes the most likely token")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    tokens_per_step: int = Field(0, ge=0)
    threshold: float = Field(0.9, gt=0, le=1)
    block_size: int = Field(0, ge=0, description="semi-autoregressive blocks of this many tokens (0: off)")
    cfg: float = Field(0.0, description="classifier-free guidance weight towards the prompt (or label)")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="random seed; omitted: a fresh one")
    n: int = Field(1, ge=1, description="sequences per prompt")
    infill: str | None = Field(None, description="a template with [[N]] where N tokens are generated")

    def sampler_options(self) -> dict:
        """The fields of :class:`maskdiff.sampling.SamplerOptions` this request sets."""
        names = ("method", "grid", "temperature", "top_p", "top_k", "tokens_per_step", "threshold", "block_size", "cfg")
        return {name: getattr(self, name) for name in names}


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
    logprobs: int | None = None
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

"""The HTTP layer: routes, the bearer token, body limits, server-sent events, and `maskdiff serve`.

    GET  /                      the page that shows the model unmasking (maskdiff/serve/static/index.html)
    GET  /api/info              the model, its objective, vocabulary, rules, every sampler option, the server's limits and queue
    POST /api/sample            samples (text or images) as JSON
    POST /api/sample/stream     the same as server-sent events: every intermediate state, then the result
    POST /api/likelihood        the bound (exact NLL for autoregressive runs) of a text, with its error bar
    POST /v1/completions        OpenAI completions (maskdiff/serve/completions.py), streamed when asked
    GET  /v1/models             the one model served, for OpenAI clients

Errors are JSON in the OpenAI shape (maskdiff/serve/requests.py): 400 for a bad request (naming
the field), 401 without the token, 404/405 for an unknown route or method, 413 for a body over
the limit, 503 with Retry-After when the queue is full. No endpoint reads or writes a file a
request names: the server reads only its own checkpoint (at start) and its page.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from maskdiff.errors import MaskdiffError
from maskdiff.objectives import Estimator
from maskdiff.runs import Run, load
from maskdiff.sampling import GRIDS, RULES
from maskdiff.serve.completions import Completion, completion_jobs
from maskdiff.serve.engine import Done, Engine, Failed, Job, Sink, State
from maskdiff.serve.jobs import Served, encode_checked
from maskdiff.serve.limits import Limits
from maskdiff.serve.requests import (
    DEFAULT_STEPS,
    CompletionRequest,
    LikelihoodRequest,
    RequestError,
    SampleRequest,
    Strict,
    check_limit,
    options_info,
    parse_body,
)
from maskdiff.serve.unmasking import done_event, sample_job, state_event

TOKEN_VARIABLE = "MASKDIFF_SERVE_TOKEN"
OPEN_PATHS = ("/", "/favicon.ico")  # the page itself holds no data; what it fetches needs the token
KEEPALIVE = 1.0  # seconds between SSE comments while a request waits, so a vanished client is noticed


def error_response(err: RequestError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


class BearerToken:
    """ASGI middleware: every path but the page needs ``Authorization: Bearer TOKEN``."""

    def __init__(self, app: ASGIApp, token: str):
        self.app, self.token = app, token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            headers = dict(scope["headers"])
            given = headers.get(b"authorization", b"")
            scheme, _, value = given.partition(b" ")
            if scheme.lower() != b"bearer" or not secrets.compare_digest(value.strip(), self.token):
                err = RequestError("a valid bearer token is required (Authorization: Bearer TOKEN)", status=401, code="invalid_api_key")
                response = error_response(err)
                response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (by its Content-Length or as it arrives)."""
    declared = request.headers.get("content-length")
    too_large = RequestError(f"the body exceeds this server's limit of {limit} bytes", status=413, code="body_too_large")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def sse(data: dict | str, event: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return ((f"event: {event}\n" if event else "") + f"data: {payload}\n\n").encode()


async def events(sink: Sink, jobs: list[Job]) -> AsyncIterator[State | Done | Failed | None]:
    """The worker's items for ``jobs`` until each is done or failed; None every KEEPALIVE seconds of silence."""
    open_jobs = len(jobs)
    while open_jobs:
        try:
            item = await asyncio.wait_for(sink.queue.get(), KEEPALIVE)
        except asyncio.TimeoutError:
            yield None
            continue
        if isinstance(item, (Done, Failed)):
            open_jobs -= 1
        yield item


def failure(item: Failed) -> RequestError:
    if isinstance(item.error, MaskdiffError):
        return RequestError(str(item.error))
    return RequestError(f"internal error: {item.error}", status=500, code="internal_error")


def create_app(run: Run, limits: Limits | None = None, token: str | None = None, name: str | None = None) -> Starlette:
    """The ASGI app serving ``run`` (from :func:`maskdiff.load`); ``token`` set: bearer auth on every API path."""
    limits = limits or Limits()
    engine = Engine(run.model, run.device, run.dtype, limits)
    served = Served(run, engine, limits, name or run.loaded.run_dir.name)
    page = resources.files("maskdiff.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    async def parse(request: Request, model: type[Strict]):
        return parse_body(model, await read_body(request, limits.max_body_bytes))

    async def submit(request: Request, build: Callable[[Sink], list[Job]]) -> tuple[Sink, list[Job]]:
        sink = Sink(asyncio.get_running_loop())
        jobs = build(sink)
        engine.submit(jobs)
        return sink, jobs

    async def collect(request: Request, sink: Sink, jobs: list[Job]) -> dict[int, Done]:
        """Every job's result; a client that leaves meanwhile cancels them (a 400/500 on failure)."""
        index = {id(job): i for i, job in enumerate(jobs)}
        results: dict[int, Done] = {}
        try:
            async for item in events(sink, jobs):
                if item is None:
                    if await request.is_disconnected():
                        engine.cancel(jobs)
                        raise RequestError("the client went away", status=499, code="client_closed")
                elif isinstance(item, Failed):
                    raise failure(item)
                elif isinstance(item, Done):
                    results[index[id(item.job)]] = item
        except BaseException:
            engine.cancel(jobs)
            raise
        return results

    def stream(sink: Sink, jobs: list[Job], render: Callable[[State | Done], list[bytes]], closing: Callable[[], list[bytes]]) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            try:
                async for item in events(sink, jobs):
                    if item is None:
                        yield b": waiting\n\n"
                    elif isinstance(item, Failed):
                        yield sse(failure(item).body(), "error")
                        return
                    else:
                        for chunk in render(item):
                            yield chunk
                for chunk in closing():
                    yield chunk
            finally:  # the client left (or the stream ended): free the slot
                engine.cancel(jobs)

        return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # ------------------------------------------------------------------ routes
    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def info(request: Request) -> Response:
        config = run.config
        data = config.data
        body = {
            "model": served.name,
            "objective": config.objective.name,
            "estimator": run.model.estimator,
            "left_to_right": run.model.left_to_right,
            "modality": served.modality,
            "step": run.step,
            "vocab_size": run.model.vocab_size,
            "mask_id": run.mask_id,
            "tokenizer": getattr(run.tokenizer, "kind", type(run.tokenizer).__name__),
            "seq_len": served.sequence_length(),
            "rules": RULES.names(),
            "rule_summaries": {name: rule.summary() for name, rule in RULES.items()},
            "options": options_info(),
            "grids": list(GRIDS),
            "defaults": {"steps": DEFAULT_STEPS, "method": "ancestral"},
            "limits": {**vars(limits), "max_length": served.max_length},
            "queue": engine.info(),
        }
        if data.data_format.is_image:
            body["image"] = {"size": data.image_size, "channels": data.channels, "num_classes": getattr(config.model, "num_classes", 0)}
        return JSONResponse(body)

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": served.name, "object": "model", "created": served.created, "owned_by": "maskdiff"}]})

    async def completions(request: Request) -> Response:
        req = await parse(request, CompletionRequest)
        assert isinstance(req, CompletionRequest)
        sink, jobs = await submit(request, lambda sink: completion_jobs(served, req, sink))
        completion = Completion(served, req, jobs)
        if not req.stream:
            results = await collect(request, sink, jobs)
            return JSONResponse(completion.response(results))

        def render(item: State | Done) -> list[bytes]:
            return [sse(chunk) for chunk in completion.chunks(item)]

        def closing() -> list[bytes]:
            last = completion.usage_chunk()
            return ([sse(last)] if last else []) + [sse("[DONE]")]

        return stream(sink, jobs, render, closing)

    async def sample(request: Request) -> Response:
        req = await parse(request, SampleRequest)
        assert isinstance(req, SampleRequest)
        sink, jobs = await submit(request, lambda sink: [sample_job(served, req, sink, watch=False)])
        results = await collect(request, sink, jobs)
        return JSONResponse(done_event(served, results[0]))

    async def sample_stream(request: Request) -> Response:
        req = await parse(request, SampleRequest)
        assert isinstance(req, SampleRequest)
        sink, jobs = await submit(request, lambda sink: [sample_job(served, req, sink, watch=True)])

        def render(item: State | Done) -> list[bytes]:
            if isinstance(item, State):
                return [sse(state_event(served, item), "state")]
            return [sse(done_event(served, item), "done")]

        return stream(sink, jobs, render, list)

    async def likelihood(request: Request) -> Response:
        req = await parse(request, LikelihoodRequest)
        assert isinstance(req, LikelihoodRequest)
        if not run.config.data.data_format.is_text:
            raise RequestError("text: this run models images; likelihoods of images are `maskdiff eval`'s", param="text")
        tokens = encode_checked(served, req.text, "text").numel()
        if tokens == 0:
            raise RequestError("text: nothing to score, the text is empty", param="text")
        check_limit(tokens, limits.max_score_tokens, "text", "tokens")
        check_limit(req.mc_samples, limits.max_mc_samples, "mc_samples", "Monte Carlo samples")
        sink, jobs = await submit(request, lambda sink: [Job(sink, work=lambda: run.score(req.text, req.mc_samples, req.seed))])
        score = (await collect(request, sink, jobs))[0].value
        draws = Estimator(score.estimator).draws(req.mc_samples)
        return JSONResponse(
            {
                "bits_per_token": score.bits_per_token,
                "bits_per_token_stderr": score.bits_per_token_stderr,
                "nats": score.nats,
                "num_tokens": score.num_tokens,
                "estimator": score.estimator,
                "mc_samples": draws,
                "seed": req.seed,
            }
        )

    def guarded(handler: Callable) -> Callable:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestError as err:
                return error_response(err)

        return endpoint

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(RequestError(f"{exc.detail}: {request.method} {request.url.path}", status=exc.status_code, code=code))

    @asynccontextmanager
    async def lifespan(app: Starlette):
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/api/info", guarded(info), methods=["GET"]),
        Route("/api/sample", guarded(sample), methods=["POST"]),
        Route("/api/sample/stream", guarded(sample_stream), methods=["POST"]),
        Route("/api/likelihood", guarded(likelihood), methods=["POST"]),
        Route("/v1/completions", guarded(completions), methods=["POST"]),
        Route("/v1/models", guarded(models), methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error}, lifespan=lifespan)
    app.state.served = served
    if token:
        app.add_middleware(BearerToken, token=token)
    return app


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, or a one-line error (port taken, unknown host)."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(128)
    except OSError as err:
        raise MaskdiffError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    return sock


def serve(
    checkpoint: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    limits: Limits | None = None,
    weights: str = "ema",
    precision: str = "auto",
    log_level: str = "info",
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the run in ``checkpoint`` until interrupted (``maskdiff serve``). ``token`` None reads
    ``$MASKDIFF_SERVE_TOKEN``; an empty token turns authentication off."""
    import uvicorn

    if token is None:
        token = os.environ.get(TOKEN_VARIABLE) or None
    run = load(checkpoint, weights=weights, precision=precision)
    app = create_app(run, limits, token)
    sock = listen(host, port)
    bound = sock.getsockname()
    url = f"http://{host if ':' not in host else f'[{host}]'}:{bound[1]}"
    if on_ready is not None:
        on_ready(url)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5))
    server.run(sockets=[sock])

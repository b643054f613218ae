"""`maskdiff serve` against a real server on loopback: uvicorn in a thread on a free port, spoken
to with httpx, the official openai client and headless Chromium (Debian's chromium, via playwright).

Every output is checked against what the library gives for the same request alone
(``maskdiff.load(...).sample``), so batching, streaming and the OpenAI shape are tested for what
they return, not only for their form.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import torch
import uvicorn
from conftest import make_corpus
from test_images import write_blob_dataset
from tiny_run import train_tiny

import maskdiff
from maskdiff.sampling import SamplerOptions, SamplingRequest
from maskdiff.serve import Limits, create_app
from maskdiff.serve.app import listen
from maskdiff.serve.engine import Done, Engine, Job, State
from maskdiff.serve.limits import Limits as ServeLimits
from maskdiff.training import train

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@dataclass
class Server:
    url: str
    engine: Engine

    def client(self, token: str | None = None, **kw) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kw)

    def wait_until(self, condition, seconds: float = 10.0) -> dict:
        """Poll the engine until ``condition(info)`` holds; the info that satisfied it."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            info = self.engine.info()
            if condition(info):
                return info
            time.sleep(0.01)
        raise AssertionError(f"timed out; engine state {self.engine.info()}")


@contextmanager
def serving(run, token: str | None = None, **limits):
    """A real uvicorn server for ``run`` on a free loopback port, in a thread."""
    app = create_app(run, Limits(**limits), token)
    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.01)
    try:
        yield Server(f"http://127.0.0.1:{sock.getsockname()[1]}", app.state.served.engine)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


class Gate:
    """Holds the worker busy (a job that waits) until opened, so that requests pile up in the queue."""

    def __init__(self, engine: Engine):
        self.event = threading.Event()
        engine.submit([Job(NullSink(), work=self.event.wait)])

    def open(self) -> None:
        self.event.set()


class NullSink:
    def put(self, item) -> None:
        pass


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("serve") / "corpus.txt"
    path.write_text(make_corpus(), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def text_run(corpus, tmp_path_factory):
    return maskdiff.load(train_tiny(tmp_path_factory.mktemp("md4") / "run", corpus), precision="fp32")


@pytest.fixture(scope="module")
def server(text_run):
    with serving(text_run, max_queue=8, max_batch=16, max_samples=8, max_body_bytes=4096, max_steps=200) as running:
        yield running


def solo(run, n, length, steps, prompt, seed, **options) -> list[str]:
    """What the library gives for one request alone: the completions after ``prompt``."""
    return [text[len(prompt) :] for text in run.sample(n, length=length, steps=steps, prompt=prompt or None, seed=seed, **options)]


def completion_texts(body: dict) -> list[str]:
    return [c["text"] for c in sorted(body["choices"], key=lambda c: c["index"])]


# ------------------------------------------------------------------ the OpenAI shape
def test_the_openai_client_gets_the_librarys_samples(server, text_run):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    result = client.completions.create(
        model="anything", prompt="The ", max_tokens=12, n=3, seed=5, temperature=0.8, extra_body={"steps": 8, "method": "low_confidence"}
    )
    assert result.object == "text_completion" and result.model == "run" and result.id.startswith("cmpl-")
    assert [c.text for c in sorted(result.choices, key=lambda c: c.index)] == solo(
        text_run, 3, 16, 8, "The ", 5, method="low_confidence", temperature=0.8
    )
    assert all(c.finish_reason == "length" and c.logprobs is None for c in result.choices)
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.total_tokens) == (12, 36, 48)
    assert [m.id for m in client.models.list().data] == ["run"]


def test_streamed_chunks_add_up_to_the_completion_and_stop_strings_cut_it(server, text_run):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    whole = solo(text_run, 2, 24, 12, "A ", 3)
    parts = {0: "", 1: ""}
    finish = {}
    for chunk in client.completions.create(model="run", prompt="A ", max_tokens=22, n=2, seed=3, stream=True, extra_body={"steps": 12}):
        for choice in chunk.choices:
            parts[choice.index] += choice.text
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    assert [parts[0], parts[1]] == whole and finish == {0: "length", 1: "length"}

    stop = whole[0][5]  # a character the first completion holds: it ends before its first occurrence
    expected = [text[: text.index(stop)] if stop in text else text for text in whole]
    streamed = {0: "", 1: ""}
    for chunk in client.completions.create(model="run", prompt="A ", max_tokens=22, n=2, seed=3, stream=True, stop=[stop], extra_body={"steps": 12}):
        for choice in chunk.choices:
            streamed[choice.index] += choice.text
    plain = client.completions.create(model="run", prompt="A ", max_tokens=22, n=2, seed=3, stop=stop, extra_body={"steps": 12})
    assert completion_texts(plain.model_dump()) == expected == [streamed[0], streamed[1]]
    assert plain.choices[0].finish_reason == "stop"


def test_a_list_of_prompts_gives_n_choices_each_in_order(server, text_run):
    with server.client() as http:
        body = http.post("/v1/completions", json={"prompt": ["The ", "A lord "], "max_tokens": 6, "n": 2, "seed": 8, "steps": 6, "echo": True}).json()
    # choice i is sample i of the seed: the second prompt's rows are samples 2 and 3
    first = [text_run.sample(4, length=10, steps=6, prompt="The ", seed=8)[i] for i in (0, 1)]
    second = [text_run.sample(4, length=13, steps=6, prompt="A lord ", seed=8)[i] for i in (2, 3)]
    assert completion_texts(body) == first + second
    assert body["usage"]["prompt_tokens"] == 2 * (4 + 7) and body["usage"]["completion_tokens"] == 4 * 6


def test_the_stream_ends_with_done_and_reports_usage_when_asked(server):
    body = {"prompt": "The ", "max_tokens": 4, "steps": 4, "seed": 1, "stream": True, "stream_options": {"include_usage": True}}
    with server.client() as http, http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    usage = json.loads(lines[-2][6:])
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 4


def test_infill_and_suffix_fill_the_gap(server, text_run):
    with server.client() as http:
        body = http.post("/v1/completions", json={"prompt": "", "infill": "The [[5]] is [[4]].", "seed": 2, "steps": 9}).json()
        expected = text_run.infill("The [[5]] is [[4]].", n=1, steps=9, seed=2)
        assert completion_texts(body) == expected
        assert expected[0].startswith("The ") and expected[0].endswith(".") and len(expected[0]) == len("The  is .") + 9
        middle = http.post("/v1/completions", json={"prompt": "The ", "suffix": " is good.", "max_tokens": 6, "seed": 2, "steps": 6}).json()
        filled = text_run.infill("The [[6]] is good.", n=1, steps=6, seed=2)[0]
        assert completion_texts(middle) == [filled[4:10]]


# ------------------------------------------------------------------ the other endpoints
def test_the_sample_stream_sends_every_state_and_the_librarys_result(server, text_run):
    with server.client() as http, http.stream("POST", "/api/sample/stream", json={"length": 20, "steps": 10, "seed": 7, "n": 2}) as response:
        assert response.status_code == 200
        events = [(e, json.loads(d)) for e, d in parse_sse(response.iter_lines())]
    states = [body for kind, body in events if kind == "state"]
    assert [s["step"] for s in states] == list(range(11)) and all(s["total"] == 10 for s in states)
    masked = [sum(tok is None for sample in s["samples"] for tok in sample["tokens"]) for s in states]
    assert masked[0] == 40 and masked[-1] == 0 and masked == sorted(masked, reverse=True)
    for before, after in zip(states, states[1:]):  # a revealed token never changes
        for a, b in zip(before["samples"], after["samples"]):
            assert all(x is None or x == y for x, y in zip(a["tokens"], b["tokens"]))
    assert states[-1]["nfe"] >= 1 and all({"elapsed", "tokens_per_s"} <= s.keys() for s in states)
    kind, done = events[-1]
    assert kind == "done" and done["texts"] == text_run.sample(2, length=20, steps=10, seed=7)
    assert ["".join(sample["tokens"]) for sample in states[-1]["samples"]] == done["texts"]


def parse_sse(lines) -> list[tuple[str, str]]:
    events, kind = [], "message"
    for line in lines:
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            events.append((kind, line[6:]))
            kind = "message"
    return events


def test_likelihood_and_info(server, text_run):
    with server.client() as http:
        body = http.post("/api/likelihood", json={"text": "The king is good.", "mc_samples": 4, "seed": 3}).json()
        score = text_run.score("The king is good.", mc_samples=4, seed=3)
        assert body["bits_per_token"] == pytest.approx(score.bits_per_token, rel=1e-9)
        assert body["bits_per_token_stderr"] == pytest.approx(score.bits_per_token_stderr, rel=1e-9) and body["bits_per_token_stderr"] > 0
        assert body["num_tokens"] == 17 and body["estimator"] == "nelbo"
        info = http.get("/api/info").json()
    assert info["objective"] == "md4" and info["modality"] == "text" and info["vocab_size"] == text_run.model.vocab_size
    assert info["limits"]["max_steps"] == 200 and "low_confidence" in info["rules"] and info["seq_len"] == 32


# ------------------------------------------------------------------ refusals
def bad_requests():
    return [
        ("/v1/completions", b"{not json", 400, None, "invalid_json"),
        ("/v1/completions", b"[1, 2]", 400, None, "invalid_json"),
        ("/v1/completions", {"prompt": "a", "temprature": 0.5}, 400, "temprature", "unknown_field"),
        ("/v1/completions", {"prompt": "a", "stream_options": {"include_usage": True, "x": 1}}, 400, "stream_options.x", "unknown_field"),
        ("/v1/completions", {"prompt": "a", "n": "2"}, 400, "n", "invalid_value"),
        ("/v1/completions", {"prompt": "a", "temperature": -1}, 400, "temperature", "invalid_value"),
        ("/v1/completions", {"prompt": "a", "n": 9}, 400, "n", "limit_exceeded"),
        ("/v1/completions", {"prompt": ["a"] * 5, "n": 2}, 400, "n", "limit_exceeded"),
        ("/v1/completions", {"prompt": "a", "steps": 201}, 400, "steps", "limit_exceeded"),
        ("/v1/completions", {"prompt": "a", "max_tokens": 32}, 400, "max_tokens", "limit_exceeded"),
        ("/v1/completions", {"prompt": "a", "method": "nope"}, 400, "method", "invalid_request"),
        ("/v1/completions", {"prompt": "a", "logprobs": 2}, 400, "logprobs", "invalid_request"),
        ("/v1/completions", {"prompt": "\u00e9t\u00e9"}, 400, "prompt", "invalid_request"),
        ("/v1/completions", {"prompt": "a", "infill": "b [[3]]"}, 400, "infill", "invalid_request"),
        ("/api/sample", {"length": 33}, 400, "length", "limit_exceeded"),
        ("/api/sample", {"label": 1}, 400, "label", "invalid_request"),
        ("/api/sample/stream", {"steps": 0}, 400, "steps", "invalid_value"),
        ("/api/likelihood", {"text": ""}, 400, "text", "invalid_request"),
        ("/api/likelihood", {"text": "a", "mc_samples": 65}, 400, "mc_samples", "limit_exceeded"),
        ("/api/likelihood", {"txt": "a"}, 400, "txt", "unknown_field"),
        ("/v1/completions", {"prompt": "a" * 5000}, 413, None, "body_too_large"),
    ]


@pytest.mark.parametrize(("path", "body", "status", "param", "code"), bad_requests())
def test_bad_requests_get_a_json_error_naming_the_field(server, path, body, status, param, code):
    with server.client() as http:
        response = http.post(path, content=body) if isinstance(body, bytes) else http.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code) and error["message"]
    if param:
        assert param.split(".")[0] in error["message"]


def test_an_oversized_body_without_a_length_is_refused_as_it_arrives(server):
    def chunks():
        for _ in range(10):
            yield b" " * 1000

    with server.client() as http:
        response = http.post("/v1/completions", content=chunks())  # chunked: no Content-Length
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"


def test_unknown_routes_and_methods(server):
    with server.client() as http:
        assert http.get("/v1/nothing").json()["error"]["code"] == "not_found"
        response = http.get("/v1/completions")
        assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"


# ------------------------------------------------------------------ the queue and the batching worker
def test_a_burst_is_batched_none_is_lost_and_rows_equal_their_solo_outputs(text_run):
    prompts = ["The ", "A ", "He ", "Lord "] * 2  # of different lengths, completed to the same length: one batch
    requests = [{"prompt": p, "max_tokens": 16 - len(p), "n": 1 + i % 2, "seed": 100 + i, "steps": 10} for i, p in enumerate(prompts)]
    with serving(text_run, max_queue=5, max_batch=16) as server:
        gate = Gate(server.engine)
        with ThreadPoolExecutor(len(requests)) as pool, server.client() as http:
            futures = [pool.submit(http.post, "/v1/completions", json=body) for body in requests]
            server.wait_until(lambda info: info["waiting"] == 5 and sum(f.done() for f in futures) >= 3)
            time.sleep(0.2)  # nothing else finishes while the worker is held
            refused = [f for f in futures if f.done()]
            assert len(refused) == 3 and all(f.result().status_code == 503 for f in refused)
            assert all(int(f.result().headers["Retry-After"]) >= 1 and f.result().json()["error"]["code"] == "queue_full" for f in refused)
            gate.open()
            answered = [(body, f.result()) for body, f in zip(requests, futures) if f not in refused]
        info = server.engine.info()
    assert len(answered) == 5 and all(r.status_code == 200 for _, r in answered)
    assert info["batches"] == 1 and info["largest_batch"] == info["rows"] == sum(body["n"] for body, _ in answered)
    for body, response in answered:
        assert completion_texts(response.json()) == solo(text_run, body["n"], 16, 10, body["prompt"], body["seed"])


def test_a_client_that_leaves_frees_its_slot(text_run):
    with serving(text_run, max_queue=1) as server:
        gate = Gate(server.engine)
        with server.client() as http:
            with http.stream("POST", "/api/sample/stream", json={"length": 8, "steps": 4}) as response:
                server.wait_until(lambda info: info["waiting"] == 1)
                assert http.post("/api/sample", json={"length": 8, "steps": 4}).status_code == 503
                assert response.status_code == 200
            server.wait_until(lambda info: info["waiting"] == 0 and info["cancelled"] == 1)  # the stream's job left the queue
            with ThreadPoolExecutor(1) as pool:
                later = pool.submit(http.post, "/api/sample", json={"length": 8, "steps": 4, "seed": 1})
                server.wait_until(lambda info: info["waiting"] == 1)
                gate.open()
                assert later.result().status_code == 200
            assert later.result().json()["texts"] == text_run.sample(1, length=8, steps=4, seed=1)


def test_a_batch_nobody_waits_for_stops_at_its_next_step(text_run):
    engine = Engine(text_run.model, text_run.device, text_run.dtype, ServeLimits())
    seen = []

    class LeaveAfterFirstState:
        def put(self, item) -> None:
            seen.append(item)
            if isinstance(item, State):
                job.cancelled = True

    request = SamplingRequest(1, 16, 50, SamplerOptions(), seeds=torch.zeros(1, dtype=torch.long))
    job = Job(LeaveAfterFirstState(), request, watch=True)
    engine._sample([job])
    assert len(seen) == 1 and engine.stats.stopped_batches == 1 and engine.stats.batches == 0
    assert not any(isinstance(item, Done) for item in seen)


# ------------------------------------------------------------------ the token
def test_the_token_is_enforced_when_set(text_run):
    with serving(text_run, token="s3cret") as server:
        with server.client() as http:
            refused = http.get("/api/info")
            assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
            assert refused.json()["error"]["type"] == "authentication_error"
            assert http.post("/v1/completions", json={"prompt": "a"}, headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert http.get("/").status_code == 200  # the page itself holds no data; it asks for the token
        with server.client(token="s3cret") as http:
            assert http.get("/api/info").status_code == 200
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.url + "/v1", api_key="wrong").completions.create(model="run", prompt="a", max_tokens=2)
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="s3cret")
        ok = client.completions.create(model="run", prompt="a", max_tokens=2, extra_body={"steps": 2})
        assert len(ok.choices[0].text) == 2


@pytest.mark.slow
def test_the_command_serves_with_the_token_from_the_environment(text_run, tmp_path):
    env = {**os.environ, "MASKDIFF_SERVE_TOKEN": "from-env", "PYTHONPATH": str(Path(maskdiff.__file__).parent.parent)}
    command = [sys.executable, "-m", "maskdiff", "serve", "--checkpoint", str(text_run.loaded.run_dir), "--port", "0", "--quiet", "--threads", "1"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "bearer token required" in line and "http://127.0.0.1:" in line, line + proc.stderr.read()
        url = line.split(" on ")[1].split(" ")[0]
        assert httpx.get(url + "/api/info").status_code == 401
        body = httpx.post(url + "/api/sample", json={"length": 6, "steps": 3, "seed": 4}, headers={"Authorization": "Bearer from-env"}).json()
        assert body["texts"] == text_run.sample(1, length=6, steps=3, seed=4)
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(20)
    assert code == 0


def test_a_taken_port_is_a_one_line_error(text_run, capsys):
    from maskdiff.cli import main

    taken = listen("127.0.0.1", 0)
    try:
        assert main(["serve", "--checkpoint", str(text_run.loaded.run_dir), "--port", str(taken.getsockname()[1])]) == 1
    finally:
        taken.close()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot listen on 127.0.0.1:" in err


# ------------------------------------------------------------------ other kinds of run
@pytest.fixture(scope="module")
def ar_run(corpus, tmp_path_factory):
    return maskdiff.load(train_tiny(tmp_path_factory.mktemp("ar") / "run", corpus, preset="ar-tiny"), precision="fp32")


def test_an_autoregressive_run_completes_and_refuses_what_it_cannot_do(ar_run):
    with serving(ar_run) as server, server.client() as http:
        body = http.post("/v1/completions", json={"prompt": "The ", "max_tokens": 10, "n": 2, "seed": 9}).json()
        assert completion_texts(body) == solo(ar_run, 2, 14, 10, "The ", 9)
        refused = http.post("/v1/completions", json={"prompt": "", "infill": "a [[3]] b"}).json()["error"]
        assert refused["param"] == "infill"
        refused = http.post("/v1/completions", json={"prompt": "a", "cfg": 1.0}).json()["error"]
        assert refused["param"] == "cfg" and "autoregressive" in refused["message"]
        score = http.post("/api/likelihood", json={"text": "The king."}).json()
        assert score["estimator"] == "exact" and score["bits_per_token_stderr"] == 0
        assert score["bits_per_token"] == pytest.approx(ar_run.score("The king.").bits_per_token, rel=1e-9)


def test_completion_logprobs_of_an_autoregressive_run_are_exact(ar_run):
    with serving(ar_run) as server, server.client() as http:
        body = http.post("/v1/completions", json={"prompt": "The ", "max_tokens": 8, "n": 2, "seed": 4, "logprobs": 2}).json()
    for choice in body["choices"]:
        logprobs, text = choice["logprobs"], choice["text"]
        assert "".join(logprobs["tokens"]) == text and len(logprobs["tokens"]) == 8
        assert logprobs["text_offset"] == [len("The ") + i for i in range(8)]  # one character per token
        # log p(completion | prompt) = log p(prompt + completion) - log p(prompt), from the exact likelihood
        exact = ar_run.score("The " + text).nats - ar_run.score("The ").nats
        assert -sum(logprobs["token_logprobs"]) == pytest.approx(exact, rel=1e-6)
        for value, top in zip(logprobs["token_logprobs"], logprobs["top_logprobs"]):
            assert len(top) == 2 and max(top.values()) >= value - 1e-9 and all(v <= 0 for v in top.values())


def test_completion_logprobs_of_a_diffusion_run_are_those_at_each_reveal(server, text_run):
    from maskdiff.generation.frontend import run_sampler
    from maskdiff.generation.text import plan_text

    body = {"prompt": "The ", "max_tokens": 10, "n": 2, "seed": 6, "steps": 10, "logprobs": 0}
    with server.client() as http:
        response = http.post("/v1/completions", json=body).json()
        refused = http.post("/v1/completions", json={**body, "logprobs": 2}).json()["error"]
        streamed = http.post("/v1/completions", json={**body, "stream": True}).json()["error"]
    assert refused["param"] == "logprobs" and "alternatives" in refused["message"]
    assert streamed["param"] == "logprobs" and "stream" in streamed["message"]
    plan = plan_text(text_run.loaded, 14, "The ")
    final = run_sampler(text_run.model, plan.request(2, 10, 6), device=text_run.device).final
    assert final.logprobs is not None
    for row, choice in enumerate(sorted(response["choices"], key=lambda c: c["index"])):
        logprobs = choice["logprobs"]
        assert "".join(logprobs["tokens"]) == choice["text"] and logprobs["top_logprobs"] == [None] * 10
        assert logprobs["token_logprobs"] == pytest.approx(final.logprobs[row, 4:14].tolist(), rel=1e-9)
        assert all(v <= 0 for v in logprobs["token_logprobs"])


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    write_blob_dataset(root)
    cfg = maskdiff.presets.get_preset("image-tiny").with_overrides(
        [f"data.path={root}", "data.image_size=8", "data.seq_len=64", "model.num_classes=2"]
        + ["train.steps=2", "train.batch_size=4", "train.eval_every=0"]
    )
    train(cfg, root / "run", progress=False)
    return maskdiff.load(root / "run", precision="fp32")


def test_an_image_run_streams_pixels_and_refuses_text_endpoints(image_run):
    from maskdiff.generation.images import generate_images

    with serving(image_run) as server, server.client() as http:
        info = http.get("/api/info").json()
        assert info["modality"] == "image" and info["image"] == {"size": 8, "channels": 1, "num_classes": 2} and info["seq_len"] == 64
        with http.stream("POST", "/api/sample/stream", json={"steps": 6, "seed": 3, "n": 2, "label": 1, "cfg": 1.0}) as response:
            events = [(e, json.loads(d)) for e, d in parse_sse(response.iter_lines())]
        assert http.post("/v1/completions", json={"prompt": "a"}).json()["error"]["param"] == "prompt"
        assert http.post("/api/sample", json={"label": 5}).json()["error"]["param"] == "label"
        assert http.post("/api/sample", json={"prompt": "x"}).json()["error"]["param"] == "prompt"
    states = [body for kind, body in events if kind == "state"]
    assert len(states) == 7 and all(len(s["pixels"]) == 2 and len(s["pixels"][0]) == 64 for s in states)
    assert sum(v < 0 for row in states[0]["pixels"] for v in row) == 128 and min(min(row) for row in states[-1]["pixels"]) >= 0
    expected = generate_images(image_run.loaded.run_dir, 2, 6, seed=3, label=1, cfg=1.0, precision="fp32", output=grid_path(image_run))
    assert events[-1][1]["pixels"] == torch.from_numpy(expected.images).reshape(2, -1).tolist()


def grid_path(run) -> Path:
    return Path(run.loaded.run_dir).parent / "grid.png"


# ------------------------------------------------------------------ the page in a browser
@pytest.mark.slow
def test_the_page_shows_the_unmasking_in_headless_chromium(text_run):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium; scripts/install.sh --test does)")
    from playwright.sync_api import sync_playwright

    with serving(text_run) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 640})
            page.goto(server.url + "/")
            page.wait_for_selector("body[data-status=ready]")
            assert "md4" in page.inner_text("#model")
            page.fill("#prompt", "The king ")
            page.fill("#steps", "24")
            page.fill("#n", "2")
            page.fill("#seed", "11")
            page.click("#start")
            page.wait_for_selector("body[data-status=done]", timeout=30_000)
            masked = page.evaluate("window.maskdiffStates")
            texts = page.evaluate("window.maskdiffTexts")
            shown = [el.inner_text() for el in page.query_selector_all("#samples .sample")]
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)
        finally:
            browser.close()
    free = 2 * (32 - len("The king "))
    assert len(masked) == 25 and masked[0] == free and masked[-1] == 0
    assert any(0 < m < free for m in masked)  # intermediate states were drawn
    assert texts == text_run.sample(2, length=32, steps=24, prompt="The king ", seed=11) == shown
    assert (ARTIFACTS / "serve-page.png").stat().st_size > 10_000

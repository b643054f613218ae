"""``POST /v1/completions`` in the OpenAI completions shape, for text runs.

A prompt is continued by ``max_tokens`` positions (default: up to the run's sequence length);
``suffix`` adds text after them, so the model fills the gap between prompt and suffix; the extra
field ``infill`` takes a whole template (``"To be, or [[12]] to be"``) and the completion is the
filled template. ``n`` sequences per prompt; choice i of a request with seed s is sample i of
seed s, whatever else the server is doing. ``stop`` cuts a completion before its first stop
string (``finish_reason: "stop"``, as does a fine-tuned run's end of text; otherwise "length").

Streaming sends OpenAI chunks: a masked diffusion model settles positions in any order, so a
choice's text is sent as its left-to-right prefix of settled positions grows (the text a client
concatenates equals the final completion), then a chunk with the finish reason, an optional usage
chunk (``stream_options.include_usage``) and ``data: [DONE]``.

``logprobs`` (not streamed): each choice's tokens with their log-probabilities in the OpenAI
shape (``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset``). An autoregressive run's
are exact, log p(token | the tokens before it), with ``logprobs`` alternatives each; a masked
diffusion run has no left-to-right chain, so its figure for a token is the log-probability of
the value it drew under the prediction at the step that revealed it (after temperature, top-k
and top-p), and it keeps no alternatives (``logprobs`` > 0 is refused).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import torch

from maskdiff.generation.frontend import TokenLogprobs
from maskdiff.generation.text import INFILL_SLOT, TextPlan, decode
from maskdiff.serve.engine import Done, Job, Sink, State
from maskdiff.serve.jobs import Served, check_sampling, encode_checked, sampling_job, text_plan
from maskdiff.serve.requests import CompletionRequest, RequestError


@dataclass
class Part:
    """The rows of one prompt: where their completion text lies in the sampled sequence."""

    first_choice: int
    prompt: str
    plan: TextPlan
    start: int  # first position of the completion text
    end: int  # one past its last position
    prompt_tokens: int


def completion_jobs(served: Served, req: CompletionRequest, sink: Sink) -> list[Job]:
    """One job per prompt, checked; a 400 :class:`RequestError` names the field at fault."""
    if not served.run.config.data.data_format.is_text:
        raise RequestError("this run models images: completions are for text runs; use /api/sample or /api/sample/stream", param="prompt")
    if req.logprobs is not None:
        if req.stream:
            raise RequestError(
                "logprobs: not available while streaming (a diffusion model settles tokens out of order); ask without stream", param="logprobs"
            )
        if req.logprobs and not served.run.model.left_to_right:
            raise RequestError(
                "logprobs: a masked diffusion model records the log-probability of each token it reveals, "
                "not of the alternatives; ask for logprobs 0",
                param="logprobs",
            )
    prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
    if not prompts:
        raise RequestError("prompt: give a prompt (a string) or a non-empty list of them", param="prompt")
    seed = check_sampling(served, req, len(prompts) * req.n)
    jobs = []
    for index, prompt in enumerate(prompts):
        part = plan_part(served, req, prompt, index * req.n)
        job = sampling_job(
            served,
            sink,
            req.n,
            part.plan.length,
            req.steps,
            part.plan.options,
            seed,
            part.first_choice,
            part.plan.given,
            watch=req.stream,
            tag=part,
        )
        job.logprobs = req.logprobs
        jobs.append(job)
    return jobs


def plan_part(served: Served, req: CompletionRequest, prompt: str, first_choice: int) -> Part:
    """The sampler plan of one prompt: a continuation, a gap before ``suffix``, or an ``infill`` template."""
    left_to_right = served.run.model.left_to_right
    if req.infill is not None or req.suffix is not None:
        field = "infill" if req.infill is not None else "suffix"
        if left_to_right:
            raise RequestError(f"{field}: an autoregressive model only continues a prompt", param=field)
    if req.infill is not None:
        if prompt:
            raise RequestError("infill: give either a prompt or an infill template, not both (leave prompt empty)", param="infill")
        for name in ("suffix", "max_tokens"):
            if getattr(req, name) is not None:
                raise RequestError(f"{name}: an infill template sets the positions to generate itself", param=name)
        encode_checked(served, INFILL_SLOT.sub("", req.infill), "infill")
        plan = text_plan(served, req, None, None, req.infill, "infill")
        given = int((plan.given != served.run.mask_id).sum()) if plan.given is not None else 0
        return Part(first_choice, prompt, plan, 0, plan.length - plan.padded, given)
    prefix = encode_checked(served, prompt, "prompt").numel()
    suffix = 0
    if req.suffix is not None:
        suffix = encode_checked(served, req.suffix, "suffix").numel()
        if INFILL_SLOT.search(prompt) or INFILL_SLOT.search(req.suffix):
            raise RequestError("suffix: with a suffix, neither it nor the prompt may contain [[N]] (use infill for templates)", param="suffix")
    if prefix + suffix >= served.max_length:
        raise RequestError(
            f"prompt: {prefix + suffix} tokens of prompt and suffix leave no room in this server's {served.max_length} tokens per sequence",
            param="prompt",
        )
    max_tokens = req.max_tokens or served.run.config.data.seq_len - prefix - suffix
    if max_tokens < 1:  # the prompt fills the run's sequence length; the server allows longer ones
        raise RequestError("max_tokens: the prompt fills the run's sequence length; ask for max_tokens explicitly", param="max_tokens")
    if req.suffix is not None:
        plan = text_plan(served, req, None, None, f"{prompt}[[{max_tokens}]]{req.suffix}", "max_tokens")
    else:
        plan = text_plan(served, req, prefix + max_tokens, prompt or None, None, "max_tokens")
    return Part(first_choice, prompt, plan, prefix, prefix + max_tokens, prefix + suffix)


def stop_strings(req: CompletionRequest) -> list[str]:
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    return [s for s in stops if s]


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """``text`` before its earliest stop string, and whether one was found."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def final_choice(served: Served, part: Part, ids: list[int], stops: list[str]) -> tuple[str, str]:
    """(completion text, finish reason) of one finished row."""
    options = part.plan.options
    span = ids[part.start : part.end]
    cut = options.eos_id if options.truncate_after_eos else None
    text, stopped = cut_at_stop(decode(served.run.tokenizer, span, cut), stops)
    return text, "stop" if stopped or (cut is not None and cut in span) else "length"


def settled_text(served: Served, part: Part, ids: list[int], stops: list[str]) -> tuple[str, bool]:
    """The text of a row's left-to-right prefix of settled positions, safe to send (it is a prefix
    of the final completion), and whether a stop string already ends it."""
    mask_id = served.run.mask_id
    span = ids[part.start : part.end]
    settled = span[: span.index(mask_id)] if mask_id in span else span
    options = part.plan.options
    text, stopped = cut_at_stop(decode(served.run.tokenizer, settled, options.eos_id if options.truncate_after_eos else None), stops)
    if not stopped:
        hold = max((len(s) for s in stops), default=1) - 1  # a stop string may begin at the end
        text = text[: len(text) - hold] if hold else text
        text = text.rstrip("\ufffd")  # a multi-byte character cut in half
    return text, stopped


def logprobs_body(served: Served, part: Part, ids: list[int], scores: TokenLogprobs, row: int, text: str) -> dict:
    """The OpenAI ``logprobs`` object of one choice: its tokens, their log-probabilities, the
    ``top_logprobs`` alternatives (autoregressive runs) and each token's character offset in
    prompt + completion. The tokens are the completion's (not the echoed prompt's), up to where
    its text ends. An autoregressive run's figures are exact; a diffusion run's are each token's
    log-probability under the prediction at the step that revealed it
    (:func:`maskdiff.generation.frontend.token_logprobs`)."""
    tokenizer = served.run.tokenizer
    body: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    consumed = 0
    for position in range(part.start, part.end):
        if consumed >= len(text):
            break
        piece = tokenizer.decode([ids[position]])
        value = float(scores.chosen[row, position])
        body["tokens"].append(piece)
        body["token_logprobs"].append(None if math.isnan(value) else value)
        body["text_offset"].append(len(part.prompt) + consumed)
        if scores.top_ids is not None and scores.top_values is not None:
            pairs = zip(scores.top_ids[row, position].tolist(), scores.top_values[row, position].tolist())
            body["top_logprobs"].append({tokenizer.decode([i]): v for i, v in pairs})
        else:
            body["top_logprobs"].append(None)
        consumed += len(piece)
    return body


def usage(parts: list[Part], n: int) -> dict:
    prompt = sum(p.prompt_tokens for p in parts) * n
    completion = sum(p.plan.length - p.plan.padded - p.prompt_tokens for p in parts) * n
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class Completion:
    """The state of one completions request: its id, choices and (streaming) what each choice has sent."""

    def __init__(self, served: Served, req: CompletionRequest, jobs: list[Job]):
        self.served, self.req, self.jobs = served, req, jobs
        self.id = "cmpl-" + secrets.token_hex(12)
        self.stops = stop_strings(req)
        self.sent = [""] * (len(jobs) * req.n)
        self.finished: list[str | None] = [None] * len(self.sent)
        self.echoed: set[int] = set()

    def envelope(self, choices: list[dict]) -> dict:
        return {"id": self.id, "object": "text_completion", "created": self.served.created, "model": self.served.name, "choices": choices}

    def choice(self, index: int, text: str, finish: str | None, logprobs: dict | None = None) -> dict:
        return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish}

    def response(self, results: dict[int, Done]) -> dict:
        """The whole response once every job is done (``results`` by job index)."""
        choices = []
        for j, job in enumerate(self.jobs):
            part: Part = job.tag
            scores = results[j].logprobs
            for r, ids in enumerate(_rows(results[j].z)):
                text, finish = final_choice(self.served, part, ids, self.stops)
                logprobs = None if scores is None else logprobs_body(self.served, part, ids, scores, r, text)
                choices.append(self.choice(part.first_choice + r, (part.prompt if self.req.echo else "") + text, finish, logprobs))
        return {**self.envelope(choices), "usage": usage([job.tag for job in self.jobs], self.req.n)}

    def chunks(self, event: State | Done) -> list[dict]:
        """The stream chunks one worker event gives: new settled text, or the end of its choices."""
        part: Part = event.job.tag
        out = []
        for r, ids in enumerate(_rows(event.z)):
            index = part.first_choice + r
            if self.finished[index] is not None:
                continue
            finish: str | None
            if isinstance(event, Done):
                text, finish = final_choice(self.served, part, ids, self.stops)
            else:
                text, stopped = settled_text(self.served, part, ids, self.stops)
                finish = "stop" if stopped else None
            if self.req.echo and part.prompt and index not in self.echoed:
                out.append(self.envelope([self.choice(index, part.prompt, None)]))
                self.echoed.add(index)
            if len(text) > len(self.sent[index]) or finish is not None:
                out.append(self.envelope([self.choice(index, text[len(self.sent[index]) :], finish)]))
                self.sent[index] = text
            self.finished[index] = finish
        return out

    def usage_chunk(self) -> dict | None:
        if self.req.stream_options is None or not self.req.stream_options.include_usage:
            return None
        return {**self.envelope([]), "usage": usage([job.tag for job in self.jobs], self.req.n)}


def _rows(z: torch.Tensor | None) -> list[list[int]]:
    assert z is not None
    return z.tolist()

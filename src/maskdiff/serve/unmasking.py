"""``POST /api/sample`` and ``/api/sample/stream``: sequences or images, with every intermediate state.

A state event holds, per sample, the tokens so far (null where still masked; for images the
sub-pixel values, -1 where masked), with the step, the network evaluations (NFE) of the batch
so far, the seconds since the batch started and the tokens settled per second. The done event
holds the final texts (or pixels) and the totals.
"""

from __future__ import annotations

import torch

from maskdiff.errors import MaskdiffError
from maskdiff.generation.images import image_labels
from maskdiff.generation.text import TextPlan, decode_partial
from maskdiff.sampling import SamplerOptions
from maskdiff.serve.engine import Done, Job, Sink, State
from maskdiff.serve.jobs import Served, as_request_error, check_sampling, encode_checked, sampling_job, text_plan
from maskdiff.serve.requests import RequestError, SampleRequest, check_limit


def sample_job(served: Served, req: SampleRequest, sink: Sink, watch: bool) -> Job:
    """The one job of a sample request, checked; a 400 :class:`RequestError` names the field at fault."""
    seed = check_sampling(served, req, req.n)
    if served.run.config.data.data_format.is_image:
        for name in ("prompt", "infill", "length", "eos"):
            if getattr(req, name) is not None:
                raise RequestError(f"{name}: this run models images (prompts, templates, lengths and ends of text are for text runs)", param=name)
        try:
            options = SamplerOptions(**req.sampler_options())
            labels = image_labels(served.run.loaded, req.n, req.label, options)
        except MaskdiffError as err:
            raise as_request_error(err) from None
        info = {"seed": seed, "kind": "image"}
        return sampling_job(served, sink, req.n, served.sequence_length(), req.steps, options, seed, labels=labels, watch=watch, tag=info)
    if req.label is not None:
        raise RequestError("label: class labels are for image runs", param="label")
    if req.length is not None:
        check_limit(req.length, served.max_length, "length", "tokens per sequence")
    for name in ("prompt", "infill"):
        text = getattr(req, name)
        if text is not None:
            encode_checked(served, text if name == "prompt" else text.replace("[[", "").replace("]]", ""), name)
    plan = text_plan(served, req, req.length, req.prompt, req.infill, "infill" if req.infill is not None else "length")
    info = {"seed": seed, "kind": "text", "plan": plan}
    return sampling_job(served, sink, req.n, plan.length, req.steps, plan.options, seed, given_row=plan.given, watch=watch, tag=info)


def generated(job: Job, z: torch.Tensor, mask_id: int) -> int:
    """Positions of ``z`` settled by the sampler so far (given ones not counted)."""
    request = job.request
    given = 0 if request is None or request.given is None else int((request.given != mask_id).sum())
    return int((z != mask_id).sum()) - given


def state_event(served: Served, event: State) -> dict:
    mask_id = served.run.mask_id
    body = {
        "step": event.step,
        "total": event.total,
        "nfe": event.nfe,
        "elapsed": round(event.elapsed, 4),
        "tokens_per_s": round(generated(event.job, event.z, mask_id) / event.elapsed, 1) if event.elapsed > 0 else 0.0,
    }
    if served.run.config.data.data_format.is_image:
        return {**body, "pixels": torch.where(event.z == mask_id, -1, event.z).tolist()}
    tokenizer = served.run.tokenizer
    rows = event.z.tolist()
    samples = [
        {"tokens": [None if i == mask_id else tokenizer.decode([i]) for i in row], "text": decode_partial(tokenizer, row, mask_id)} for row in rows
    ]
    return {**body, "samples": samples}


def done_event(served: Served, event: Done) -> dict:
    assert event.z is not None
    job = event.job
    body = {
        "seed": job.tag["seed"],
        "nfe": event.nfe,
        "seconds": round(event.seconds, 4),
        "tokens_per_s": round(generated(job, event.z, served.run.mask_id) / event.seconds, 1) if event.seconds > 0 else 0.0,
    }
    if served.run.config.data.data_format.is_image:
        return {**body, "pixels": event.z.tolist()}
    plan: TextPlan = job.tag["plan"]
    return {**body, "texts": plan.decode(served.run.tokenizer, event.z)}

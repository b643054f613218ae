"""Text generation from a trained run: load the checkpoint, build the conditioning, sample, decode.

Samples files (``maskdiff sample --output``) hold the texts separated by :data:`SAMPLE_DIVIDER`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from maskdiff.checkpoint import LoadedRun, load_run, warn
from maskdiff.errors import MaskdiffError, plural
from maskdiff.generation.frontend import check_memory, run_sampler
from maskdiff.hardware import resolve_device, resolve_precision
from maskdiff.sampling import STEPS, SamplerOptions, SamplingRequest, Step
from maskdiff.sampling.options import OptionError, literal

MASK_CHAR = "_"
INFILL_SLOT = re.compile(r"\[\[(\d+)\]\]")
SAMPLE_DIVIDER = "\n" + "-" * 40 + "\n"  # between the texts of a samples file


def join_samples(texts: list[str]) -> str:
    """The texts as one samples file (without the final newline)."""
    return SAMPLE_DIVIDER.join(texts)


def split_samples(text: str) -> list[str]:
    """The texts of a samples file: separated by :data:`SAMPLE_DIVIDER`, or else one per non-empty line."""
    text = text.rstrip("\n")
    texts = text.split(SAMPLE_DIVIDER) if SAMPLE_DIVIDER in text else text.split("\n")
    return [t for t in texts if t.strip()]


@dataclass
class Generation:
    texts: list[str]
    seconds: float
    tokens_per_s: float
    nfe: int  # network evaluations (a batched CFG pair counts once)
    tokens_per_evaluation: float = 0.0  # positions revealed per network evaluation of one sample


def conditioning(tokenizer, mask_id: int, length: int, prompt: str | None, infill: str | None) -> torch.Tensor | None:
    """The ``given`` row for a prefix prompt or an infill template.  -> [L] or None

    An infill template is text in which every ``[[N]]`` stands for N positions to generate,
    e.g. ``"To be, or [[12]] to be"``; the template sets the length.
    """
    if prompt is not None and infill is not None:
        raise MaskdiffError("give either a prompt or an infill template, not both")
    if infill is not None:
        pieces, last = [], 0
        for match in INFILL_SLOT.finditer(infill):
            pieces.append(tokenizer.encode(infill[last : match.start()]))
            pieces.append(torch.full((int(match.group(1)),), mask_id, dtype=torch.long))
            last = match.end()
        if not pieces:
            raise MaskdiffError("the infill template has no [[N]] slot to fill")
        pieces.append(tokenizer.encode(infill[last:]))
        return torch.cat(pieces)
    if prompt is not None:
        ids = tokenizer.encode(prompt)
        if ids.numel() > length:
            raise MaskdiffError(f"the prompt has {ids.numel()} tokens, more than the sequence length {length}")
        return torch.cat([ids, torch.full((length - ids.numel(),), mask_id, dtype=torch.long)])
    return None


def generate_text(
    checkpoint: str | Path,
    num_samples: int = 4,
    length: int | None = None,
    steps: int = STEPS.default,
    seed: int | Sequence[int] = 0,
    prompt: str | Sequence[str] | None = None,
    infill: str | None = None,
    eos: str | None = None,
    weights: str = "ema",
    device: str = "auto",
    precision: str = "auto",
    progress: bool = False,
    on_step: Callable[[Step, list[str]], None] | None = None,
    **sampler_options,
) -> Generation:
    """Sample ``num_samples`` texts of ``length`` tokens (default: the run's sequence length) from
    the run in ``checkpoint`` (a run folder or one of its checkpoints); see :func:`generate_from_run`."""
    dev = resolve_device(device)
    run = load_run(checkpoint, weights=weights, device=dev)
    return generate_from_run(
        run,
        num_samples,
        length,
        steps,
        seed,
        prompt,
        infill,
        eos,
        dev,
        resolve_precision(precision, dev),
        progress,
        on_step,
        **sampler_options,
    )


def generate_from_run(
    run: LoadedRun,
    num_samples: int = 4,
    length: int | None = None,
    steps: int = STEPS.default,
    seed: int | Sequence[int] = 0,
    prompt: str | Sequence[str] | None = None,
    infill: str | None = None,
    eos: str | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
    on_step: Callable[[Step, list[str]], None] | None = None,
    **sampler_options,
) -> Generation:
    """Sample ``num_samples`` texts from a loaded run, with a ``prompt`` or an ``infill`` template.

    ``prompt`` may be a list, one prompt per sample (of any lengths: a mixed-length batch), and
    ``seed`` a list, one seed per sample: each sample is then exactly what it is alone with its
    prompt and seed (a diffusion run needs no padding: every row fixes its own positions).

    ``sampler_options`` are fields of :class:`maskdiff.sampling.SamplerOptions` (method, grid,
    temperature, top_k, top_p, cfg, min_length, truncate_after_eos, ...). ``eos`` is the text of
    the end-of-text token; a run trained on prompt/response pairs (``maskdiff finetune``) records
    its own (``data.eos``), which is the default, with the samples cut at it. ``dtype`` is the
    autocast precision (None: fp32). ``on_step(step, texts)`` sees every intermediate state with
    masks shown as underscores.

    A ``length`` beyond the run's trained sequence length gets a one-line warning; one whose
    sampling cannot fit in memory is refused before anything runs (:func:`check_memory`).
    """
    prompts = [prompt] if prompt is None or isinstance(prompt, str) else list(prompt)
    if len(prompts) > 1 and len(prompts) != num_samples:
        raise MaskdiffError(f"{len(prompts)} prompts for {num_samples} samples: give one prompt per sample")
    plans = [plan_text(run, length, text, infill, eos, **sampler_options) for text in prompts]
    plan = plans[0]  # the prompts change only the given rows: every plan has the same length and options
    request = plan.request(num_samples, steps, seed, [p.given for p in plans] if len(plans) > 1 else None)
    check_memory(run, request, device)
    warn_beyond_training(run, plan.length)

    def show(step: Step) -> None:
        if on_step is not None:
            on_step(step, [decode_partial(run.tokenizer, row, run.model.mask_id) for row in step.z.tolist()])

    result = run_sampler(run.model, request, device=device, dtype=dtype, progress=progress, on_step=show)
    final = result.final
    texts = plan.decode(run.tokenizer, final.z)
    return Generation(texts, result.seconds, num_samples * plan.length / result.seconds, final.nfe, final.tokens_per_evaluation)


def warn_beyond_training(run: LoadedRun, length: int) -> None:
    """One line on stderr when ``length`` goes beyond the positions the run was trained on."""
    trained = run.config.data.seq_len
    if length > trained:
        warn(
            f"the model was trained on sequences of {plural(trained, 'token')}; {plural(length, 'token')} go beyond that, "
            "and what it samples past its trained length is untested extrapolation"
        )


@dataclass
class TextPlan:
    """What a text request asks of the sampler: the conditioning, the length and the options.

    Rows of requests whose plans share ``length`` and ``options`` (and steps) can be sampled as
    one batch, each with its own ``given`` row (``maskdiff serve`` does).
    """

    given: torch.Tensor | None  # [length] ids with the mask id at free positions, or None: all free
    length: int  # positions sampled, the padding of a fine-tuned run included
    padded: int  # given end-of-text padding at the end, not part of the text
    prefix: int  # tokens of the prompt (0 without one)
    options: SamplerOptions

    def request(self, rows: int, steps: int, seed: int | Sequence[int] = 0, given_rows: list[torch.Tensor | None] | None = None) -> SamplingRequest:
        """The sampling request of ``rows`` samples of this plan (``given_rows``: one given row per
        sample, of plans that differ only in their prompts)."""
        given = None
        if given_rows is not None:
            given = torch.stack([g for g in given_rows if g is not None])  # every row is a prompt here
        elif self.given is not None:
            given = self.given.expand(rows, -1).clone()
        return SamplingRequest.seeded(rows, self.length, steps, self.options, seed, given=given)

    def decode(self, tokenizer, z: torch.Tensor, start: int = 0) -> list[str]:
        """The texts of final states z [N, length] from position ``start`` on, cut at the end of
        text when the options say so."""
        cut = self.options.eos_id if self.options.truncate_after_eos else None
        return [decode(tokenizer, row[start : self.length - self.padded], cut) for row in z.tolist()]


def plan_text(
    run: LoadedRun, length: int | None = None, prompt: str | None = None, infill: str | None = None, eos: str | None = None, **sampler_options
) -> TextPlan:
    """Check a text request and turn it into a :class:`TextPlan` (arguments as for :func:`generate_from_run`)."""
    mask_id = run.model.mask_id
    if eos is None and run.config.data.eos:
        eos = run.config.data.eos
    if eos is not None:  # the samples end at the end of text
        sampler_options.setdefault("truncate_after_eos", True)
    length = run.config.data.seq_len if length is None else length
    if length < 1:
        raise OptionError("length", f"{{length}} must be >= 1, got {length}")
    given_row = conditioning(run.tokenizer, mask_id, length, prompt, infill)
    if given_row is not None:
        length = given_row.numel()
    padded = given_padding(run, length)
    if padded:  # the padding after the response, given as in training (maskdiff/data/pairs.py)
        pad = torch.full((padded,), int(run.tokenizer.encode(run.config.data.eos)[0]), dtype=torch.long)
        free = torch.full((length,), mask_id, dtype=torch.long)
        given_row = torch.cat([free if given_row is None else given_row, pad])
        length += padded
    if eos is not None:
        eos_ids = run.tokenizer.encode(eos)
        if eos_ids.numel() != 1:
            raise OptionError("eos_id", f"the end-of-text marker {literal(repr(eos))} ({{eos_id}}) must be exactly one token, not {eos_ids.numel()}")
        sampler_options["eos_id"] = int(eos_ids[0])
    options = SamplerOptions(**sampler_options)
    if options.cfg and given_row is None:
        raise OptionError("cfg", "classifier-free guidance ({cfg}) needs a prompt or an infill template to guide towards")
    prefix = len(run.tokenizer.encode(prompt)) if prompt is not None else 0
    return TextPlan(given_row, length, padded, prefix, options)


def given_padding(run: LoadedRun, length: int) -> int:
    """How many padding positions to give after ``length`` generated ones: for a masked diffusion run
    trained on prompt/response pairs, up to the run's sequence length (it learned where a response
    ends from the given padding, so ``length`` is prompt + response + end of text); else none."""
    data = run.config.data
    if not data.data_format.padded_examples or run.model.left_to_right:
        return 0
    return max(0, data.seq_len - length)


def decode(tokenizer, ids: list[int], cut_at: int | None = None) -> str:
    """Decode ids, ending before the first ``cut_at`` id when given."""
    if cut_at is not None and cut_at in ids:
        ids = ids[: ids.index(cut_at)]
    return tokenizer.decode(ids)


def decode_partial(tokenizer, ids: list[int], mask_id: int) -> str:
    """One display line for ids that may hold the mask id: masks as underscores, newlines as ↵."""
    return "".join(MASK_CHAR if i == mask_id else tokenizer.decode([i]) for i in ids).replace("\n", "↵")

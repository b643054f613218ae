"""The sampling loop: start from masks and reveal tokens along a time grid from t = 1 to 0.

A sampler needs only a model with ``guided_predict``, ``schedule`` and ``mask_id``, so a CLI, a
test or a server drives it the same way; :func:`iterate` yields every intermediate state.

Every step has two parts: a *rule* (:mod:`maskdiff.sampling.rules`, chosen by
``SamplerOptions.method``) decides which rows need the network and which masked positions to
reveal, and the revealed positions take values drawn from the model's prediction (after
temperature, top-k and top-p). The step from t to s hands the rule the chance that a masked
position is revealed, (alpha_s - alpha_t) / (1 - alpha_t): one number, or one per token value
for state-dependent schedules (GenMD4).

``block_size`` makes any rule semi-autoregressive: blocks of that many positions are decoded
left to right, each with its own share of the steps and its own time grid. The last step of
every block reveals whatever is still masked in it, whatever the rule, so the output never
holds the mask id.

Randomness: each sample has its own counter-based stream (seeded from ``generator``), and every
step draws the same numbers (one reveal and one value draw per position) whatever the rule and
whether or not the network is called, so samples depend only on the seed and their index, never
on the batch size or on skipped network calls. Values are drawn by inverse-CDF sampling in
float64 (float32 noise truncates the tail of the distribution).

Memory: the float64 arithmetic of a draw (temperature, top-k, top-p, the CDF) runs over chunks of
positions of at most ``DRAW_CHUNK_BYTES`` per [positions, V] float64 tensor, and the logits stay in
float32 when a float64 copy of them would be larger than that, so a 50k-token vocabulary never
has full-vocabulary float64 probabilities for every position. Every draw is per position, so the
chunks give exactly the values of one pass (small vocabularies fit in one chunk: the same
computation as ever).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from maskdiff.errors import MaskdiffError
from maskdiff.sampling.distributions import GRIDS, filter_probs, time_grid
from maskdiff.sampling.rules import RULES, Prediction, Rule, StepContext, check_rule_options
from maskdiff.sampling.streams import SampleStreams

DRAW_CHUNK_BYTES = 1 << 23  # float64 bytes of one [positions, V] tensor of a draw (8 MiB)


@dataclass
class SamplerOptions:
    """How to sample; validated when built (the rule checks its own options)."""

    method: str = "ancestral"  # the reveal rule, a name in maskdiff.sampling.RULES
    grid: str = "cosine"
    temperature: float = 1.0
    top_k: int = 0  # keep the k most likely values; 0 keeps all
    top_p: float = 1.0  # keep the smallest set of values with this much probability
    tokens_per_step: int = 0  # low_confidence / random: reveal this many per step (0: as the schedule expects)
    threshold: float = 0.9  # threshold rule: reveal positions whose value has at least this probability
    block_size: int = 0  # > 0: semi-autoregressive blocks of this many positions, left to right
    cfg: float = 0.0  # classifier-free guidance weight w: logits = u + (w + 1)(c - u)
    eos_id: int | None = None  # end-of-text token id, for min_length and truncate_after_eos
    min_length: int = 0  # suppress eos_id before this position
    truncate_after_eos: bool = False  # fill every position after the first eos with eos
    cache: bool = True  # skip the network in steps that reveal nothing (False: call it every step); autoregressive: the KV cache

    def __post_init__(self) -> None:
        problems = check_rule_options(self)
        if self.grid not in GRIDS:
            problems.append(f"unknown time grid {self.grid!r}; choose one of {', '.join(GRIDS)}")
        if not self.temperature >= 0:
            problems.append(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.block_size < 0:
            problems.append(f"block_size must be >= 0, got {self.block_size}")
        if not math.isfinite(self.cfg):
            problems.append(f"cfg must be a finite number, got {self.cfg}")
        if self.min_length < 0:
            problems.append(f"min_length must be >= 0, got {self.min_length}")
        if (self.min_length or self.truncate_after_eos) and self.eos_id is None:
            problems.append("min_length and truncate_after_eos need eos_id")
        if problems:
            raise MaskdiffError("; ".join(problems))

    def rule(self) -> Rule:
        """The reveal rule named by ``method``, built with its options."""
        return RULES.get(self.method).from_options(self)


@dataclass
class Step:
    """One state of the reverse process, as :func:`iterate` yields it."""

    index: int  # 0 for the initial state, then 1..steps
    total: int  # number of steps
    t: float  # time of this state (1 = all masked unless given)
    z: torch.Tensor  # [N, L] ids, the mask id where still masked
    nfe: int  # network evaluations so far (a CFG pair counts as one batched call)
    revealed: torch.Tensor | None = None  # [N, L] bool: positions revealed by this step


# ---------------------------------------------------------------- the loop
def initial_state(num_samples: int, length: int, mask_id: int, given: torch.Tensor | None, device) -> torch.Tensor:
    """All masks, or ``given`` checked for shape and range.  -> [N, L]"""
    if num_samples < 1 or length < 1:
        raise MaskdiffError(f"need num_samples >= 1 and length >= 1, got {num_samples} and {length}")
    if given is None:
        return torch.full((num_samples, length), mask_id, dtype=torch.long, device=device)
    if tuple(given.shape) != (num_samples, length):
        raise MaskdiffError(f"given has shape {tuple(given.shape)}, expected ({num_samples}, {length})")
    if given.min() < 0 or given.max() > mask_id:
        raise MaskdiffError(f"given holds ids outside 0..{mask_id} (the mask id is {mask_id})")
    return given.to(device=device, dtype=torch.long).clone()


def block_plan(length: int, steps: int, block_size: int) -> list[tuple[int, int, int]]:
    """(start, end, steps) of each block; one block covering everything without block_size."""
    if not block_size or block_size >= length:
        return [(0, length, steps)]
    starts = list(range(0, length, block_size))
    if steps < len(starts):
        raise MaskdiffError(f"{len(starts)} blocks of {block_size} need at least {len(starts)} steps, got {steps}")
    share, extra = divmod(steps, len(starts))
    return [(s, min(s + block_size, length), share + (i < extra)) for i, s in enumerate(starts)]


class Denoise:
    """Calls the denoiser (with CFG when asked) on chosen rows and counts network evaluations.

    With class ``labels`` [N] the denoiser gets ``labels=`` and CFG guides towards the label
    (the unconditional pass uses the null label -1); otherwise CFG guides towards the prompt.
    """

    def __init__(self, model, options: SamplerOptions, prompt: torch.Tensor | None, labels: torch.Tensor | None = None):
        self.model, self.options, self.prompt, self.labels = model, options, prompt, labels
        self.nfe = 0

    def __call__(self, z: torch.Tensor, rows: torch.Tensor, t: float) -> torch.Tensor:
        """Logits [len(rows), L, V] for z[rows] at time t: float64, or float32 where a float64 copy
        would exceed DRAW_CHUNK_BYTES (the draws convert each chunk to float64)."""
        z = z[rows]
        times = torch.full((z.shape[0],), t, device=z.device)
        self.nfe += 1
        labels = None if self.labels is None else self.labels[rows]
        prompt = None if self.prompt is None else self.prompt[rows]
        dtype = torch.float64 if z.numel() * self.model.mask_id * 8 <= DRAW_CHUNK_BYTES else torch.float32  # mask_id = V
        with torch.no_grad():
            return self.model.guided_predict(z, times, self.options.cfg, prompt, labels, dtype=dtype)


def iterate(
    model,
    num_samples: int,
    length: int,
    steps: int,
    given: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device=None,
    options: SamplerOptions | None = None,
    labels: torch.Tensor | None = None,
    seeds: torch.Tensor | None = None,
    **option_values,
) -> Iterator[Step]:
    """Yield the initial state and the state after every step; the last has no mask ids.

    ``model`` is a :class:`maskdiff.objectives.DiffusionModel` (MaskedDiffusion or GenMD4): the
    sampler uses its ``guided_predict``, ``schedule`` and ``mask_id``.
    ``given`` [N, L] fixes every position that is not the mask id (prompts, infilling); with
    ``cfg`` those positions form the prompt that the unconditional pass masks.
    ``labels`` [N] are class labels for a class-conditional denoiser (CFG then guides towards them).
    ``seeds`` [N] are per-sample stream seeds (:func:`~maskdiff.sampling.streams.stream_seeds`)
    used instead of ``generator``: rows of several requests sampled as one batch.
    Options are a :class:`SamplerOptions` or its fields as keywords.
    """
    if options is None:
        try:
            options = SamplerOptions(**option_values)
        except TypeError as err:
            raise MaskdiffError(f"unknown sampler option: {err}") from None
    if device is None:
        device = next(iter(model.parameters()), torch.empty(0)).device
    mask_id = model.mask_id
    z = initial_state(num_samples, length, mask_id, given, device)
    prompt = z != mask_id if given is not None else None
    if labels is not None:
        labels = torch.as_tensor(labels, dtype=torch.long, device=device)
        if tuple(labels.shape) != (num_samples,):
            raise MaskdiffError(f"labels has shape {tuple(labels.shape)}, expected ({num_samples},)")
    rule = options.rule()
    denoise = Denoise(model, options, prompt, labels)
    streams = SampleStreams(num_samples, generator, device, seeds)
    all_rows = torch.arange(num_samples, device=device)
    plan = block_plan(length, steps, options.block_size)
    total = sum(block_steps for _, _, block_steps in plan)
    index = 0
    yield Step(0, total, 1.0, z, 0, torch.zeros_like(z, dtype=torch.bool))
    for block, (start, end, block_steps) in enumerate(plan):
        scope = torch.zeros(length, dtype=torch.bool, device=device)
        scope[start:end] = True
        times = time_grid(block_steps, options.grid)
        # on the model's device: a learned schedule (GenMD4) keeps its parameters there
        alphas = model.schedule.alpha(times.to(device)).detach()  # [steps+1], or [steps+1, V] per token value
        for i in range(block_steps):
            index += 1
            p_reveal = (alphas[i + 1] - alphas[i]) / (1 - alphas[i])
            last = i == block_steps - 1
            z, revealed = reverse_step(z, scope, float(times[i]), p_reveal, last, rule, options, denoise, streams, all_rows, mask_id)
            if options.truncate_after_eos and options.eos_id is not None and last and block == len(plan) - 1:
                z = fill_after_eos(z, options.eos_id)
            yield Step(index, total, float(times[i + 1]), z, denoise.nfe, revealed)


def reverse_step(
    z: torch.Tensor,
    scope: torch.Tensor,
    t: float,
    p_reveal: torch.Tensor,
    last: bool,
    rule: Rule,
    options: SamplerOptions,
    denoise: Denoise,
    streams: SampleStreams,
    all_rows: torch.Tensor,
    mask_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One reverse step from time t: the rule picks the rows to run and the positions to reveal.

    z [N, L]; scope [L] bool: the positions of the current block; ``p_reveal`` is the chance
    that a masked position is revealed by this step, a 0-d tensor or one per token value [V].
    -> (new z, revealed positions [N, L] bool)
    """
    n, length = z.shape
    masked = (z == mask_id) & scope
    # the same draws every step, whatever the rule needs and whether or not the network runs
    u_reveal, u_value = streams.uniform(2 * length).view(n, 2, length).unbind(1)
    step = StepContext(masked, u_reveal, p_reveal, last)
    active = masked.any(-1) if last else rule.may_reveal(step)
    rows = all_rows[active] if options.cache else all_rows
    if rows.numel() == 0:
        return z, torch.zeros_like(masked)
    logits = denoise(z, rows, t)
    if options.eos_id is not None and options.min_length:
        logits[:, : options.min_length, options.eos_id] = -math.inf
    prediction = draw_values(rule, logits, u_value[rows], p_reveal, last, options).for_rows(rows, n)
    reveal = masked if last else rule.reveal(step, prediction)
    return torch.where(reveal, prediction.values, z), reveal


def draw_values(rule: Rule, logits: torch.Tensor, u_value: torch.Tensor, p_reveal: torch.Tensor, last: bool, options: SamplerOptions) -> Prediction:
    """The rule's draw (:meth:`Rule.draw`) for logits [R, L, V], over chunks of positions whose
    float64 tensors stay under DRAW_CHUNK_BYTES; the same values as one pass.  -> Prediction [R, L]"""
    rows, length, vocab = logits.shape
    per_chunk = max(1, DRAW_CHUNK_BYTES // (8 * vocab))  # positions
    if rows * length <= per_chunk:
        return draw_chunk(rule, logits, u_value, p_reveal, last, options)
    values = torch.empty((rows, length), dtype=torch.long, device=logits.device)
    confidence = torch.empty((rows, length), dtype=torch.float64, device=logits.device)
    chance = torch.empty_like(confidence)
    for r, c in position_chunks(rows, length, per_chunk):
        part = draw_chunk(rule, logits[r, c], u_value[r, c], p_reveal, last, options)
        values[r, c], confidence[r, c], chance[r, c] = part.values, part.confidence, part.chance
    return Prediction(values, confidence, chance)


def position_chunks(rows: int, length: int, per_chunk: int) -> list[tuple[slice, slice]]:
    """(row slice, position slice) pieces of an [rows, length] grid of at most ``per_chunk`` positions:
    whole rows together where one fits, else pieces of one row."""
    if per_chunk >= length:
        step = per_chunk // length
        return [(slice(r, r + step), slice(None)) for r in range(0, rows, step)]
    return [(slice(r, r + 1), slice(c, c + per_chunk)) for r in range(rows) for c in range(0, length, per_chunk)]


def draw_chunk(rule: Rule, logits: torch.Tensor, u_value: torch.Tensor, p_reveal: torch.Tensor, last: bool, options: SamplerOptions) -> Prediction:
    """Temperature, top-k and top-p in float64, then the rule's draw, for one chunk [r, l, V]."""
    probs = filter_probs(logits, options.temperature, options.top_k, options.top_p)
    # at temperature 0 rank by the model's own probabilities, not by the one-hot
    model_probs = torch.softmax(logits.double(), dim=-1) if options.temperature == 0 else probs
    return rule.draw(probs, u_value, p_reveal, last, model_probs)


def fill_after_eos(z: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Every position after the first eos becomes eos, so decoding can cut the text there.  [N, L]"""
    is_eos = (z == eos_id).long()
    after = (is_eos.cumsum(-1) - is_eos) > 0
    return torch.where(after, eos_id, z)

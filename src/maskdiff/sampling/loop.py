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

``kv_cache`` ("prefix" or "dual", with ``block_size``) keeps the keys and values of the
positions outside the current block between full passes over the sequence
(:mod:`maskdiff.sampling.cache`); ``refresh`` sets how often a full pass runs. A rule may also
mask revealed positions again (ReMDM, the ``remdm`` rule), and may warp the block's time grid.

Randomness: each sample has its own counter-based stream (seeded from ``generator``, or given
as its stream seed in ``seeds``), and every step draws the same numbers (one reveal and one
value draw per position) whatever the rule and whether or not the network is called, so samples
depend only on the seed and their index, never on the batch size, on skipped network calls or
on the other rows' prompts. Values are drawn by inverse-CDF sampling in float64
(float32 noise truncates the tail of the distribution).

Memory: the float64 arithmetic of a draw (temperature, top-k, top-p, the CDF) runs over chunks of
positions of at most ``DRAW_CHUNK_BYTES`` per [positions, V] float64 tensor, and the logits stay in
float32 when a float64 copy of them would be larger than that, so a 50k-token vocabulary never
has full-vocabulary float64 probabilities for every position. Every draw is per position, so the
chunks give exactly the values of one pass (small vocabularies fit in one chunk: the same
computation as ever).

End of text: with ``truncate_after_eos`` a row whose decoded blocks hold the end-of-text token
(with nothing masked before it) is finished at the end of that block: the rest becomes eos, as it
would at the end anyway, and the row costs no further network calls.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from maskdiff.errors import MaskdiffError
from maskdiff.sampling.cache import BlockCache, CachedPass
from maskdiff.sampling.distributions import filter_probs, time_grid
from maskdiff.sampling.options import OptionError
from maskdiff.sampling.rules import Prediction, Rule, StepContext
from maskdiff.sampling.settings import SamplerOptions
from maskdiff.sampling.streams import SampleStreams

DRAW_CHUNK_BYTES = 1 << 23  # float64 bytes of one [positions, V] tensor of a draw (8 MiB)


@dataclass
class Step:
    """One state of the reverse process, as :func:`iterate` yields it."""

    index: int  # 0 for the initial state, then 1..steps
    total: int  # number of steps
    t: float  # time of this state (1 = all masked unless given)
    z: torch.Tensor  # [N, L] ids, the mask id where still masked
    nfe: int  # network evaluations so far (a CFG pair counts as one batched call)
    revealed: torch.Tensor | None = None  # [N, L] bool: positions revealed by this step
    remasked: torch.Tensor | None = None  # [N, L] bool: positions masked again by this step (remasking rules)
    stats: SamplerStats = field(default_factory=lambda: SamplerStats())  # counts so far
    # [N, L] float64: each revealed token's log-probability under the prediction it was drawn from
    # (after temperature, top-k and top-p; at temperature 0 the model's own) at the step that
    # revealed it; nan where masked or given. None: the model does not record them.
    logprobs: torch.Tensor | None = None

    @property
    def tokens_per_evaluation(self) -> float:
        """Positions revealed per network evaluation of one sample so far (parallel decoding reveals several)."""
        return self.stats.reveals / self.stats.evaluations if self.stats.evaluations else 0.0


@dataclass(frozen=True)
class SamplerStats:
    """What a sampler run has done so far."""

    reveals: int = 0  # positions revealed, summed over samples (remasked ones count again when revealed again)
    evaluations: int = 0  # network evaluations of one sample: the rows of every call, summed
    full_calls: int = 0  # calls over the whole sequence (the others ran a block's window on the KV cache)


# ---------------------------------------------------------------- the loop
def initial_state(num_samples: int, length: int, mask_id: int, given: torch.Tensor | None, device) -> torch.Tensor:
    """All masks, or ``given`` checked for shape and range.  -> [N, L]"""
    if num_samples < 1:
        raise OptionError("num_samples", f"{{num_samples}} must be >= 1, got {num_samples}")
    if length < 1:
        raise OptionError("length", f"{{length}} must be >= 1, got {length}")
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
        self.nfe = self.evaluations = self.full_calls = 0

    def __call__(self, z: torch.Tensor, rows: torch.Tensor, t: float, cached: CachedPass | None = None) -> torch.Tensor:
        """Logits [len(rows), L, V] for z[rows] at time t, on a cache window only that window's positions:
        float64, or float32 where a float64 copy would exceed DRAW_CHUNK_BYTES (the draws convert
        each chunk to float64)."""
        z = z[rows]
        times = torch.full((z.shape[0],), t, device=z.device)
        self.nfe += 1
        self.evaluations += z.shape[0]
        self.full_calls += cached is None or cached.window is None
        labels = None if self.labels is None else self.labels[rows]
        prompt = None if self.prompt is None else self.prompt[rows]
        vocab_size = self.model.mask_id  # the mask id is V, one past the vocabulary's ids 0..V-1
        dtype = torch.float64 if z.numel() * vocab_size * 8 <= DRAW_CHUNK_BYTES else torch.float32
        with torch.no_grad():
            return self.model.guided_predict(z, times, self.options.cfg, prompt, labels, dtype=dtype, cached=cached)


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
    sampler uses its ``guided_predict``, ``schedule`` and ``mask_id`` (and ``new_block_cache``
    with ``kv_cache``).
    ``given`` [N, L] fixes every position that is not the mask id (prompts, infilling); rows may
    fix different positions (prompts of different lengths need no padding: the network is
    bidirectional). With ``cfg`` those positions form the prompt that the unconditional pass masks.
    ``labels`` [N] are class labels for a class-conditional denoiser (CFG then guides towards them).
    ``seeds`` [N] are per-sample stream seeds (:func:`~maskdiff.sampling.streams.stream_seeds`)
    used instead of ``generator``: rows of several requests sampled as one batch (row i then
    draws exactly what it draws alone with its own seeds).
    Options are a :class:`SamplerOptions` or its fields as keywords.
    """
    if options is None:
        options = SamplerOptions(**option_values)
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
    cache = None
    if options.kv_cache != "none":
        kv = model.new_block_cache(2 * num_samples if options.cfg else num_samples, length)
        cache = BlockCache(kv, options.kv_cache, options.refresh, num_samples, length, device)
    total = sum(block_steps for _, _, block_steps in plan)
    index, stats = 0, SamplerStats()
    # each revealed token's log-probability under the prediction at the step that revealed it (nan: masked or given)
    logprobs = torch.full(z.shape, math.nan, dtype=torch.float64, device=device)
    yield Step(0, total, 1.0, z, 0, torch.zeros_like(z, dtype=torch.bool), stats=stats, logprobs=logprobs)
    for block, (start, end, block_steps) in enumerate(plan):
        scope = torch.zeros(length, dtype=torch.bool, device=device)
        scope[start:end] = True
        if cache is not None:
            cache.begin_block(start, end)
        grid = time_grid(block_steps, options.grid)
        times = rule.warp(grid, model.schedule, device)
        # on the model's device: a learned schedule (GenMD4) keeps its parameters there
        alphas = model.schedule.alpha(times.to(device)).detach()  # [steps+1], or [steps+1, V] per token value
        for i in range(block_steps):
            index += 1
            p_reveal, p_remask = rule.transition(alphas[i], alphas[i + 1], float(grid[i]), float(grid[i + 1]))
            last = i == block_steps - 1
            context = StepInput(z == mask_id, z, p_reveal, p_remask, scope, prompt, last, i)
            z, revealed, remasked, chance = reverse_step(z, float(times[i]), context, rule, options, denoise, streams, all_rows, mask_id, cache)
            logprobs = torch.where(revealed, chance.log(), logprobs if remasked is None else logprobs.masked_fill(remasked, math.nan))
            if options.truncate_after_eos and options.eos_id is not None and last:
                z = fill_after_eos(z, options.eos_id) if block == len(plan) - 1 else finish_rows(z, options.eos_id, mask_id)
            stats = SamplerStats(stats.reveals + int(revealed.sum()), denoise.evaluations, denoise.full_calls)
            yield Step(index, total, float(times[i + 1]), z, denoise.nfe, revealed, remasked, stats, logprobs)


@dataclass
class StepInput:
    """What the loop knows about a step before it runs (the reverse step's inputs besides the rule)."""

    is_mask: torch.Tensor  # [N, L] bool
    z: torch.Tensor  # [N, L]
    p_reveal: torch.Tensor  # 0-d or [V]
    p_remask: torch.Tensor | None  # 0-d, [V] or None
    scope: torch.Tensor  # [L] bool: the current block
    prompt: torch.Tensor | None  # [N, L] bool: given positions
    last: bool
    index: int  # the step's index within its block (0 = first)


def reverse_step(
    z: torch.Tensor,
    t: float,
    context: StepInput,
    rule: Rule,
    options: SamplerOptions,
    denoise: Denoise,
    streams: SampleStreams,
    all_rows: torch.Tensor,
    mask_id: int,
    cache: BlockCache | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """One reverse step from time t: the rule picks the rows to run, the positions to reveal and
    those to mask again.

    z [N, L]; the step's reveal chance ``context.p_reveal`` is a 0-d tensor or one per token value
    [V]. On a block cache the rows run either the whole sequence or the block's window; the
    positions of a window row are decided on the block's columns only.
    -> (new z, revealed positions [N, L] bool, remasked positions [N, L] bool or None, the revealed
    tokens' probabilities [N, L] float64 under the prediction they were drawn from)
    """
    n, length = z.shape
    masked = context.is_mask & context.scope
    # the same draws every step, whatever the rule needs and whether or not the network runs
    u_reveal, u_value = streams.uniform(2 * length).view(n, 2, length).unbind(1)
    remaskable = None
    if context.p_remask is not None:
        remaskable = ~context.is_mask & context.scope
        if context.prompt is not None:
            remaskable &= ~context.prompt
    step = StepContext(masked, u_reveal, context.p_reveal, context.last, z, remaskable, context.p_remask)
    remask = rule.remask(step)
    active = masked.any(-1) if context.last else rule.may_reveal(step)
    rows = all_rows if options.recompute else all_rows[active]
    passes: list[tuple[torch.Tensor, CachedPass | None]] = []
    if rows.numel():
        passes = list(cache.passes(rows, context.index)) if cache is not None else [(rows, None)]
    values, reveal = z, torch.zeros_like(masked)
    chance = torch.ones(z.shape, dtype=torch.float64, device=z.device)
    for group, cached in passes:
        logits = denoise(z, group, t, cached)
        columns, offset = slice(None), 0
        if cached is not None and cached.window is not None and cache is not None:  # decide on the block's columns only
            columns, offset = slice(cache.start, cache.end), cache.start
            logits = logits[:, : cache.end - cache.start]  # a prefix window runs on to the end of the sequence
        if options.eos_id is not None and options.min_length > offset:
            logits[:, : options.min_length - offset, options.eos_id] = -math.inf
        # a single full call sees the step as it is (the uncached sampler's decisions, bit for bit)
        whole = len(passes) == 1 and (cached is None or cached.window is None)
        part = step if whole else restrict(step, group, columns)
        prediction = decide(rule, part, logits, u_value[group][:, columns], options, group, n)
        chosen = part.masked if context.last else rule.reveal(part, prediction)
        reveal[:, columns] |= chosen
        values = values.clone() if values is z else values
        values[:, columns] = torch.where(chosen, prediction.values, values[:, columns])
        chance[:, columns] = torch.where(chosen, prediction.confidence.to(chance.dtype), chance[:, columns])
    z = torch.where(reveal, values, z)
    if remask is not None:
        z = torch.where(remask, mask_id, z)
    return z, reveal, remask, chance


def restrict(step: StepContext, rows: torch.Tensor, columns: slice) -> StepContext:
    """The step as one network call sees it: only ``rows`` may reveal, only in ``columns``."""
    in_call = torch.zeros(step.masked.shape[0], dtype=torch.bool, device=step.masked.device)
    in_call[rows] = True
    return StepContext(step.masked[:, columns] & in_call[:, None], step.u_reveal[:, columns], step.p_reveal, step.last)


def decide(
    rule: Rule, step: StepContext, logits: torch.Tensor, u_value: torch.Tensor, options: SamplerOptions, rows: torch.Tensor, n: int
) -> Prediction:
    """The rule's values for the rows one call ran (logits [R, W, V]), spread over all n rows; drawn
    over chunks of positions (:func:`draw_values`).  -> [n, W]"""
    return draw_values(rule, logits, u_value, step.p_reveal, step.last, options).for_rows(rows, n)


def finish_rows(z: torch.Tensor, eos_id: int, mask_id: int) -> torch.Tensor:
    """Rows that hold eos with nothing masked before it are finished: everything after their first
    eos becomes eos (what the end of sampling makes of it), so they are never sent to the network again.  [N, L]"""
    is_eos = z == eos_id
    first = torch.where(is_eos.any(-1), is_eos.long().argmax(-1), z.shape[1])  # [N]
    before = torch.arange(z.shape[1], device=z.device)[None] < first[:, None]
    done = is_eos.any(-1) & ~((z == mask_id) & before).any(-1)
    return torch.where(done[:, None], fill_after_eos(z, eos_id), z)


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

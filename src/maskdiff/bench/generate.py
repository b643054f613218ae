"""``maskdiff bench generate``: the speed/quality trade-off of a masked diffusion model (MDM) against an
autoregressive one (ARM) on the same prompts.

Both runs continue the same prompts: the first ``prompt_length`` tokens of ``prompts`` chunks of
the validation split (evenly spread over it), ``length`` tokens each. The MDM runs at every step
count, sampler rule and guidance weight asked; the ARM decodes on its KV cache. For each setting:
wall time of the batch, generated tokens per second, network evaluations, and the quality of the
continuations (:func:`maskdiff.evaluation.judge.sample_quality`: the judge's generative perplexity
when a judge is given, with unigram entropy and distinct-n next to it, so repetitive text cannot
look good). The validation text's own continuations are scored the same way as a reference.

Guidance is SMDM's unsupervised classifier-free guidance (``cfg``): the unconditional prediction is
the same sequence with the prompt masked. A masked diffusion model trained on the plain objective
needs no extra training for it, since fully masked inputs are part of every training run.

Generation goes through the generation front-end (:func:`maskdiff.generation.frontend.run_sampler`
on runs loaded by :func:`maskdiff.load`); a warm-up call before each model's first timed setting
keeps one-time costs out of the timings.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from maskdiff.data import evaluation_sequences, prepare_data
from maskdiff.errors import MaskdiffError
from maskdiff.evaluation.judge import SampleQuality, load_judge, sample_quality
from maskdiff.generation.frontend import run_sampler
from maskdiff.generation.text import join_samples
from maskdiff.runs import Run, load
from maskdiff.sampling import RULES, SamplerOptions, SamplingRequest

GUIDANCE = (
    "unsupervised classifier-free guidance (SMDM): logits u + (w + 1)(c - u), the unconditional pass u being the "
    "same sequence with the prompt masked; no unconditional dropout is needed, as masked diffusion training already "
    "covers fully masked inputs"
)


@dataclass
class Setting:
    """One row of the benchmark: how the continuations were generated, how fast, and how good."""

    label: str
    model: str  # "mdm", "ar" or "reference" (the validation text itself)
    rule: str | None
    steps: int | None  # sampler steps asked (the ARM: one per token)
    cfg: float | None
    seconds: float | None  # wall time for the whole batch
    tokens_per_s: float | None  # generated tokens per second
    nfe: int | None  # network evaluations (a batched guidance pair counts once)
    quality: SampleQuality
    texts: list[str] = field(repr=False)  # the continuations, prompt excluded

    def to_dict(self) -> dict:
        out = asdict(self)
        out["quality"] = self.quality.to_dict()
        return out


@dataclass
class GenerationBench:
    settings: list[Setting]
    prompts: list[str]
    info: dict  # the runs, lengths, seed, precision, device, judge, guidance

    def to_dict(self) -> dict:
        return {**self.info, "prompts": self.prompts, "settings": [s.to_dict() for s in self.settings]}


def parse_list(text: str, kind: type, what: str) -> list:
    """'16,64,256' -> [16, 64, 256]; a one-line error naming ``what`` for anything else."""
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise MaskdiffError(f"{what} takes a comma-separated list, not {text!r}") from None
    if not values:
        raise MaskdiffError(f"{what} is empty")
    return values


def validation_prompts(run: Run, count: int, total_length: int) -> torch.Tensor:
    """``count`` chunks of ``total_length`` tokens spread evenly over the run's validation split.  -> [count, total_length]"""
    _, splits = prepare_data(run.config.data, run.tokenizer)
    chunks, _ = evaluation_sequences(splits, "valid", total_length)
    if chunks.shape[0] < count:
        raise MaskdiffError(f"the validation split holds {chunks.shape[0]} chunks of {total_length} tokens, fewer than --prompts {count}")
    return chunks[torch.linspace(0, chunks.shape[0] - 1, count).round().long()]


def _check_pair(mdm: Run, ar: Run, total_length: int) -> None:
    problems = []
    if mdm.model.left_to_right:
        problems.append(f"--mdm {mdm.loaded.run_dir} is an autoregressive run")
    if not ar.model.left_to_right:
        problems.append(f"--ar {ar.loaded.run_dir} is not an autoregressive run (objective.name=ar)")
    for flag, run in (("--mdm", mdm), ("--ar", ar)):
        if not run.config.data.data_format.is_text:
            problems.append(f"{flag} {run.loaded.run_dir} models {run.config.data.modality}s, not text")
        elif total_length > run.config.data.seq_len:
            problems.append(f"prompt + length = {total_length} tokens exceeds {flag}'s sequence length {run.config.data.seq_len}")
    if problems:
        raise MaskdiffError("; ".join(problems))
    if mdm.tokenizer.to_dict() != ar.tokenizer.to_dict():
        raise MaskdiffError("the two runs have different tokenizers, so they cannot continue the same prompts; train both on the same data")


def _generate(run: Run, ids: torch.Tensor, prompt_length: int, steps: int, options: SamplerOptions, seed: int) -> tuple[list[str], float, int]:
    """Continue every row's first ``prompt_length`` ids.  -> (continuations, seconds, network evaluations)"""
    given = ids.clone()
    given[:, prompt_length:] = run.mask_id
    request = SamplingRequest(ids.shape[0], ids.shape[1], steps, options, given=given, seed=seed)
    result = run_sampler(run.model, request, device=run.device, dtype=run.dtype)
    texts = [run.decode(row[prompt_length:]) for row in result.final.z.tolist()]
    return texts, result.seconds, result.final.nfe


def benchmark_generation(
    mdm: str | Path,
    ar: str | Path,
    prompts: int = 16,
    prompt_length: int = 32,
    length: int | None = None,
    steps: list[int] | tuple[int, ...] = (16, 64, 256),
    rules: list[str] | tuple[str, ...] = ("ancestral", "low_confidence"),
    cfg: list[float] | tuple[float, ...] = (0.0, 1.0),
    judge: str | None = None,
    seed: int = 0,
    precision: str = "auto",
    device: str = "auto",
    progress: bool = False,
) -> GenerationBench:
    """Time and score the MDM (every step count x rule x guidance weight) and the ARM (KV cache) on
    the same validation prompts; ``length`` generated tokens (default: up to the MDM's sequence length)."""
    unknown = [r for r in rules if r not in RULES]
    if unknown:
        raise MaskdiffError(f"unknown sampler rule(s) {', '.join(unknown)}; choose from {', '.join(RULES.names())}")
    if prompts < 1 or prompt_length < 1 or (length is not None and length < 1) or min(steps) < 1:
        raise MaskdiffError("--prompts, --prompt-length, --length and every --steps value must be >= 1")
    if any(w < 0 for w in cfg):
        raise MaskdiffError("guidance weights (--cfg) must be >= 0")
    mdm_run, ar_run = load(mdm, device=device, precision=precision), load(ar, device=device, precision=precision)
    length = mdm_run.config.data.seq_len - prompt_length if length is None else length
    if length < 1:
        raise MaskdiffError(f"--prompt-length {prompt_length} leaves no room to generate in the MDM's sequence length {mdm_run.config.data.seq_len}")
    total = prompt_length + length
    _check_pair(mdm_run, ar_run, total)
    ids = validation_prompts(mdm_run, prompts, total)
    judged = load_judge(judge, str(mdm_run.device)) if judge else None

    def measure(texts: list[str]) -> SampleQuality:
        return sample_quality(texts, judged, progress=progress)

    real = [mdm_run.decode(row[prompt_length:]) for row in ids.tolist()]
    settings = [Setting("validation text", "reference", None, None, None, None, None, None, measure(real), real)]
    # the ARM: one network call per token on its KV cache
    warm = ids[:1, : prompt_length + 1]
    _generate(ar_run, warm, prompt_length, 1, SamplerOptions(), seed)
    texts, seconds, nfe = _generate(ar_run, ids, prompt_length, length, SamplerOptions(), seed)
    settings.append(Setting("ARM, KV cache", "ar", None, length, None, seconds, prompts * length / seconds, nfe, measure(texts), texts))
    _generate(mdm_run, warm, prompt_length, 1, SamplerOptions(), seed)
    for rule in rules:
        for weight in cfg:
            for count in sorted(steps):
                options = SamplerOptions(method=rule, cfg=weight)
                texts, seconds, nfe = _generate(mdm_run, ids, prompt_length, count, options, seed)
                label = f"MDM {rule}, {count} steps" + (f", cfg {weight:g}" if weight else "")
                settings.append(Setting(label, "mdm", rule, count, weight, seconds, prompts * length / seconds, nfe, measure(texts), texts))
    info = {
        "mdm": str(mdm_run.loaded.run_dir),
        "ar": str(ar_run.loaded.run_dir),
        "mdm_step": mdm_run.step,
        "ar_step": ar_run.step,
        "num_prompts": prompts,
        "prompt_length": prompt_length,
        "length": length,
        "seed": seed,
        "precision": "bf16" if mdm_run.dtype == torch.bfloat16 else "fp32",
        "device": str(mdm_run.device),
        "threads": torch.get_num_threads(),
        "judge": judge,
        "guidance": GUIDANCE,
        "timing": "wall time of the whole batch after one warm-up call per model; tokens_per_s counts generated tokens only",
    }
    return GenerationBench(settings, [mdm_run.decode(row[:prompt_length]) for row in ids.tolist()], info)


# ------------------------------------------------------------------ outputs
def table(bench: GenerationBench) -> str:
    """The benchmark as a Markdown table."""

    def number(value, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    rows = [
        "| setting | NFE | wall s | tokens/s | gen. perplexity | entropy (bits/word) | distinct-1/2/3 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for s in bench.settings:
        q = s.quality
        rows.append(
            f"| {s.label} | {number(s.nfe, 'd')} | {number(s.seconds, '.3f')} | {number(s.tokens_per_s, ',.0f')} | "
            f"{number(q.gen_perplexity, '.2f')} | {q.unigram_entropy:.3f} | {q.distinct_1:.3f} / {q.distinct_2:.3f} / {q.distinct_3:.3f} |"
        )
    return "\n".join(rows)


def samples_markdown(bench: GenerationBench, shown: int = 3) -> str:
    """The first prompts with the reference, the ARM's and every MDM setting's continuation at the most steps."""
    most = max((s.steps or 0) for s in bench.settings if s.model == "mdm")
    picks = [s for s in bench.settings if s.model != "mdm" or s.steps == most]
    parts = [
        f"# Samples\n\nContinuations of the first {min(shown, len(bench.prompts))} prompts; "
        f"MDM settings at {most} steps, with and without guidance.\n"
    ]
    for i, prompt in enumerate(bench.prompts[:shown]):
        parts.append(f"## Prompt {i + 1}\n\n```\n{prompt}\n```\n")
        for s in picks:
            parts.append(f"**{s.label}**\n\n```\n{s.texts[i]}\n```\n")
    return "\n".join(parts)


def plot_tradeoff(bench: GenerationBench, out_png: Path) -> Path:
    """Quality against wall time: one curve per model (and per MDM rule and guidance weight); judge
    perplexity where a judge scored the samples, unigram entropy always; the reference as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judged = bench.settings[0].quality.gen_perplexity is not None
    metrics = ([("gen_perplexity", "generative perplexity (judge)", True)] if judged else []) + [
        ("unigram_entropy", "unigram entropy (bits/word)", False)
    ]
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.5 * len(metrics), 4.6), dpi=120, squeeze=False)
    curves: dict[str, list[Setting]] = {}
    for s in bench.settings:
        if s.model != "reference":
            key = "ARM (KV cache)" if s.model == "ar" else f"MDM {s.rule}" + (f", cfg {s.cfg:g}" if s.cfg else "")
            curves.setdefault(key, []).append(s)
    for ax, (name, label, log_y) in zip(axes[0], metrics):
        for key, members in curves.items():
            members = sorted(members, key=lambda s: s.seconds or 0)
            ax.plot([s.seconds for s in members], [getattr(s.quality, name) for s in members], "s-" if key.startswith("ARM") else "o-", label=key)
            for s in members:
                if s.model == "mdm":
                    ax.annotate(str(s.steps), (s.seconds, getattr(s.quality, name)), fontsize=7, textcoords="offset points", xytext=(3, 3))
        ax.axhline(getattr(bench.settings[0].quality, name), color="gray", linestyle=":", label="validation text")
        ax.set(xscale="log", yscale="log" if log_y else "linear", xlabel=f"wall time for {len(bench.prompts)} samples (s)", ylabel=label)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    axes[0][0].set_title(
        f"quality against time ({bench.info['length']} tokens after a {bench.info['prompt_length']}-token prompt; labels: MDM steps)"
    )
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return out_png


def write_outputs(bench: GenerationBench, out_dir: str | Path, json_path: str | Path | None = None) -> dict[str, Path]:
    """table.md, the JSON (``json_path`` or OUT/generate.json), quality_vs_time.png, samples.md and
    samples/NN-LABEL.txt (every setting's continuations, readable by ``maskdiff eval --samples``)."""
    out = Path(out_dir)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    paths = {
        "table": out / "table.md",
        "json": Path(json_path) if json_path is not None else out / "generate.json",
        "png": out / "quality_vs_time.png",
        "samples": out / "samples.md",
    }
    paths["table"].write_text(table(bench) + "\n", encoding="utf-8")
    paths["json"].parent.mkdir(parents=True, exist_ok=True)
    paths["json"].write_text(json.dumps(bench.to_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    plot_tradeoff(bench, paths["png"])
    paths["samples"].write_text(samples_markdown(bench), encoding="utf-8")
    for i, s in enumerate(bench.settings):
        slug = "".join(c if c.isalnum() else "-" for c in s.label.lower()).strip("-")
        (out / "samples" / f"{i:02d}-{slug}.txt").write_text(join_samples(s.texts) + "\n", encoding="utf-8")
    return paths

"""`maskdiff sample`: text on stdout, or a PNG grid for a run trained on images."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskdiff.cli.common import Commands, Parser, add_threads, inputs_of, set_handler
from maskdiff.errors import MaskdiffError, plural

TEXT_ONLY = ("prompt", "infill", "eos", "length")
IMAGE_ONLY = ("label", "inpaint", "scale")


@dataclass(frozen=True)
class SampleArgs:
    """The flags of `maskdiff sample`; the sampler's options (generated flags) are ``sampler_options``."""

    checkpoint: str
    num_samples: int | None
    length: int | None
    steps: int
    prompt: list[str] | None
    infill: str | None
    label: int | None
    inpaint: str | None
    keep: str
    scale: int | None
    eos: str | None
    seed: int
    weights: str
    precision: str
    show_steps: bool
    output: str | None
    quiet: bool
    sampler_options: dict[str, Any]  # the sampler options given, by name (maskdiff.sampling.SamplerOptions)


def sample_inputs(args: argparse.Namespace) -> SampleArgs:
    from maskdiff.sampling.flags import option_values

    return inputs_of(SampleArgs, args, sampler_options=option_values(args))


def _sample_images(args: SampleArgs) -> int:
    """cmd_sample for a run trained on images: a PNG grid (and a GIF of the steps)."""
    from maskdiff.generation import generate_images

    used = [f"--{name}" for name in TEXT_ONLY if getattr(args, name) is not None]
    if used:
        raise MaskdiffError(f"{', '.join(used)} apply to text runs; this run models images")
    gen = generate_images(
        args.checkpoint,
        num_samples=16 if args.num_samples is None else args.num_samples,
        steps=args.steps,
        seed=args.seed,
        label=args.label,
        inpaint=args.inpaint,
        keep=args.keep,
        output=args.output,
        show_steps=args.show_steps,
        scale=1 if args.scale is None else args.scale,
        weights=args.weights,
        precision=args.precision,
        progress=not args.quiet,
        **args.sampler_options,
    )
    print(f"sample grid: {gen.path}")
    if gen.steps_path is not None:
        print(f"unmasking steps: {gen.steps_path}")
    print(f"[{plural(len(gen.images), 'image')} in {gen.seconds:.2f} s, {plural(gen.nfe, 'network evaluation')}]", file=sys.stderr)
    return 0


def cmd_sample(args: SampleArgs) -> int:
    from maskdiff.checkpoint import run_modality

    return {"image": _sample_images, "text": _sample_text}[run_modality(args.checkpoint)](args)


def _sample_text(args: SampleArgs) -> int:
    """cmd_sample for a run trained on text: the samples on stdout (and in --output)."""
    from maskdiff.generation import generate_text, join_samples
    from maskdiff.generation.frontend import check_output_path

    used = [f"--{name}" for name in IMAGE_ONLY if getattr(args, name) is not None]
    if used:
        raise MaskdiffError(f"{', '.join(used)} apply to image runs; this run models text")

    if args.output:
        check_output_path(args.output, "samples file")

    def show(step, texts: list[str]) -> None:
        print(f"--- step {step.index}/{step.total}  t={step.t:.3f}  nfe={step.nfe}", file=sys.stderr)
        for text in texts:
            print(text, file=sys.stderr)

    prompts = args.prompt or []
    if len(prompts) > 1 and args.num_samples not in (None, len(prompts)):
        raise MaskdiffError(f"{len(prompts)} prompts with --num-samples {args.num_samples}: several prompts give one sample each")
    several = len(prompts) > 1  # one sample per prompt, sample i with seed + i (what it gets alone with that seed)
    gen = generate_text(
        args.checkpoint,
        num_samples=len(prompts) if several else 4 if args.num_samples is None else args.num_samples,
        length=args.length,
        steps=args.steps,
        seed=[args.seed + i for i in range(len(prompts))] if several else args.seed,
        prompt=prompts if several else prompts[0] if prompts else None,
        infill=args.infill,
        eos=args.eos,
        weights=args.weights,
        precision=args.precision,
        progress=not args.quiet and not args.show_steps,  # the steps on stderr read better without a bar
        on_step=show if args.show_steps else None,
        **args.sampler_options,
    )
    output = join_samples(gen.texts)
    print(output)  # first, so that a late failure to write --output loses nothing
    if args.output:
        try:
            Path(args.output).write_text(output + "\n", encoding="utf-8")
        except OSError as err:
            raise MaskdiffError(f"could not write {args.output!r} ({err.strerror or err}); the samples are printed above") from None
    print(
        f"[{plural(len(gen.texts), 'sample')} in {gen.seconds:.2f} s, {gen.tokens_per_s:,.0f} tokens/s, {plural(gen.nfe, 'network evaluation')}, "
        f"{gen.tokens_per_evaluation:.2f} tokens revealed per evaluation]",
        file=sys.stderr,
    )
    return 0


def rule_summaries() -> str:
    """The registered sampler rules with their one-line summaries, for the sample subcommand's help."""
    from maskdiff.sampling import RULES

    return "; ".join(f"{name} ({rule.summary()})" for name, rule in RULES.items())


def add_sample_parser(sub: Commands) -> None:
    sub.add_command("sample", "generate text or images from a checkpoint", fill_sample_parser)


def fill_sample_parser(p: Parser) -> None:
    from maskdiff.sampling.flags import add_option_flags

    p.description = (
        "Generate text by running the reverse process. Rules (--method): " + rule_summaries() + ". "
        "For a run trained on images it writes a PNG grid (--output, default RUN/samples.png), with --show-steps "
        "also an animated GIF of the unmasking, and can sample a class (--label, --cfg) or inpaint (--inpaint, --keep)."
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="run folder or one of its checkpoint folders")
    p.add_argument("--num-samples", type=int, help="how many texts or images (default 4 texts, 16 images)")
    p.add_argument("--length", type=int, help="tokens per text (default: the run's sequence length)")
    add_option_flags(p.add_argument_group("sampler options (each also a field of POST /v1/completions)"))
    p.add_argument(
        "--prompt", metavar="TEXT", action="append", help="fixed beginning of every sample; repeated: one sample per prompt (sample i: seed + i)"
    )
    p.add_argument("--infill", metavar="TEMPLATE", help="text with [[N]] where N tokens are to be generated, e.g. 'To be, or [[12]] to be'")
    p.add_argument("--label", type=int, metavar="N", help="images: sample class N (class-conditional runs)")
    p.add_argument("--inpaint", metavar="IMAGE", help="images: PNG/JPEG file whose --keep region every sample keeps")
    p.add_argument(
        "--keep",
        choices=("top", "bottom", "left", "right", "center", "outside"),
        default="top",
        help="images: region of --inpaint kept (half of the image, the center square, or all but it; default top)",
    )
    p.add_argument("--scale", type=int, help="images: enlarge each pixel of the grid to N x N (default 1)")
    p.add_argument(
        "--eos", metavar="TOKEN", help="end-of-text token: samples are cut at its first occurrence (default: a fine-tuned run's own, else none)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema", help="EMA or raw weights (default ema)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help="numeric precision")
    p.add_argument("--show-steps", action="store_true", help="print every intermediate state to stderr (masks as _); images: write FILE-steps.gif")
    p.add_argument("--output", "--out", metavar="FILE", help="text: also write the samples to FILE; images: the PNG grid (default RUN/samples.png)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads(p)
    set_handler(p, SampleArgs, cmd_sample, sample_inputs)

"""Images from a trained run: sample (optionally class-conditional, guided, or inpainting), write a
PNG grid and, on request, an animated GIF of the unmasking process.

Inpainting keeps a region of a given image and samples the rest: the kept sub-pixels are the
sampler's ``given`` positions, which never change. In the pictures of intermediate states a
pixel with any sub-pixel still masked is drawn in :data:`MASK_COLOR`.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from maskdiff.checkpoint import LoadedRun, load_run
from maskdiff.data.images import images_to_tokens, read_image_file, tokens_to_images
from maskdiff.errors import MaskdiffError
from maskdiff.generation.frontend import Sampled, check_output_path, run_sampler
from maskdiff.hardware import resolve_device, resolve_precision
from maskdiff.sampling import STEPS, OptionError, SamplerOptions, SamplingRequest, Step

MASK_COLOR = (255, 0, 255)  # magenta: still masked
KEEP_REGIONS = ("top", "bottom", "left", "right", "center", "outside")
GIF_FRAMES = 48  # at most this many intermediate states in an animation


@dataclass
class ImageGeneration:
    images: np.ndarray  # uint8 [N, H, W, C]
    path: Path  # the PNG grid
    steps_path: Path | None  # the GIF (or PNG strip) of intermediate states, if asked for
    seconds: float
    nfe: int


# ------------------------------------------------------------------ pictures
def grid_shape(count: int) -> tuple[int, int]:
    """(rows, columns) of a near-square grid holding ``count`` images."""
    cols = math.ceil(math.sqrt(count))
    return math.ceil(count / cols), cols


def make_grid(images: np.ndarray, padding: int = 2, scale: int = 1, background: int = 255) -> np.ndarray:
    """Images uint8 [N, H, W, C] tiled into one picture [rows*(H*scale+pad)+pad, cols*(W*scale+pad)+pad, C]."""
    if images.ndim != 4 or images.shape[0] == 0:
        raise MaskdiffError("make_grid needs a non-empty batch of images [N, H, W, C]")
    if scale < 1 or padding < 0:
        raise MaskdiffError(f"grid scale must be >= 1 and padding >= 0, got {scale} and {padding}")
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w, c = images.shape
    rows, cols = grid_shape(n)
    grid = np.full((rows * (h + padding) + padding, cols * (w + padding) + padding, c), background, dtype=np.uint8)
    for i, image in enumerate(images):
        r, k = divmod(i, cols)
        top, left = padding + r * (h + padding), padding + k * (w + padding)
        grid[top : top + h, left : left + w] = image
    return grid


def to_pil(picture: np.ndarray):
    """A uint8 picture [H, W, C] (C = 1, 3 or 4) as a PIL image."""
    from PIL import Image

    return Image.fromarray(picture[..., 0] if picture.shape[2] == 1 else picture)


def save_png(picture: np.ndarray, path: str | Path) -> Path:
    """Write uint8 [H, W, C] (C = 1, 3 or 4) as a PNG file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(picture).save(path, format="PNG")
    return path


def state_pictures(z: torch.Tensor, mask_id: int, image_size: int, channels: int) -> np.ndarray:
    """Intermediate states [N, L] as RGB images [N, H, W, 3]; pixels with a masked sub-pixel in MASK_COLOR."""
    masked = (z == mask_id).view(z.shape[0], image_size, image_size, channels).any(-1).cpu().numpy()
    pixels = tokens_to_images(torch.where(z == mask_id, 0, z), image_size, channels)
    rgb = np.repeat(pixels, 3, axis=-1) if channels == 1 else pixels[..., :3].copy()
    rgb[masked] = MASK_COLOR
    return rgb


def save_animation(frames: list[np.ndarray], path: str | Path, seconds: float = 4.0) -> Path:
    """Frames (RGB pictures of one size) as an animated GIF that holds the last frame, or as a
    horizontal PNG strip when ``path`` ends in .png."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".png":
        strip = np.concatenate([np.pad(f, ((0, 0), (0, 4), (0, 0)), constant_values=255) for f in frames], axis=1)
        return save_png(strip, path)
    pictures = [to_pil(f) for f in frames]
    durations = [max(20, int(1000 * seconds / len(frames)))] * (len(frames) - 1) + [2000]
    pictures[0].save(path, format="GIF", save_all=True, append_images=pictures[1:], duration=durations, loop=0)
    return path


# ------------------------------------------------------------------ inpainting
def keep_mask(region: str, image_size: int, channels: int) -> torch.Tensor:
    """Which sub-pixels an inpainting keeps: top/bottom/left/right half, the center square (half
    the side), or everything outside it.  -> bool [H*W*C]"""
    if region not in KEEP_REGIONS:
        raise MaskdiffError(f"unknown region {region!r}; choose one of {', '.join(KEEP_REGIONS)}")
    s, half = image_size, image_size // 2
    keep = torch.zeros(s, s, dtype=torch.bool)
    rows, cols = slice(None), slice(None)
    if region == "top":
        rows = slice(0, half)
    elif region == "bottom":
        rows = slice(half, s)
    elif region == "left":
        cols = slice(0, half)
    elif region == "right":
        cols = slice(half, s)
    else:
        quarter = s // 4
        rows = cols = slice(quarter, quarter + half)
    keep[rows, cols] = True
    if region == "outside":
        keep = ~keep
    return keep[:, :, None].expand(s, s, channels).reshape(-1)


def inpainting_given(pixels: np.ndarray, region: str, mask_id: int) -> torch.Tensor:
    """The sampler's ``given`` row for an image [H, W, C]: kept sub-pixels, the mask id elsewhere.  -> [L]"""
    h, w, c = pixels.shape
    tokens = images_to_tokens(pixels[None])[0]
    return torch.where(keep_mask(region, h, c), tokens, mask_id)


# ------------------------------------------------------------------ the whole job
def image_labels(run: LoadedRun, num_samples: int, label: int | None, options: SamplerOptions) -> torch.Tensor | None:
    """The class labels [N] of ``num_samples`` images of class ``label`` (None: unconditional), checked against the run."""
    num_classes = getattr(run.config.model, "num_classes", 0)
    labels = None
    if label is not None:
        if not num_classes:
            raise OptionError("label", "this run is not class-conditional (model.num_classes = 0); drop the label ({label})")
        if not 0 <= label < num_classes:
            raise OptionError("label", f"{{label}} {label} is out of range: the run has classes 0..{num_classes - 1}")
        labels = torch.full((num_samples,), label, dtype=torch.long)
    if options.cfg and labels is None:
        raise OptionError("cfg", "classifier-free guidance ({cfg}) on images needs a class label ({label}) to guide towards")
    return labels


def image_precision(run: LoadedRun, precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for sampling an image run; "auto" follows the run's own precision (image
    runs on CPUs train in fp32: bf16 convolutions are slow there)."""
    return resolve_precision(run.config.train.precision if precision == "auto" else precision, device)


def default_output(run_dir: Path, inpaint: bool) -> Path:
    return run_dir / ("inpainting.png" if inpaint else "samples.png")


def plan_images(
    run: LoadedRun,
    num_samples: int,
    steps: int = STEPS.default,
    seed: int = 0,
    label: int | None = None,
    inpaint: str | Path | None = None,
    keep: str = "top",
    **sampler_options,
) -> SamplingRequest:
    """Check an image request against the run and turn it into a :class:`SamplingRequest`:
    every sub-pixel of ``num_samples`` images, of class ``label``, keeping the ``keep`` region of
    the image file ``inpaint``."""
    data = run.config.data
    if not data.data_format.is_image:
        raise MaskdiffError(f"{run.run_dir} is a text run; image sampling needs a run trained on images")
    size, channels = data.image_size, data.channels
    if num_samples < 1:
        raise OptionError("num_samples", f"{{num_samples}} must be >= 1, got {num_samples}")
    options = SamplerOptions(**sampler_options)
    labels = image_labels(run, num_samples, label, options)
    given = None
    if inpaint is not None:
        pixels = read_image_file(inpaint, channels)
        if pixels.shape[:2] != (size, size):
            raise MaskdiffError(f"image {str(inpaint)!r} is {pixels.shape[1]}x{pixels.shape[0]}, the run models {size}x{size} images")
        given = inpainting_given(pixels, keep, run.model.mask_id).expand(num_samples, -1).clone()
    return SamplingRequest(num_samples, size * size * channels, steps, options, given=given, labels=labels, seed=seed)


def sample_images(
    run: LoadedRun,
    request: SamplingRequest,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
    on_step: Callable[[Step], None] | None = None,
) -> tuple[np.ndarray, Sampled]:
    """Run an image request (:func:`plan_images`).  -> (uint8 images [N, H, W, C], the sampler's result)"""
    result = run_sampler(run.model, request, device=device, dtype=dtype, progress=progress, on_step=on_step)
    return tokens_to_images(result.final.z, run.config.data.image_size, run.config.data.channels), result


def generate_images(
    checkpoint: str | Path,
    num_samples: int = 16,
    steps: int = STEPS.default,
    seed: int = 0,
    label: int | None = None,
    inpaint: str | Path | None = None,
    keep: str = "top",
    output: str | Path | None = None,
    show_steps: bool = False,
    steps_output: str | Path | None = None,
    scale: int = 1,
    weights: str = "ema",
    device: str = "auto",
    precision: str = "auto",
    progress: bool = False,
    on_step: Callable[[Step], None] | None = None,
    **sampler_options,
) -> ImageGeneration:
    """Sample ``num_samples`` images from an image run and write them as a PNG grid.

    ``output`` defaults to ``RUN/samples.png`` (``RUN/inpainting.png`` when inpainting).
    ``label`` samples that class (class-conditional runs); ``cfg`` in ``sampler_options`` is the
    classifier-free guidance weight towards it. ``inpaint`` is a PNG/JPEG file of the run's image
    size whose ``keep`` region is kept in every sample. ``show_steps`` also writes the unmasking
    process as a GIF (``steps_output``, default: the grid's name with ``-steps.gif``; a .png
    name gives a strip).
    """
    dev = resolve_device(device)
    run = load_run(checkpoint, weights=weights, device=dev)
    request = plan_images(run, num_samples, steps, seed, label, inpaint, keep, **sampler_options)
    size, channels, mask_id = run.config.data.image_size, run.config.data.channels, run.model.mask_id
    path = Path(output) if output is not None else default_output(run.run_dir, inpaint is not None)
    if path.suffix.lower() != ".png":
        raise MaskdiffError(f"the sample grid is a PNG file; {str(path)!r} does not end in .png")
    check_output_path(path, "sample grid")
    steps_path = None
    if show_steps:
        steps_path = check_output_path(Path(steps_output) if steps_output else path.with_name(path.stem + "-steps.gif"), "animation")

    record = set(np.linspace(0, steps, min(steps + 1, GIF_FRAMES)).round().astype(int).tolist()) if show_steps else set()
    frames: list[np.ndarray] = []

    def watch(step: Step) -> None:
        if step.index in record or (show_steps and step.index == step.total):
            frames.append(make_grid(state_pictures(step.z, mask_id, size, channels), scale=scale))
        if on_step is not None:
            on_step(step)

    images, result = sample_images(run, request, dev, image_precision(run, precision, dev), progress, watch)
    save_keeping_the_work(lambda where: save_png(make_grid(images, scale=scale), where), path, ".png")
    if steps_path is not None:
        save_keeping_the_work(lambda where: save_animation(frames, where), steps_path, steps_path.suffix)
    return ImageGeneration(images, path, steps_path, result.seconds, result.final.nfe)


def save_keeping_the_work(save: Callable[[Path], object], path: Path, suffix: str) -> None:
    """``save(path)``; if that fails after all (disk full, the folder removed meanwhile), save to a
    temporary file instead and say where, so the samples are not lost."""
    try:
        save(path)
    except OSError as err:
        handle, fallback = tempfile.mkstemp(prefix="maskdiff-", suffix=suffix)
        os.close(handle)
        save(Path(fallback))
        raise MaskdiffError(f"could not write {str(path)!r} ({err.strerror or err}); the result is in {fallback}") from None

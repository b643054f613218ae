"""Generation from a trained run: a shared front-end (:mod:`~maskdiff.generation.frontend`) with one
adapter per modality: text (prompts, infilling, decoding) and images (labels, inpainting, grids)."""

from maskdiff.generation.frontend import Sampled, run_sampler
from maskdiff.generation.images import generate_images
from maskdiff.generation.text import SAMPLE_DIVIDER, Generation, generate_text, join_samples, split_samples

__all__ = ["SAMPLE_DIVIDER", "Generation", "Sampled", "generate_images", "generate_text", "join_samples", "run_sampler", "split_samples"]

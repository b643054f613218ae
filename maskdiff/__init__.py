"""maskdiff: masked (absorbing-state) discrete diffusion models on PyTorch.

    import maskdiff
    schedule = maskdiff.schedules.get("cosine")
    model = maskdiff.MaskedDiffusion(denoiser, schedule=schedule, vocab_size=V)
    loss = model.nelbo(x0)                     # nats per sequence, [B]
    samples = model.sample(4, 128, steps=256)  # [4, 128] token ids
    genmd4 = maskdiff.GenMD4(denoiser, vocab_size=V)   # a learned schedule per token value (.w)
"""

from maskdiff import schedules
from maskdiff.config import DataConfig, DiffusionConfig, ModelConfig, RunConfig, TrainConfig
from maskdiff.diffusion import MaskedDiffusion
from maskdiff.genmd4 import GenMD4
from maskdiff.errors import MaskdiffError
from maskdiff.transformer import Transformer

__version__ = "0.1.0"

__all__ = [
    "schedules",
    "MaskedDiffusion",
    "GenMD4",
    "Transformer",
    "MaskdiffError",
    "RunConfig",
    "ModelConfig",
    "DiffusionConfig",
    "DataConfig",
    "TrainConfig",
]

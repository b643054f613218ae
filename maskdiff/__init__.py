"""maskdiff: masked (absorbing-state) discrete diffusion models on PyTorch.

    import maskdiff
    schedule = maskdiff.schedules.get("cosine")
    model = maskdiff.MaskedDiffusion(denoiser, schedule=schedule, vocab_size=V)
    loss = model.nelbo(x0)                     # nats per sequence, [B]
    samples = model.sample(4, 128, steps=256)  # [4, 128] token ids
    genmd4 = maskdiff.GenMD4(denoiser, vocab_size=V)   # a learned schedule per token value (.w)
    arm = maskdiff.Autoregressive(causal_net, vocab_size=V)  # the baseline: exact NLL, KV-cache sampling

docs/architecture.md maps the modules; the sub-packages are importable from here
(``maskdiff.sampling``, ``maskdiff.objectives``, ``maskdiff.nets``, ``maskdiff.data``, ...).
"""

__version__ = "0.1.0"  # the one place the version is stated (pyproject.toml reads it)

from maskdiff import data, evaluation, generation, nets, objectives, sampling, schedules, training  # noqa: E402
from maskdiff.checkpoint import LoadedRun, load_run  # noqa: E402
from maskdiff.config import DataConfig, DiffusionConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402
from maskdiff.errors import MaskdiffError  # noqa: E402
from maskdiff.nets import Transformer  # noqa: E402
from maskdiff.objectives import Autoregressive, GenMD4, MaskedDiffusion, Objective  # noqa: E402

__all__ = [
    "__version__",
    "data",
    "evaluation",
    "generation",
    "nets",
    "objectives",
    "sampling",
    "schedules",
    "training",
    "MaskedDiffusion",
    "GenMD4",
    "Autoregressive",
    "Objective",
    "Transformer",
    "MaskdiffError",
    "LoadedRun",
    "load_run",
    "RunConfig",
    "ModelConfig",
    "DiffusionConfig",
    "DataConfig",
    "TrainConfig",
]

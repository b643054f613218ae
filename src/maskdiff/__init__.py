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

import importlib
from typing import TYPE_CHECKING, Any

# Loaded on first use (PEP 562), so that `import maskdiff` and the `maskdiff` command start without
# importing torch up front, and a Ctrl-C during that import ends quietly (maskdiff/launch.py).
SUBMODULES = ("data", "evaluation", "generation", "nets", "objectives", "sampling", "schedules", "training")
EXPORTS = {
    "load": "maskdiff.runs",
    "Run": "maskdiff.runs",
    "MaskedDiffusion": "maskdiff.objectives",
    "Autoregressive": "maskdiff.objectives",
    "GenMD4": "maskdiff.objectives",
    "Objective": "maskdiff.objectives",
    "Transformer": "maskdiff.nets",
    "MaskdiffError": "maskdiff.errors",
    "LoadedRun": "maskdiff.checkpoint",
    "load_run": "maskdiff.checkpoint",
    "RunConfig": "maskdiff.config",
    "ModelConfig": "maskdiff.config",
    "DiffusionConfig": "maskdiff.config",
    "ObjectiveConfig": "maskdiff.config",
    "DataConfig": "maskdiff.config",
    "TrainConfig": "maskdiff.config",
}
__all__ = ["__version__", *SUBMODULES, *EXPORTS]

if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from maskdiff import data, evaluation, generation, nets, objectives, sampling, schedules, training  # noqa: F401
    from maskdiff.checkpoint import LoadedRun, load_run  # noqa: F401
    from maskdiff.config import DataConfig, DiffusionConfig, ModelConfig, ObjectiveConfig, RunConfig, TrainConfig  # noqa: F401
    from maskdiff.errors import MaskdiffError  # noqa: F401
    from maskdiff.nets import Transformer  # noqa: F401
    from maskdiff.objectives import Autoregressive, GenMD4, MaskedDiffusion, Objective  # noqa: F401
    from maskdiff.runs import Run, load  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in SUBMODULES:
        return importlib.import_module(f"maskdiff.{name}")
    if name in EXPORTS:
        return getattr(importlib.import_module(EXPORTS[name]), name)
    raise AttributeError(f"module 'maskdiff' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

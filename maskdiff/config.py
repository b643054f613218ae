"""Typed run configuration: model, diffusion, data and training sections, validated when built.

Every field carries a one-line doc (``maskdiff presets --show NAME`` prints them). A run folder
stores the resolved config as config.json, so nothing about a run lives only in a command line.
Overrides use dotted keys, e.g. ``train.steps=200`` or ``model.d_model=256``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maskdiff.errors import MaskdiffError


def option(default: Any, doc: str) -> Any:
    """A dataclass field with a default and a one-line description."""
    return field(default=default, metadata={"doc": doc})


class Section:
    """Shared behaviour of config sections: validation on construction and (de)serialisation."""

    def problems(self) -> list[str]:
        return []

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise MaskdiffError("invalid config: " + "; ".join(problems))

    @classmethod
    def docs(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cls)}


ARCHITECTURES = ("transformer", "unet", "uvit")
DATA_FORMATS = ("text", "idx", "cifar10", "npz", "folder")


@dataclass
class ModelConfig(Section):
    n_layers: int = option(4, "number of transformer blocks (unet: residual blocks on each side of the middle)")
    d_model: int = option(128, "width of the residual stream (unet: channels)")
    n_heads: int = option(4, "attention heads (unet: in the middle attention); d_model must be a multiple of 2 * n_heads")
    mlp_ratio: int = option(4, "hidden width of the MLP as a multiple of d_model")
    time_conditioning: bool = option(False, "condition every block on t with adaLN-Zero (off: the network ignores t)")
    time_features: int = option(256, "size of the sinusoidal embedding of t (with time_conditioning)")
    dropout: float = option(0.0, "dropout probability in attention and MLP")
    rope_base: float = option(10_000.0, "base of the rotary position embedding frequencies")
    architecture: str = option("transformer", "denoiser network: transformer (any data), unet or uvit (images; see data.format)")
    pixel_features: int = option(32, "unet/uvit: embedding size of each sub-pixel token before the first layer")
    patch_size: int = option(4, "uvit: side of the square patches that become transformer tokens")
    num_classes: int = option(0, "unet/uvit: number of class labels to condition on (0: unconditional)")
    label_dropout: float = option(0.1, "with num_classes: probability of training on the null label (for guidance)")

    def problems(self) -> list[str]:
        out = []
        if self.architecture not in ARCHITECTURES:
            out.append(f"model.architecture must be one of {', '.join(ARCHITECTURES)}, not {self.architecture!r}")
        if self.num_classes < 0:
            out.append("model.num_classes must be >= 0")
        if self.num_classes and self.architecture == "transformer":
            out.append("model.num_classes needs model.architecture unet or uvit")
        if not 0 <= self.label_dropout < 1:
            out.append("model.label_dropout must be in [0, 1)")
        for name in ("n_layers", "d_model", "n_heads", "mlp_ratio", "time_features", "pixel_features", "patch_size"):
            if getattr(self, name) < 1:
                out.append(f"model.{name} must be >= 1")
        if self.n_heads >= 1 and self.d_model % (2 * self.n_heads):
            out.append(f"model.d_model ({self.d_model}) must be a multiple of 2 * model.n_heads ({2 * self.n_heads})")
        if not 0 <= self.dropout < 1:
            out.append("model.dropout must be in [0, 1)")
        if self.rope_base <= 1:
            out.append("model.rope_base must be > 1")
        return out


OBJECTIVES = ("md4", "genmd4")


@dataclass
class DiffusionConfig(Section):
    objective: str = option("md4", "md4 (one masking schedule for all tokens) or genmd4 (a learned schedule per token value)")
    schedule: str = option("linear", "md4 masking schedule: linear, cosine, polyK (e.g. poly2), geometric, loglinear")
    power_init: float = option(1.0, "genmd4: initial exponent w of every token's schedule 1 - t^w (1: linear)")
    t1: float = option(1e-3, "genmd4: smallest time of the integral; a closed-form reconstruction term covers [0, t1]")

    def problems(self) -> list[str]:
        from maskdiff import schedules

        out = []
        if self.objective not in OBJECTIVES:
            out.append(f"diffusion.objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        try:
            schedules.get(self.schedule)
        except MaskdiffError as err:
            out.append(f"diffusion.schedule: {err}")
        if not self.power_init > 0:
            out.append("diffusion.power_init must be > 0")
        if not 0 <= self.t1 < 1:
            out.append("diffusion.t1 must be in [0, 1)")
        return out


@dataclass
class DataConfig(Section):
    path: str = option("", "UTF-8 text file to train on; empty: the built-in Shakespeare corpus (images: file or folder)")
    seq_len: int = option(128, "tokens per training sequence (images: image_size * image_size * channels)")
    valid_fraction: float = option(0.05, "fraction of the corpus held out for validation")
    test_fraction: float = option(0.05, "fraction of the corpus held out for testing (images: only without a test split)")
    format: str = option("text", "text, or images: idx (MNIST), cifar10 (python batches), npz (downsampled ImageNet), folder (PNG/JPEG)")
    image_size: int = option(0, "images: height = width in pixels")
    channels: int = option(1, "images: colour channels (1 grey, 3 RGB)")

    @property
    def is_image(self) -> bool:
        """Whether the data are images (sequences of H*W*C sub-pixel tokens in 0..255)."""
        return self.format != "text"

    def problems(self) -> list[str]:
        out = []
        if self.seq_len < 1:
            out.append("data.seq_len must be >= 1")
        if self.format not in DATA_FORMATS:
            out.append(f"data.format must be one of {', '.join(DATA_FORMATS)}, not {self.format!r}")
        elif self.is_image:
            if self.image_size < 1 or self.channels not in (1, 3, 4):
                out.append("image data need data.image_size >= 1 and data.channels 1, 3 or 4")
            elif self.seq_len != self.image_size**2 * self.channels:
                out.append(
                    f"data.seq_len must be image_size * image_size * channels = {self.image_size**2 * self.channels} "
                    f"for images, not {self.seq_len}"
                )
        for name in ("valid_fraction", "test_fraction"):
            if not 0 < getattr(self, name) < 0.5:
                out.append(f"data.{name} must be in (0, 0.5)")
        return out


@dataclass
class TrainConfig(Section):
    steps: int = option(1000, "optimizer steps")
    batch_size: int = option(32, "sequences per micro-batch")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    lr: float = option(1e-3, "peak learning rate")
    min_lr_ratio: float = option(0.1, "final learning rate as a fraction of lr (cosine decay)")
    warmup_steps: int = option(100, "steps of linear warm-up")
    weight_decay: float = option(0.1, "AdamW weight decay on matrices")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.99, "AdamW beta2")
    grad_clip: float = option(1.0, "clip the gradient norm to this value; 0 disables")
    ema_decay: float = option(0.999, "decay of the EMA weights used for evaluation and sampling; 0 disables")
    log_every: int = option(25, "steps between logged training metrics")
    eval_every: int = option(250, "steps between validation evaluations; 0 disables")
    eval_sequences: int = option(64, "validation sequences used by periodic evaluation")
    checkpoint_every: int = option(500, "steps between checkpoints (one is always written at the end)")
    keep_checkpoints: int = option(3, "how many recent checkpoints to keep")
    max_bad_steps: int = option(10, "stop after this many steps in a row with a non-finite loss or gradient")
    seed: int = option(0, "seed of the model initialisation, data order and masking noise")
    precision: str = option("auto", "auto (bf16 autocast where the hardware has fast bf16), bf16 or fp32")
    device: str = option("auto", "auto, cpu or cuda")

    def problems(self) -> list[str]:
        out = []
        for name in ("steps", "batch_size", "grad_accum", "log_every", "eval_sequences", "keep_checkpoints", "checkpoint_every", "max_bad_steps"):
            if getattr(self, name) < 1:
                out.append(f"train.{name} must be >= 1")
        for name in ("warmup_steps", "eval_every"):
            if getattr(self, name) < 0:
                out.append(f"train.{name} must be >= 0")
        if not self.lr > 0:
            out.append("train.lr must be > 0")
        if not 0 <= self.min_lr_ratio <= 1:
            out.append("train.min_lr_ratio must be in [0, 1]")
        for name in ("beta1", "beta2", "ema_decay"):
            if not 0 <= getattr(self, name) < 1:
                out.append(f"train.{name} must be in [0, 1)")
        if self.weight_decay < 0 or self.grad_clip < 0:
            out.append("train.weight_decay and train.grad_clip must be >= 0")
        if self.precision not in ("auto", "bf16", "fp32"):
            out.append(f"train.precision must be auto, bf16 or fp32, not {self.precision!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            out.append(f"train.device must be auto, cpu or cuda, not {self.device!r}")
        return out


SECTIONS: dict[str, type[Section]] = {
    "model": ModelConfig,
    "diffusion": DiffusionConfig,
    "data": DataConfig,
    "train": TrainConfig,
}


@dataclass
class RunConfig:
    """Everything that defines a training run."""

    preset: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "RunConfig":
        """Build and validate a config; every problem in every section is reported at once."""
        unknown = sorted(set(raw) - set(SECTIONS) - {"preset"})
        problems = [f"unknown config section {name!r}" for name in unknown]
        sections = {}
        for name, section_cls in SECTIONS.items():
            values = raw.get(name, {})
            names = {f.name for f in dataclasses.fields(section_cls)}
            problems += [f"unknown config key {name}.{key}" for key in sorted(set(values) - names)]
            kwargs = {k: v for k, v in values.items() if k in names}
            problems += [p for key, value in kwargs.items() for p in _type_problems(section_cls, name, key, value)]
            sections[name] = section_cls.__new__(section_cls)
            for f in dataclasses.fields(section_cls):
                value = kwargs.get(f.name, f.default)
                if _field_type(section_cls, f.name) is float and isinstance(value, int):
                    value = float(value)
                setattr(sections[name], f.name, value)
        if not problems:
            problems = [p for s in sections.values() for p in s.problems()]
        if problems:
            raise MaskdiffError("invalid config: " + "; ".join(problems))
        return cls(preset=str(raw.get("preset", "custom")), **sections)

    def with_overrides(self, overrides: list[str]) -> "RunConfig":
        """A copy with ``section.key=value`` strings applied (values parsed by the field's type)."""
        raw = self.to_dict()
        for item in overrides:
            key, sep, text = item.partition("=")
            if not sep:
                raise MaskdiffError(f"override {item!r} is not of the form section.key=value")
            section, _, name = key.strip().partition(".")
            section_cls = SECTIONS.get(section)
            if section_cls is None or name not in section_cls.docs():
                raise MaskdiffError(f"unknown config key {key.strip()!r}{_suggest(key.strip())}")
            raw[section][name] = parse_value(section_cls, section, name, text.strip())
        return RunConfig.from_dict(raw)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "RunConfig":
        try:
            raw = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise MaskdiffError(f"no config.json in {Path(path).parent}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise MaskdiffError(f"{path} is not valid JSON: {err}") from None
        return cls.from_dict(raw)


def all_keys() -> list[str]:
    return [f"{section}.{name}" for section, cls in SECTIONS.items() for name in cls.docs()]


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, all_keys(), n=1)
    return f"; did you mean {close[0]!r}?" if close else "; `maskdiff presets --show tiny` lists the keys"


def _field_type(section_cls: type, name: str) -> type:
    return typing.get_type_hints(section_cls)[name]


def _type_problems(section_cls: type, section: str, name: str, value: Any) -> list[str]:
    expected = _field_type(section_cls, name)
    ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        return [f"{section}.{name} must be {expected.__name__}, got {value!r}"]
    if expected is float and not math.isfinite(value):
        return [f"{section}.{name} must be a finite number, got {value!r}"]
    return []


def parse_value(section_cls: type, section: str, name: str, text: str) -> Any:
    """Parse ``text`` as the type of ``section.name``, with a clear error on mismatch."""
    expected = _field_type(section_cls, name)
    try:
        if expected is bool:
            lowered = text.lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if expected is int:
            return int(text.replace("_", ""))
        if expected is float:
            return float(text)
        return text
    except ValueError:
        raise MaskdiffError(f"{section}.{name} must be {expected.__name__}, got {text!r}") from None

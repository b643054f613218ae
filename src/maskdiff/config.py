"""Typed run configuration: model, objective, data and training sections, validated when built.

Every field carries a one-line doc (``maskdiff presets --show NAME`` prints them). A run folder
stores the resolved config as config.json, so nothing about a run lives only in a command line.
Overrides use dotted keys, e.g. ``train.steps=200`` or ``model.d_model=256``. Two sections take
their type from a choice: ``model`` from ``model.architecture`` and ``objective`` from
``objective.name``, so each holds only what its network or objective uses.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maskdiff.data import FORMATS, DataFormat, Modality
from maskdiff.errors import MaskdiffError
from maskdiff.nets import ARCHITECTURES, TransformerConfig, UNetConfig, UViTConfig
from maskdiff.objectives import OBJECTIVES, ObjectiveSection
from maskdiff.registry import Registry
from maskdiff.sections import Section, option

ModelSection = TransformerConfig | UNetConfig | UViTConfig


def ModelConfig(architecture: str = "transformer", **fields: Any) -> Any:  # noqa: N802 (reads as the section type it builds)
    """The ``model`` section for ``architecture``: each architecture has its own typed section
    (:class:`~maskdiff.nets.TransformerConfig`, :class:`~maskdiff.nets.UNetConfig`, ...), registered
    in :data:`maskdiff.nets.ARCHITECTURES`; ``fields`` are that section's fields."""
    section_cls = ARCHITECTURES.get(architecture).config
    try:
        return section_cls(architecture=architecture, **fields)
    except TypeError as err:
        raise MaskdiffError(f"invalid config: model.architecture={architecture}: {err}") from None


def ObjectiveConfig(name: str = "md4", **fields: Any) -> Any:  # noqa: N802 (reads as the section type it builds)
    """The ``objective`` section for objective ``name``: each objective has its own typed section
    (:class:`~maskdiff.objectives.MD4Config`, :class:`~maskdiff.objectives.GenMD4Config`, ...),
    registered in :data:`maskdiff.objectives.OBJECTIVES`; ``fields`` are that section's fields."""
    section_cls = OBJECTIVES.get(name).config
    try:
        return section_cls(name=name, **fields)
    except TypeError as err:
        raise MaskdiffError(f"invalid config: objective.name={name}: {err}") from None


def DiffusionConfig(objective: str = "md4", **fields: Any) -> Any:  # noqa: N802 (the earlier name of the objective section)
    """The ``objective`` section under its earlier name, when it was the ``diffusion`` section:
    ``DiffusionConfig(objective="genmd4", power_init=2.0)`` is ``ObjectiveConfig("genmd4", power_init=2.0)``.
    Keys of that section which this objective has no use for (``schedule`` of GenMD4, ...) are dropped, as they were ignored."""
    own = OBJECTIVES.get(objective).config.docs()
    return ObjectiveConfig(objective, **{key: value for key, value in fields.items() if key in own or key not in LEGACY_DIFFUSION_KEYS})


# the keys of the ``diffusion`` section that config files and --set used before each objective had
# its own section, and what they are now; the old spellings are read for one release
LEGACY_DIFFUSION_KEYS = {"objective": "name", "schedule": "schedule", "power_init": "power_init", "t1": "t1"}


@dataclass
class DataConfig(Section):
    path: str = option(
        "",
        "UTF-8 text file to train on; empty: the built-in Shakespeare corpus (images: file or folder; "
        "pairs: a JSONL file of prompt/response pairs or a folder with train.jsonl, valid.jsonl, test.jsonl; "
        "tokens: a folder written by `maskdiff prepare`)",
    )
    seq_len: int = option(128, "tokens per training sequence (images: image_size * image_size * channels)")
    valid_fraction: float = option(0.05, "fraction of the corpus held out for validation")
    test_fraction: float = option(0.05, "fraction of the corpus held out for testing (images: only without a test split)")
    format: str = option(
        "text",
        "a registered data format: text, pairs (prompt/response JSONL for conditional fine-tuning), tokens (shards from `maskdiff prepare`), "
        "or images: idx (MNIST), cifar10 (python batches), npz (downsampled ImageNet), folder (PNG/JPEG)",
    )
    image_size: int = option(0, "images: height = width in pixels")
    channels: int = option(1, "images: colour channels (1 grey, 3 RGB)")
    eos: str = option("", "pairs: the end-of-text character that ends every response and pads the sequence (samples are cut at it)")
    random_length: float = option(
        0.01,
        "tokens: fraction of training sequences cut to a random length (SMDM), the rest given as end-of-text padding that is never scored",
    )

    @property
    def data_format(self) -> DataFormat:
        """The registered format of ``data.format``: ask it what differs between formats."""
        return FORMATS.get(self.format)

    @property
    def modality(self) -> Modality:
        """What the format declares its data to be: text, or images (H*W*C sub-pixel tokens in 0..255)."""
        return self.data_format.modality

    def problems(self) -> list[str]:
        out = []
        if self.seq_len < 1:
            out.append("data.seq_len must be >= 1")
        if self.format not in FORMATS:
            out.append(f"data.format must be one of {', '.join(FORMATS)}, not {self.format!r}")
        else:
            out += self.data_format.problems(self)
        for name in ("valid_fraction", "test_fraction"):
            if not 0 < getattr(self, name) < 0.5:
                out.append(f"data.{name} must be in (0, 0.5)")
        if not 0 <= self.random_length <= 1:
            out.append("data.random_length must be in [0, 1]")
        return out


@dataclass
class TrainConfig(Section):
    steps: int = option(1000, "optimizer steps")
    batch_size: int = option(32, "sequences per micro-batch (per process under torchrun)")
    grad_accum: int = option(1, "micro-batches per optimizer step (leave at 1 when train.global_batch is set)")
    global_batch: int = option(
        0,
        "sequences per optimizer step over all processes; micro-batches are accumulated to reach it and it must be a "
        "multiple of batch_size * processes (0: batch_size * grad_accum * processes)",
    )
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
    final_eval_samples: int = option(
        8, "Monte Carlo draws per sequence of the final validation bound on the whole split (an exact likelihood takes one)"
    )
    checkpoint_every: int = option(500, "steps between checkpoints (one is always written at the end)")
    keep_checkpoints: int = option(3, "how many recent checkpoints to keep")
    max_bad_steps: int = option(10, "stop after this many steps in a row with a non-finite loss or gradient")
    seed: int = option(0, "seed of the model initialisation, data order and masking noise")
    precision: str = option("auto", "auto (bf16 autocast where the hardware has fast bf16), bf16 or fp32")
    device: str = option("auto", "auto, cpu or cuda")
    parallel: str = option(
        "ddp", "under torchrun: ddp (every process holds the whole model) or fsdp (FSDP2: parameters, gradients and optimizer state sharded)"
    )
    activation_checkpointing: bool = option(False, "recompute each block's activations in the backward pass: less memory, about a third more compute")
    compile: bool = option(False, "compile the loss computation with torch.compile (eager, with a warning, where compiling fails)")

    def problems(self) -> list[str]:
        out = []
        for name in (
            "steps",
            "batch_size",
            "grad_accum",
            "log_every",
            "eval_sequences",
            "final_eval_samples",
            "keep_checkpoints",
            "checkpoint_every",
            "max_bad_steps",
        ):
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
        if self.parallel not in ("ddp", "fsdp"):
            out.append(f"train.parallel must be ddp or fsdp, not {self.parallel!r}")
        if self.global_batch < 0:
            out.append("train.global_batch must be >= 0")
        elif self.global_batch and self.grad_accum != 1:
            out.append("train.global_batch and train.grad_accum both set: the accumulation follows from the global batch (leave grad_accum at 1)")
        return out

    def accumulation(self, processes: int) -> int:
        """Micro-batches per optimizer step on each of ``processes`` processes (train.global_batch or train.grad_accum)."""
        if not self.global_batch:
            return self.grad_accum
        per_micro_batch = self.batch_size * processes
        if self.global_batch % per_micro_batch:
            raise MaskdiffError(
                f"train.global_batch={self.global_batch} is not a multiple of train.batch_size * processes = "
                f"{self.batch_size} * {processes} = {per_micro_batch}"
            )
        return self.global_batch // per_micro_batch


@dataclass(frozen=True)
class Choice:
    """A section whose type comes from one of its keys: ``key`` names an entry of ``registry``, whose ``config`` is the section type."""

    key: str
    registry: Registry
    default: str
    refusal: str = ""  # how an unknown name is refused ({key}, {names}, {name}); empty: the registry's own words

    def section_type(self, section: str, values: dict) -> type[Section]:
        name = values.get(self.key, self.default)
        if self.refusal and name not in self.registry:
            raise MaskdiffError(self.refusal.format(key=f"{section}.{self.key}", names=", ".join(self.registry), name=name))
        return self.registry.get(name).config


# the sections whose type is chosen: the network (maskdiff.nets.ARCHITECTURES) and the objective
# (maskdiff.objectives.OBJECTIVES) each register their own
CHOSEN: dict[str, Choice] = {
    "model": Choice("architecture", ARCHITECTURES, "transformer"),
    "objective": Choice("name", OBJECTIVES, "md4", "{key} must be one of {names}, got {name!r}"),
}
# the sections every run has whatever it trains
SECTIONS: dict[str, type[Section]] = {
    "data": DataConfig,
    "train": TrainConfig,
}
SECTION_ORDER = ("model", "objective", "data", "train")


def model_section_type(architecture: str) -> type[Section]:
    """The ``model`` section type of an architecture (a MaskdiffError naming the choices if unknown)."""
    return ARCHITECTURES.get(architecture).config


def section_type(name: str, values: dict) -> type[Section] | None:
    """The section class for ``name`` given its raw values (the model's depends on its architecture,
    the objective's on its name)."""
    if name in CHOSEN:
        return CHOSEN[name].section_type(name, values)
    return SECTIONS.get(name)


def _misplaced_key(section: str, key: str) -> str:
    """Why a key of a chosen section is unknown: it belongs to other choices (architectures, objectives), or to none."""
    choice = CHOSEN[section]
    owners = [name for name, entry in choice.registry.items() if key in entry.config.docs()]
    return f"{section}.{key} needs {section}.{choice.key} {' or '.join(owners)}" if owners else f"unknown config key {section}.{key}"


@dataclass
class RunConfig:
    """Everything that defines a training run."""

    preset: str = "custom"
    model: ModelSection = field(default_factory=TransformerConfig)
    objective: ObjectiveSection = field(default_factory=lambda: ObjectiveConfig())
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def sections(self) -> dict[str, Section]:
        """Section name -> section, in display order."""
        return {name: getattr(self, name) for name in SECTION_ORDER}

    @classmethod
    def from_dict(cls, raw: dict) -> RunConfig:
        """Build and validate a config; every problem in every section is reported at once.
        A ``diffusion`` section (the earlier form of ``objective``) is read as the objective's."""
        raw = upgrade_diffusion_section(raw)
        unknown = sorted(set(raw) - set(SECTION_ORDER) - {"preset"})
        problems = [f"unknown config section {name!r}" for name in unknown]
        sections = {}
        for name in SECTION_ORDER:
            values = raw.get(name, {})
            try:
                section_cls = section_type(name, values)
            except MaskdiffError as err:
                problems.append(str(err))
                continue
            assert section_cls is not None
            names = {f.name for f in dataclasses.fields(section_cls)}  # type: ignore[arg-type]
            for key in sorted(set(values) - names):
                problems.append(_misplaced_key(name, key) if name in CHOSEN else f"unknown config key {name}.{key}")
            kwargs = {k: v for k, v in values.items() if k in names}
            problems += [p for key, value in kwargs.items() for p in _type_problems(section_cls, name, key, value)]
            section = section_cls.__new__(section_cls)
            for f in dataclasses.fields(section_cls):  # type: ignore[arg-type]
                value = kwargs.get(f.name, f.default)
                if _field_type(section_cls, f.name) is float and isinstance(value, int):
                    value = float(value)
                setattr(section, f.name, value)
            sections[name] = section
        if not problems:
            problems = [p for s in sections.values() for p in s.problems()]
            problems += sections["objective"].network_problems(sections["model"])  # type: ignore[attr-defined]
        if problems:
            raise MaskdiffError("invalid config: " + "; ".join(problems))
        return cls(preset=str(raw.get("preset", "custom")), **sections)  # type: ignore[arg-type]

    def with_overrides(self, overrides: list[str]) -> RunConfig:
        """A copy with ``section.key=value`` strings applied (values parsed by the field's type).

        ``model.architecture=NAME`` switches the model section to that architecture's type, and
        ``objective.name=NAME`` the objective section to that objective's, keeping the values of
        the fields both types have. The earlier spellings ``diffusion.KEY`` still work for one
        release, with a one-line note; errors then name the key as it was spelled.
        """
        raw = self.to_dict()
        problems = []  # every bad override is reported, together with the config's own problems
        spelled: dict[str, str] = {}  # key as maskdiff names it -> as the user spelled it
        for item in overrides:
            try:
                item = _respell(item, spelled, raw)
                if item:
                    _apply_override(raw, item, self)
            except MaskdiffError as err:
                problems.append(str(err).removeprefix("invalid config: "))
        try:
            cfg = RunConfig.from_dict(raw)
        except MaskdiffError as err:
            problems.append(str(err).removeprefix("invalid config: "))
        if problems:
            message = "invalid config: " + "; ".join(problems)
            for key, spelling in spelled.items():
                message = message.replace(key, spelling)
            raise MaskdiffError(message)
        return cfg

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        try:
            raw = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise MaskdiffError(f"no config.json in {Path(path).parent}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise MaskdiffError(f"{path} is not valid JSON: {err}") from None
        return cls.from_dict(_drop_legacy_model_keys(raw))


# what may differ between a run's saved config and the config it resumes with: how long it runs
# and how it reports, checkpoints and computes; everything else (model, objective, data,
# tokenizer, batch, optimizer, seed) defines the run and stays as it was
RESUMABLE_KEYS = (
    "train.steps",
    "train.log_every",
    "train.eval_every",
    "train.eval_sequences",
    "train.final_eval_samples",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.max_bad_steps",
    "train.precision",
    "train.device",
    "train.activation_checkpointing",
    "train.compile",
)


def resume_conflicts(saved: RunConfig, wanted: RunConfig) -> list[str]:
    """The keys outside :data:`RESUMABLE_KEYS` whose values differ, as ``key (V in the run, W asked)``."""
    old, new = saved.to_dict(), wanted.to_dict()
    out = []
    for section in SECTION_ORDER:
        for key in sorted(set(old[section]) | set(new[section])):
            name = f"{section}.{key}"
            before, after = old[section].get(key), new[section].get(key)
            if before != after and name not in RESUMABLE_KEYS:
                out.append(f"{name} ({before!r} in the run, {after!r} asked)")
    return out


def _apply_override(raw: dict, item: str, cfg: RunConfig) -> None:
    """Set one ``section.key=value`` in the raw dict of ``cfg``, the value parsed by the field's type."""
    key, sep, text = item.partition("=")
    if not sep:
        raise MaskdiffError(f"override {item!r} is not of the form section.key=value")
    section, _, name = key.strip().partition(".")
    section_cls = section_type(section, raw.get(section, {})) if section in SECTION_ORDER else None
    if section_cls is None or name not in section_cls.docs():
        if section in CHOSEN and section_cls is not None:
            raise MaskdiffError(f"{_misplaced_key(section, name)}{_suggest(key.strip(), cfg)}")
        raise MaskdiffError(f"unknown config key {key.strip()!r}{_suggest(key.strip(), cfg)}")
    raw[section][name] = parse_value(section_cls, section, name, text.strip())
    choice = CHOSEN.get(section)
    if choice is not None and name == choice.key and raw[section][name] in choice.registry:  # an unknown one is reported with the rest
        raw[section] = _keep_known(raw[section], choice.section_type(section, raw[section]))


_NOTED: set[str] = set()  # the old spellings already noted in this process


def _respell(item: str, spelled: dict[str, str], raw: dict) -> str:
    """An override in the earlier ``diffusion.KEY=VALUE`` spelling as ``objective.KEY=VALUE``, noted
    once on stderr; empty when the objective of ``raw`` has no such key (the earlier section
    accepted it and the objective ignored it, so it is still ignored)."""
    key, sep, text = item.partition("=")
    section, _, name = key.strip().partition(".")
    if section != "diffusion" or name not in LEGACY_DIFFUSION_KEYS:
        return item
    new = f"objective.{LEGACY_DIFFUSION_KEYS[name]}"
    spelled[new] = key.strip()
    used = name == "objective" or LEGACY_DIFFUSION_KEYS[name] in CHOSEN["objective"].section_type("objective", raw["objective"]).docs()
    if key.strip() not in _NOTED:
        _NOTED.add(key.strip())
        ignored = "" if used else f" (objective {raw['objective'].get('name')} has none: ignored)"
        print(f"maskdiff: note: {key.strip()} is now {new}{ignored}; the old spelling goes in the next release", file=sys.stderr)
    return f"{new}{sep}{text}" if used else ""


def upgrade_diffusion_section(raw: dict) -> dict:
    """A config written before each objective had its own section held ``diffusion``
    (``objective``, ``schedule``, ``power_init``, ``t1``): it becomes the objective's section,
    without the keys that objective never used."""
    old = raw.get("diffusion")
    if not isinstance(old, dict) or "objective" in raw:
        return raw
    values = {LEGACY_DIFFUSION_KEYS.get(key, key): value for key, value in old.items()}
    name = values.setdefault("name", "md4")
    if name in OBJECTIVES:
        own = OBJECTIVES.get(name).config.docs()
        values = {key: value for key, value in values.items() if key in own or key not in LEGACY_DIFFUSION_KEYS.values()}
    return {**{key: value for key, value in raw.items() if key != "diffusion"}, "objective": values}


def _keep_known(values: dict, section_cls: type[Section]) -> dict:
    """The values of ``section_cls``'s fields among ``values``."""
    known = section_cls.docs()
    return {k: v for k, v in values.items() if k in known}


def _drop_legacy_model_keys(raw: dict) -> dict:
    """A config.json written before each architecture had its own model section held every
    architecture's fields in one section; the fields of other architectures are dropped."""
    model = raw.get("model")
    if isinstance(model, dict) and model.get("architecture", "transformer") in ARCHITECTURES:
        legacy = {"mlp_ratio", "rope_base", "patch_size", "pixel_features", "num_classes", "label_dropout"}
        own = model_section_type(model.get("architecture", "transformer")).docs()
        raw = {**raw, "model": {k: v for k, v in model.items() if k in own or k not in legacy}}
    return raw


def all_keys(cfg: RunConfig | None = None) -> list[str]:
    """Every ``section.key`` of ``cfg`` (default: a transformer run)."""
    cfg = cfg or RunConfig()
    return [f"{name}.{key}" for name, section in cfg.sections().items() for key in section.docs()]


def _suggest(key: str, cfg: RunConfig | None = None) -> str:
    close = difflib.get_close_matches(key, all_keys(cfg), n=1)
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

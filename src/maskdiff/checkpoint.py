"""Run folders and checkpoints.

A run folder is self-describing; its config, tokenizer and weights rebuild the model::

    RUN/config.json            resolved RunConfig
    RUN/tokenizer.json         vocabulary
    RUN/metrics.csv            training and validation metrics (also RUN/tensorboard/)
    RUN/loss.png               loss curve, written at the end of training
    RUN/checkpoints/LATEST     name of the newest complete checkpoint
    RUN/checkpoints/step-000500/model.safetensors   raw weights
                                ema.safetensors     EMA weights (used by eval and sample)
                                state.pt            optimizer, LR schedule, step, RNG and data position
                                manifest.json       size and sha256 of each file above

A run with ``train.parallel=fsdp`` writes its weights and optimizer state sharded instead, with
``torch.distributed.checkpoint`` (every process writes its own shards, in parallel)::

    RUN/checkpoints/step-000500/dcp/                "model", "ema" and "optimizer" state dicts
                                state.pt            LR schedule, step, RNG and data position
                                manifest.json       size and sha256 of every file, dcp/ included

Such a checkpoint loads on any number of processes, sharded or whole: :func:`load_run` reads it
in a single process like the other kind.

A checkpoint is written to a temporary folder, flushed to disk and renamed into place, so an
interrupted save never leaves a half-written checkpoint where a later command would read it.
Loading checks the manifest and falls back to the newest checkpoint that is intact.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

from maskdiff import distributed
from maskdiff.config import RunConfig
from maskdiff.errors import MaskdiffError
from maskdiff.integrity import file_digest, file_problem
from maskdiff.models import build_model
from maskdiff.objectives import Objective
from maskdiff.tokenizer import Tokenizer, load_tokenizer

CHECKPOINTS = "checkpoints"
LATEST = "LATEST"
MANIFEST = "manifest.json"  # size and sha256 of every file of a checkpoint
SHARDED = "dcp"  # the folder of a checkpoint's torch.distributed.checkpoint shards


def warn(message: str) -> None:
    print(f"maskdiff: warning: {message}", file=sys.stderr)


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def checkpoint_step(checkpoint: Path) -> int:
    """The step a checkpoint folder was written at (-1 for a folder not named by :func:`checkpoint_name`)."""
    return int(checkpoint.name.split("-")[-1]) if checkpoint.name.startswith("step-") else -1


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _state_dict_for_saving(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    ema: torch.nn.Module | None,
    state: dict,
    keep: int,
) -> Path:
    """Write checkpoint ``step`` atomically, point LATEST at it and keep only the newest ``keep``.

    A failure while writing (disk full, permissions) removes the partial files and raises a
    :class:`MaskdiffError`; the checkpoints written before stay as they were.
    """
    tmp = None
    try:
        tmp = _temporary_folder(run_dir, step)
        save_file(_state_dict_for_saving(model), tmp / "model.safetensors")
        if ema is not None:
            save_file(_state_dict_for_saving(ema), tmp / "ema.safetensors")
        torch.save(state, tmp / "state.pt")
        return _finish(run_dir, step, tmp, keep)
    except (OSError, RuntimeError, SafetensorError) as err:
        raise _save_failed(run_dir, step, tmp, err) from None


def save_sharded_checkpoint(run_dir: Path, step: int, tensors: dict, state: dict, keep: int, ctx: distributed.Context) -> Path:
    """:func:`save_checkpoint` for sharded state: collective under ``torchrun``.

    Every process writes its shards of ``tensors`` (state dicts of DTensors or tensors, e.g.
    {"model": ..., "ema": ..., "optimizer": ...}) into the checkpoint's dcp/ folder with
    torch.distributed.checkpoint; rank 0 adds ``state`` as state.pt and the manifest and moves
    the folder into place. A failure on any process leaves the earlier checkpoints as they were
    and raises a :class:`MaskdiffError` on every process.
    """
    final = Path(run_dir) / CHECKPOINTS / checkpoint_name(step)
    tmp: Path | None = None
    error: BaseException | None = None
    if ctx.is_main:
        try:
            tmp = _temporary_folder(run_dir, step)
        except OSError as err:
            error = err
    tmp = distributed.gather(tmp, ctx)[0]  # rank 0's folder, once it exists
    if not distributed.all_agree(error is None, ctx):
        raise _save_failed(run_dir, step, tmp if ctx.is_main else None, error or OSError("another process could not write its part"))
    try:
        with warnings.catch_warnings():  # a single process: torch warns that it saves without a process group
            warnings.simplefilter("ignore", UserWarning)
            dcp.save(tensors, checkpoint_id=tmp / SHARDED)
    except (OSError, RuntimeError) as err:  # dcp reports a failed write on every process
        error = err
    if distributed.all_agree(error is None, ctx) and ctx.is_main:
        try:
            torch.save(state, tmp / "state.pt")
            final = _finish(run_dir, step, tmp, keep)
        except (OSError, RuntimeError) as err:
            error = err
    if not distributed.all_agree(error is None, ctx):
        raise _save_failed(run_dir, step, tmp if ctx.is_main else None, error or OSError("another process could not write its part"))
    return final


def _temporary_folder(run_dir: Path, step: int) -> Path:
    """An empty folder next to where checkpoint ``step`` goes, to write it in."""
    root = Path(run_dir) / CHECKPOINTS
    tmp = root / f".tmp-{checkpoint_name(step)}"
    root.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def _finish(run_dir: Path, step: int, tmp: Path, keep: int) -> Path:
    """Add the manifest to the written folder ``tmp``, flush it, move it into place, point LATEST at it and prune."""
    root = Path(run_dir) / CHECKPOINTS
    final = root / checkpoint_name(step)
    files = sorted(f for f in tmp.rglob("*") if f.is_file())
    manifest = {f.relative_to(tmp).as_posix(): {"bytes": f.stat().st_size, "sha256": file_digest(f)} for f in files}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    for file in [*files, tmp / MANIFEST]:
        with open(file, "rb") as f:
            os.fsync(f.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    _write_atomically(root / LATEST, final.name + "\n")
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _save_failed(run_dir: Path, step: int, tmp: Path | None, err: BaseException) -> MaskdiffError:
    """Remove the partial folder; the error to raise, naming the checkpoint that is still intact."""
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    final = Path(run_dir) / CHECKPOINTS / checkpoint_name(step)
    previous = latest_checkpoint(run_dir, verify=False)
    kept = f"; the previous checkpoint {previous} is intact" if previous else ""
    reason = getattr(err, "strerror", None) or str(err)
    return MaskdiffError(f"could not write checkpoint {final}: {reason}{kept}")


def is_sharded_checkpoint(checkpoint: Path) -> bool:
    """Whether a checkpoint was written by :func:`save_sharded_checkpoint`."""
    return (Path(checkpoint) / SHARDED).is_dir()


def has_weights(checkpoint: Path, which: str) -> bool:
    """Whether a checkpoint holds the ``which`` ("model" or "ema") weights."""
    checkpoint = Path(checkpoint)
    if not is_sharded_checkpoint(checkpoint):
        return (checkpoint / f"{which}.safetensors").is_file()
    try:
        keys = dcp.FileSystemReader(str(checkpoint / SHARDED)).read_metadata().state_dict_metadata
    except (OSError, RuntimeError, ValueError) as err:
        raise MaskdiffError(f"cannot read the shards of checkpoint {checkpoint}: {err}") from None
    return any(key.startswith(f"{which}.") for key in keys)


def load_sharded(checkpoint: Path, tensors: dict) -> None:
    """Fill ``tensors`` (state dicts keyed as they were saved, of DTensors or whole tensors) in place
    from a sharded checkpoint, resharding as needed. Collective when a process group is up."""
    try:
        with warnings.catch_warnings():  # a single process: torch warns that it loads without a process group
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(tensors, checkpoint_id=Path(checkpoint) / SHARDED)
    except (OSError, RuntimeError, ValueError, KeyError) as err:
        raise MaskdiffError(f"the shards of checkpoint {checkpoint} do not fit the model: {' '.join(str(err).split())[:300]}") from None


def load_checkpoint_weights(module: torch.nn.Module, checkpoint: Path, which: str) -> None:
    """Load the ``which`` ("model" or "ema") weights of a checkpoint of either kind into ``module``
    (whole, or FSDP-sharded under ``torchrun``)."""
    checkpoint = Path(checkpoint)
    if not is_sharded_checkpoint(checkpoint):
        load_weights(module, checkpoint / f"{which}.safetensors")
        return
    state = get_model_state_dict(module)
    load_sharded(checkpoint, {which: state})
    set_model_state_dict(module, state)


def verify_checkpoint(checkpoint: Path) -> str | None:
    """What is wrong with a checkpoint's files (missing, truncated, altered), or None if nothing."""
    try:
        manifest = json.loads((checkpoint / MANIFEST).read_text())
    except FileNotFoundError:
        # written before checkpoints had manifests (renames are atomic, so not a partial save)
        return None if (checkpoint / "model.safetensors").is_file() else "model.safetensors is missing"
    except (OSError, ValueError):
        return "its manifest is unreadable"
    for name, expected in manifest.items():
        problem = file_problem(checkpoint / name, expected["bytes"], expected["sha256"], name)  # name: relative, e.g. dcp/__0_0.distcp
        if problem is not None:
            return problem
    return None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))


def latest_checkpoint(run_dir: Path, verify: bool = False) -> Path | None:
    """The checkpoint LATEST names (else the newest one), or None.

    With ``verify``, checkpoints whose files fail their checksums are skipped with a warning
    and the newest good one is returned.
    """
    root = Path(run_dir) / CHECKPOINTS
    candidates = list(reversed(list_checkpoints(run_dir)))
    pointer = root / LATEST
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        if named in candidates:
            candidates.remove(named)
            candidates.insert(0, named)
    for checkpoint in candidates:
        problem = verify_checkpoint(checkpoint) if verify else None
        if problem is None:
            return checkpoint
        warn(f"checkpoint {checkpoint} is damaged ({problem}); falling back to the one before")
    return None


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """(run folder, checkpoint folder) from a path to either of them."""
    path = Path(path)
    if not path.exists():
        raise MaskdiffError(f"checkpoint folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise MaskdiffError(f"{str(path)!r} is not a folder; pass a run folder or one of its checkpoints")
    if (path / MANIFEST).is_file() or (path / "model.safetensors").is_file():
        problem = verify_checkpoint(path)
        if problem is not None:
            raise MaskdiffError(f"checkpoint {str(path)!r} is damaged: {problem}")
        return path.parent.parent, path
    checkpoint = latest_checkpoint(path, verify=True)
    if checkpoint is None:
        if list_checkpoints(path):
            raise MaskdiffError(f"every checkpoint in {str(path)!r} is damaged")
        raise MaskdiffError(f"{str(path)!r} holds no checkpoint (expected {CHECKPOINTS}/step-*/ inside a run folder)")
    return path, checkpoint


def run_modality(path: str | Path) -> str:
    """What a run (folder or checkpoint folder) models, "text" or "image", from its config alone."""
    run_dir, _ = resolve_checkpoint(path)
    return RunConfig.load(run_dir / "config.json").data.modality


def load_weights(module: torch.nn.Module, file: Path) -> None:
    """Load a safetensors file into ``module`` with a clear error when it does not fit."""
    try:
        state = load_file(file)
    except (SafetensorError, OSError) as err:
        raise MaskdiffError(f"cannot read weights {file}: {err}") from None
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise MaskdiffError(f"weights {file} do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")


def load_state(checkpoint: Path) -> dict:
    try:
        return torch.load(checkpoint / "state.pt", map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MaskdiffError(f"checkpoint {checkpoint} has no state.pt") from None
    except Exception as err:  # a truncated or corrupt pickle raises many different types
        raise MaskdiffError(f"cannot read {checkpoint / 'state.pt'}: {err}") from None


@dataclass
class LoadedRun:
    """A trained model with everything needed to use it."""

    config: RunConfig
    tokenizer: Tokenizer
    model: Objective
    run_dir: Path
    checkpoint: Path
    step: int


def load_run(path: str | Path, weights: str = "ema", device: torch.device | str = "cpu") -> LoadedRun:
    """Rebuild the model of a run folder (or checkpoint folder) with its EMA or raw weights."""
    run_dir, checkpoint = resolve_checkpoint(path)
    config = RunConfig.load(run_dir / "config.json")
    tokenizer = load_tokenizer(run_dir / "tokenizer.json")
    model = build_model(config, tokenizer.vocab_size)
    load_checkpoint_weights(model, checkpoint, "ema" if weights == "ema" and has_weights(checkpoint, "ema") else "model")
    model.to(device).eval()
    return LoadedRun(config, tokenizer, model, run_dir, checkpoint, checkpoint_step(checkpoint))

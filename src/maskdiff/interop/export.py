"""``maskdiff export hf RUN --out DIR``: a run as a Hugging Face-style folder, and back.

    DIR/config.json             model_type "maskdiff", the vocabulary and mask id, and the run's
                                whole config under "maskdiff" (what rebuilds the network)
    DIR/model.safetensors       the weights (EMA when the run has them) under maskdiff's names;
                                past 5 GB: model-0000k-of-0000n.safetensors shards and
                                model.safetensors.index.json (the weight_map of every tensor)
    DIR/tokenizer.json          the tokenizers JSON of a BPE run (maskdiff_tokenizer.json: maskdiff's own record, any kind)
    DIR/README.md               the model card: what it is, how it was trained, its measured bound

``maskdiff import auto DIR`` (:func:`import_exported`) reads it back into a run folder with the
same weights, so the same logits.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path

import torch

from maskdiff.checkpoint import load_run
from maskdiff.config import RunConfig
from maskdiff.errors import MaskdiffError
from maskdiff.interop.safetensors_files import SafetensorsFiles
from maskdiff.interop.writer import PlannedTensor, write_run, write_safetensors
from maskdiff.tokenizer import load_tokenizer

SHARD_BYTES = 5 * 1024**3  # a file holds at most this much; more goes into shards with an index
MASKDIFF_TOKENIZER = "maskdiff_tokenizer.json"


def shards(tensors: dict[str, torch.Tensor], limit: int) -> list[dict[str, torch.Tensor]]:
    """The tensors in order, cut into groups of at most ``limit`` bytes (a larger tensor alone)."""
    groups: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if groups[-1] and size + nbytes > limit:
            groups.append({})
            size = 0
        groups[-1][name] = tensor
        size += nbytes
    return groups


def export_hf(run: str | Path, out: str | Path, shard_bytes: int = SHARD_BYTES) -> Path:
    """Write run ``run`` (a run folder or one of its checkpoints) as the folder ``out`` (which must not exist)."""
    out = Path(out)
    if out.exists():
        raise MaskdiffError(f"{out} already exists; choose a new --out folder")
    if not out.parent.is_dir():
        raise MaskdiffError(f"the folder {out.parent} of --out does not exist")
    loaded = load_run(run)
    state = {name: t.detach().contiguous() for name, t in loaded.model.state_dict().items()}
    vocab = loaded.tokenizer.vocab_size
    tmp = out.with_name(f".{out.name}.exporting")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        groups = shards(state, shard_bytes)
        if len(groups) == 1:
            write_safetensors(tmp / "model.safetensors", planned(groups[0]))
        else:
            weight_map: dict[str, str] = {}
            for k, group in enumerate(groups, 1):
                name = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
                write_safetensors(tmp / name, planned(group))
                weight_map |= dict.fromkeys(group, name)
            total = sum(t.numel() * t.element_size() for t in state.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        config = {
            "model_type": "maskdiff",
            "architectures": ["MaskdiffModel"],
            "vocab_size": vocab,
            "mask_token_id": loaded.model.mask_id,
            "objective": loaded.config.objective.name,
            "maskdiff": loaded.config.to_dict(),
        }
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        loaded.tokenizer.save(tmp / MASKDIFF_TOKENIZER)
        backend = getattr(loaded.tokenizer, "tokenizer", None)
        if backend is not None:  # a BPE run: the tokenizers JSON that other tools read
            (tmp / "tokenizer.json").write_text(backend.to_str() + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(model_card(loaded, Path(run)), encoding="utf-8")
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def planned(tensors: dict[str, torch.Tensor]) -> dict[str, PlannedTensor]:
    return {name: PlannedTensor(tuple(t.shape), t.dtype, functools.partial(torch.Tensor.detach, t)) for name, t in tensors.items()}


def model_card(loaded, run: Path) -> str:
    """What the exported model is, how it was trained and its last measured bound (from metrics.csv)."""
    cfg = loaded.config
    params = loaded.model.num_parameters()
    lines = [
        f"# {loaded.run_dir.name}",
        "",
        f"A maskdiff model: objective `{cfg.objective.name}`, a {cfg.model.architecture} of "
        f"{params / 1e6:.2f}M non-embedding parameters, vocabulary {loaded.tokenizer.vocab_size:,} (mask id {loaded.model.mask_id}).",
        "",
        "## Training",
        "",
        f"Preset `{cfg.preset}`, {loaded.step:,} steps of {cfg.data.seq_len}-token sequences "
        f"(batch {cfg.train.batch_size}, learning rate {cfg.train.lr}); data: `{cfg.data.path or cfg.data.format}`.",
    ]
    provenance = loaded.run_dir / "import.json"
    if provenance.is_file():
        about = json.loads(provenance.read_text())
        lines += ["", f"Imported from {about.get('format')} checkpoint `{Path(about.get('source', '')).name}`."]
    lines += ["", "## Measured", "", measured_bound(loaded.run_dir)]
    lines += ["", "## Use", "", "```", f"maskdiff import auto {'THIS_FOLDER'} --out RUN", "maskdiff sample --checkpoint RUN", "```", ""]
    return "\n".join(lines)


def measured_bound(run_dir: Path) -> str:
    """The last validation figure in the run's metrics.csv, or a note that there is none."""
    metrics = run_dir / "metrics.csv"
    if not metrics.is_file():
        return "No validation figure was recorded for this run."
    import csv

    last = None
    with open(metrics, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("valid_bits"):
                last = (row["step"], float(row["valid_bits"]))
    if last is None:
        return "No validation figure was recorded for this run."
    step, bits = last
    return f"Validation: {bits:.4f} bits per token at step {step} (for a diffusion model an upper bound on the negative log-likelihood)."


def import_exported(source: Path, out: Path, overrides=()) -> Path:
    """A folder written by :func:`export_hf` back into a run folder (weights copied tensor by tensor)."""
    config_file = source / "config.json"
    try:
        raw = json.loads(config_file.read_text())["maskdiff"]
    except (OSError, ValueError, KeyError) as err:
        raise MaskdiffError(f"{config_file} is not a maskdiff export (no 'maskdiff' config): {err}") from None
    config = RunConfig.from_dict(raw).with_overrides(list(overrides))
    tokenizer_file = source / MASKDIFF_TOKENIZER
    if not tokenizer_file.is_file():
        raise MaskdiffError(f"{source} holds no {MASKDIFF_TOKENIZER}")
    tokenizer = load_tokenizer(tokenizer_file)
    files = SafetensorsFiles(source)
    plan = {name: PlannedTensor(files.shape(name), files.dtype(name), functools.partial(files.get, name)) for name in files.names()}
    from maskdiff.models import build_model

    with torch.device("meta"):  # shapes only: no memory for the weights
        expected = build_model(config, tokenizer.vocab_size).state_dict()
    for name, tensor in expected.items():
        if name not in plan:
            raise MaskdiffError(f"{source} has no tensor {name}")
        if tuple(plan[name].shape) != tuple(tensor.shape):
            raise MaskdiffError(f"tensor {name} has shape {list(plan[name].shape)}; expected {list(tensor.shape)}")
    return write_run(out, config, tokenizer, plan, {"format": "maskdiff", "source": str(source.resolve())})

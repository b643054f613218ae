"""A synthetic LLaDA-shaped checkpoint of more than 2 GB (bf16) imports with the process's peak
memory (VmHWM, measured in a subprocess) at most 1.3x the weights' size: the importer reads the
source memory-mapped and writes one tensor at a time."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from maskdiff.interop.llada import llada_names
from maskdiff.interop.writer import PlannedTensor, write_safetensors

pytestmark = pytest.mark.slow
D, LAYERS, HEADS, HIDDEN, TOKENS, ROWS, MASK = 2048, 19, 16, 5632, 32_000, 32_064, 31_000


def synthetic_llada(folder) -> int:
    """Write the checkpoint tensor by tensor (never whole in this process either).  -> its weights' bytes"""
    shapes = {"embed": (ROWS, D), "head": (ROWS, D), "norm": (D,)}
    for i in range(LAYERS):
        p = f"layers.{i}."
        shapes |= {p + r: (D, D) for r in ("q", "k", "v", "o")} | {p + "gate": (HIDDEN, D), p + "up": (HIDDEN, D), p + "down": (D, HIDDEN)}
        shapes |= {p + "attn_norm": (D,), p + "mlp_norm": (D,)}
    names = llada_names(LAYERS)
    plan = {
        names[role]: PlannedTensor(shape, torch.bfloat16, lambda s=shape: torch.full(s, 0.01, dtype=torch.bfloat16)) for role, shape in shapes.items()
    }
    write_safetensors(folder / "model.safetensors", plan)
    config = {"d_model": D, "n_layers": LAYERS, "n_heads": HEADS, "n_kv_heads": HEADS, "mlp_hidden_size": HIDDEN, "rms_norm_eps": 1e-5}
    config |= {"rope_theta": 500000.0, "vocab_size": ROWS, "mask_token_id": MASK, "weight_tying": False, "max_sequence_length": 4096}
    (folder / "config.json").write_text(json.dumps(config))
    words = ["<|endoftext|>", *(f"w{i}" for i in range(1, TOKENS))]
    words[MASK] = "<|mdm_mask|>"
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(folder / "tokenizer.json"))
    return sum(2 * torch.Size(s).numel() for s in shapes.values())


def test_a_2gb_checkpoint_imports_within_1_3x_its_size(tmp_path):
    source = tmp_path / "llada"
    source.mkdir()
    weights = synthetic_llada(source)
    assert weights > 2 * 1024**3
    code = (
        "import sys\n"
        "from maskdiff.interop.importer import import_checkpoint\n"
        "import_checkpoint('llada', sys.argv[1], sys.argv[2])\n"
        "print(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(source), str(tmp_path / "run")], capture_output=True, text=True, check=True)
    peak = int(done.stdout.split()[-1]) * 1024
    # the bound is 1.3x; holding one tensor at a time (plus the interpreter) stays far below it,
    # and a mapping that kept every page it read resident would end near 1.3x (it did, once)
    assert peak <= 0.6 * weights, f"peak {peak / 1e9:.2f} GB for {weights / 1e9:.2f} GB of weights"
    written = tmp_path / "run" / "checkpoints" / "step-000000" / "model.safetensors"
    assert 0.95 * weights < written.stat().st_size < weights  # bf16 kept; the padding rows past the vocabulary dropped

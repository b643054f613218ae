"""LLaDA (LLaDA-8B-Base/Instruct): a Hugging Face folder with LLaDA's own ``config.json`` keys and
OLMo-style tensor names, bidirectional Llama blocks, mask id ``mask_token_id`` (126336).

Config keys: ``d_model``, ``n_layers``, ``n_heads``, ``n_kv_heads``, ``mlp_hidden_size``,
``rms_norm_eps``, ``rope_theta``, ``weight_tying``, ``include_qkv_bias``, ``mask_token_id``.
Tensors (under ``model.transformer.``): ``wte.weight``, ``blocks.N.{q,k,v}_proj.weight``,
``blocks.N.attn_out.weight``, ``blocks.N.ff_proj.weight`` (the SwiGLU gate),
``blocks.N.up_proj.weight``, ``blocks.N.ff_out.weight`` (the MLP's output),
``blocks.N.{attn,ff}_norm.weight``, ``ln_f.weight`` and ``ff_out.weight`` (the output layer).
"""

from __future__ import annotations

from pathlib import Path

from maskdiff.errors import MaskdiffError
from maskdiff.interop.hf import context, from_names, need, read_config
from maskdiff.interop.layout import Vocab, transformer_fields
from maskdiff.interop.safetensors_files import SafetensorsFiles
from maskdiff.interop.source import MASKED_DIFFUSION, ImportSource, storage_dtype
from maskdiff.interop.tokenizers import bpe_tokenizer, read_tokenizer_json, without_mask

PREFIX = "model.transformer."
ROLES = {
    "q": "q_proj.weight",
    "k": "k_proj.weight",
    "v": "v_proj.weight",
    "q_bias": "q_proj.bias",
    "k_bias": "k_proj.bias",
    "v_bias": "v_proj.bias",
    "o": "attn_out.weight",
    "gate": "ff_proj.weight",
    "up": "up_proj.weight",
    "down": "ff_out.weight",
    "attn_norm": "attn_norm.weight",
    "mlp_norm": "ff_norm.weight",
}


def llada_names(layers: int) -> dict[str, str]:
    names = {"embed": PREFIX + "wte.weight", "norm": PREFIX + "ln_f.weight", "head": PREFIX + "ff_out.weight"}
    for i in range(layers):
        names |= {f"layers.{i}.{role}": f"{PREFIX}blocks.{i}.{name}" for role, name in ROLES.items()}
    return names


def read_llada(folder: Path, tokenizer: str | None, settings: dict[str, str]) -> ImportSource:
    config = read_config(folder)
    if "d_model" not in config or "mask_token_id" not in config:
        raise MaskdiffError(f"{folder / 'config.json'} is not LLaDA's (no d_model and mask_token_id)")
    if config.get("block_type", "llama") != "llama" or config.get("layer_norm_type", "rms") != "rms":
        raise MaskdiffError(f"{folder} is a LLaDA variant maskdiff does not read (block_type {config.get('block_type')!r})")
    heads = int(need(config, "n_heads", folder))
    model = transformer_fields(
        n_layers=int(need(config, "n_layers", folder)),
        d_model=int(config["d_model"]),
        n_heads=heads,
        n_kv_heads=int(config.get("n_kv_heads") or heads),
        mlp_hidden=int(need(config, "mlp_hidden_size", folder)),
        norm_eps=float(config.get("rms_norm_eps", 1e-5)),
        rope_base=float(config.get("rope_theta", 10_000.0)),
        tie_embeddings=bool(config.get("weight_tying", False)),
        qkv_bias=bool(config.get("include_qkv_bias", False)),
    )
    files = SafetensorsFiles(folder)
    names = llada_names(model["n_layers"])
    weights, shapes = from_names(files, names)
    mask_id = int(config["mask_token_id"])
    raw, size = without_mask(read_tokenizer_json(Path(tokenizer) if tokenizer else folder), mask_id)
    tok = bpe_tokenizer(raw, folder.name)
    seq_len = context({"max_position_embeddings": config.get("max_sequence_length")})
    dtype = storage_dtype(files.dtype(names["embed"]) if names["embed"] in files else None)
    return ImportSource(
        "llada", model, MASKED_DIFFUSION, seq_len, Vocab(size, mask_id), tok, weights, shapes, names, dtype, {"mask_token_id": mask_id}
    )

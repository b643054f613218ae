"""Hugging Face causal LMs (Llama, Qwen2, Mistral, SmolLM2) and the two diffusion models that use
their layout or a close one: Dream (Qwen2's names, bidirectional, shifted logits).

A model folder holds ``config.json`` (``model_type``, ``hidden_size``, ``num_hidden_layers``,
``num_attention_heads``, ``num_key_value_heads``, ``intermediate_size``, ``rms_norm_eps``,
``rope_theta``, ``tie_word_embeddings``, ``bos_token_id``), ``tokenizer.json`` and safetensors
weights named ``model.embed_tokens.weight``, ``model.layers.N.self_attn.{q,k,v,o}_proj.weight``
(q, k and v with biases in Qwen2), ``model.layers.N.mlp.{gate,up,down}_proj.weight``,
``model.layers.N.{input,post_attention}_layernorm.weight``, ``model.norm.weight`` and
``lm_head.weight`` (absent when tied). A causal LM becomes maskdiff's autoregressive model.
"""

from __future__ import annotations

import json
from pathlib import Path

from maskdiff.errors import MaskdiffError
from maskdiff.interop.layout import Vocab, transformer_fields
from maskdiff.interop.safetensors_files import SafetensorsFiles
from maskdiff.interop.source import AUTOREGRESSIVE, MASKED_DIFFUSION, ImportSource, storage_dtype
from maskdiff.interop.tokenizers import bpe_tokenizer, read_tokenizer_json, without_mask

CAUSAL_TYPES = ("llama", "qwen2", "mistral")
ROLES = {
    "q": "self_attn.q_proj.weight",
    "k": "self_attn.k_proj.weight",
    "v": "self_attn.v_proj.weight",
    "q_bias": "self_attn.q_proj.bias",
    "k_bias": "self_attn.k_proj.bias",
    "v_bias": "self_attn.v_proj.bias",
    "o": "self_attn.o_proj.weight",
    "gate": "mlp.gate_proj.weight",
    "up": "mlp.up_proj.weight",
    "down": "mlp.down_proj.weight",
    "attn_norm": "input_layernorm.weight",
    "mlp_norm": "post_attention_layernorm.weight",
}
DEFAULT_CONTEXT = 2048  # data.seq_len of an imported run when the model allows that many positions


def read_config(folder: Path) -> dict:
    file = folder / "config.json"
    if not file.is_file():
        raise MaskdiffError(f"{folder} holds no config.json: not a Hugging Face model folder")
    try:
        config = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise MaskdiffError(f"{file} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise MaskdiffError(f"{file} is not a model config (a JSON object)")
    return config


def need(config: dict, key: str, folder: Path):
    if key not in config:
        raise MaskdiffError(f"{folder / 'config.json'} has no {key!r}")
    return config[key]


def llama_names(layers: int, prefix: str = "model.") -> dict[str, str]:
    """role -> tensor name in a Llama/Qwen2-layout checkpoint."""
    names = {"embed": prefix + "embed_tokens.weight", "norm": prefix + "norm.weight", "head": "lm_head.weight"}
    for i in range(layers):
        names |= {f"layers.{i}.{role}": f"{prefix}layers.{i}.{name}" for role, name in ROLES.items()}
    return names


def from_names(files: SafetensorsFiles, names: dict[str, str]) -> tuple[dict, dict]:
    """(role -> reader, role -> shape) for the roles whose tensors the files hold."""
    present = {role: name for role, name in names.items() if name in files}
    weights = {role: (lambda n=name: files.get(n)) for role, name in present.items()}
    return weights, {role: files.shape(name) for role, name in present.items()}


def llama_model(config: dict, folder: Path) -> dict:
    """The model section of a Llama/Qwen2-style ``config.json``."""
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}  # the newer and the older key
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise MaskdiffError(
            f"{folder / 'config.json'} scales its rotary embeddings ({rope.get('rope_type', rope.get('type'))}), which maskdiff does not implement"
        )
    d, heads = int(need(config, "hidden_size", folder)), int(need(config, "num_attention_heads", folder))
    if config.get("head_dim") not in (None, d // heads):
        raise MaskdiffError(f"head_dim {config['head_dim']} is not hidden_size / num_attention_heads; maskdiff needs it to be")
    return transformer_fields(
        n_layers=int(need(config, "num_hidden_layers", folder)),
        d_model=d,
        n_heads=heads,
        n_kv_heads=int(config.get("num_key_value_heads") or heads),
        mlp_hidden=int(need(config, "intermediate_size", folder)),
        norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        rope_base=float(config.get("rope_theta") or rope.get("rope_theta") or 10_000.0),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        qkv_bias=config.get("model_type") == "qwen2" or bool(config.get("attention_bias", False)),
    )


def context(config: dict) -> int:
    return min(int(config.get("max_position_embeddings") or DEFAULT_CONTEXT), DEFAULT_CONTEXT)


def read_hf(folder: Path, tokenizer: str | None, settings: dict[str, str]) -> ImportSource:
    """A Llama/Qwen2/Mistral causal LM folder as maskdiff's autoregressive model."""
    config = read_config(folder)
    kind = config.get("model_type")
    if kind not in CAUSAL_TYPES:
        raise MaskdiffError(f"{folder / 'config.json'} has model_type {kind!r}; the hf format reads {', '.join(CAUSAL_TYPES)}")
    model = llama_model(config, folder) | {"causal": True}
    files = SafetensorsFiles(folder)
    names = llama_names(model["n_layers"])
    weights, shapes = from_names(files, names)
    raw = read_tokenizer_json(Path(tokenizer) if tokenizer else folder)
    bos = config.get("bos_token_id")
    if bos is None:
        raise MaskdiffError(f"{folder / 'config.json'} has no bos_token_id, which the autoregressive model reads before the first token")
    tok = bpe_tokenizer(raw, folder.name)
    vocab = Vocab(tok.vocab_size, None, int(bos))
    dtype = files.dtype(names["embed"]) if names["embed"] in files else None
    return ImportSource("hf", model, AUTOREGRESSIVE, context(config), vocab, tok, weights, shapes, names, storage_dtype(dtype), {"model_type": kind})


def read_dream(folder: Path, tokenizer: str | None, settings: dict[str, str]) -> ImportSource:
    """Dream (Dream-v0-7B-Base/Instruct): Qwen2's layout, bidirectional attention, mask id from
    ``mask_token_id`` (151666), and logits at i that predict token i+1 (``model.shift_logits``)."""
    config = read_config(folder)
    if str(config.get("model_type", "")).lower() != "dream":
        raise MaskdiffError(f"{folder / 'config.json'} has model_type {config.get('model_type')!r}, not Dream's")
    model = llama_model(config | {"model_type": "qwen2"}, folder) | {"shift_logits": True}
    files = SafetensorsFiles(folder)
    names = llama_names(model["n_layers"])
    weights, shapes = from_names(files, names)
    mask_id = int(need(config, "mask_token_id", folder))
    raw, size = without_mask(read_tokenizer_json(Path(tokenizer) if tokenizer else folder), mask_id)
    tok = bpe_tokenizer(raw, folder.name)
    dtype = files.dtype(names["embed"]) if names["embed"] in files else None
    return ImportSource(
        "dream",
        model,
        MASKED_DIFFUSION,
        context(config),
        Vocab(size, mask_id),
        tok,
        weights,
        shapes,
        names,
        storage_dtype(dtype),
        {"mask_token_id": mask_id},
    )

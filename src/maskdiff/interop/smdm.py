"""SMDM's released checkpoints (``mdm-1028M-1600e18.safetensors``, ``ar-1028M-100e18.safetensors``,
...): one safetensors file holding the state dict of lit-gpt's ``TransEncoder`` (a masked
diffusion model) or ``GPT`` (its autoregressive baseline).

Tensors: ``transformer.wte.weight`` (the MDM's has one row more than the output layer: the mask
token, id 32000, the tokenizer's vocabulary size), ``transformer.h.N.norm_1.weight`` and
``norm_2.weight`` (RMSNorm, eps 1e-5), ``transformer.h.N.attn.attn.weight`` (q, k and v fused and
laid out per query group: for each of the G groups its H/G query heads, then its key head, then
its value head), ``transformer.h.N.attn.proj.weight``, ``transformer.h.N.mlp.swiglu.w1/w2/w3.weight``
(SwiGLU: w3(silu(w1 x) * w2 x)), ``transformer.ln_f.weight`` and ``lm_head.weight`` (rows padded
to a multiple of 64). Rotary embeddings are non-interleaved over the whole head, base 10,000.

The shapes give the depth and widths; the head count comes from SMDM's configurations
(``Diff_LLaMA_*``, ``maskdiff.presets.SMDM_HEADS``) or ``--set model.n_heads=H`` (and ``model.n_kv_heads=G``). The
tokenizer is TinyLlama's (Llama 2's 32,000 tokens), given with ``--tokenizer``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from maskdiff.errors import MaskdiffError
from maskdiff.interop.layout import Vocab, transformer_fields
from maskdiff.interop.safetensors_files import SafetensorsFiles
from maskdiff.interop.source import AUTOREGRESSIVE, MASKED_DIFFUSION, ImportSource, storage_dtype
from maskdiff.interop.tokenizers import bpe_tokenizer, read_tokenizer_json
from maskdiff.presets import SMDM_HEADS

CONTEXT = 2048  # SMDM's training sequence length
MLP = {"gate": "mlp.swiglu.w1.weight", "up": "mlp.swiglu.w2.weight", "down": "mlp.swiglu.w3.weight"}


def count_layers(files: SafetensorsFiles) -> int:
    layers = {int(name.split(".")[2]) for name in files.names() if name.startswith("transformer.h.")}
    return max(layers) + 1 if layers else 0


def read_smdm(path: Path, tokenizer: str | None, settings: dict[str, str]) -> ImportSource:
    files = SafetensorsFiles(path)
    if "transformer.wte.weight" not in files or "transformer.h.0.attn.attn.weight" not in files:
        raise MaskdiffError(f"{path} is not an SMDM checkpoint (no transformer.wte.weight and transformer.h.0.attn.attn.weight)")
    if not tokenizer:
        raise MaskdiffError("an SMDM checkpoint carries no tokenizer: pass TinyLlama's with --tokenizer (a tokenizer.json or a folder holding one)")
    layers = count_layers(files)
    embed_rows, d = files.shape("transformer.wte.weight")
    head_rows = files.shape("lm_head.weight")[0] if "lm_head.weight" in files else 0
    diffusion = embed_rows == head_rows + 1  # the MDM's extra row is the mask token's
    heads = int(settings.get("model.n_heads") or SMDM_HEADS.get((layers, d), 0))
    if not heads:
        raise MaskdiffError(f"{path}: {layers} layers of width {d} is none of SMDM's configurations; give the head count with --set model.n_heads=H")
    groups = int(settings.get("model.n_kv_heads") or heads)
    if d % heads or heads % groups:
        raise MaskdiffError(f"model.n_heads={heads} and model.n_kv_heads={groups} do not fit width {d}")
    hd = d // heads
    hidden = files.shape("transformer.h.0.mlp.swiglu.w1.weight")[0] if "transformer.h.0.mlp.swiglu.w1.weight" in files else 0
    model = transformer_fields(
        n_layers=layers, d_model=d, n_heads=heads, n_kv_heads=groups, mlp_hidden=hidden, norm_eps=1e-5, rope_base=10_000.0, causal=not diffusion
    )
    names = {"embed": "transformer.wte.weight", "norm": "transformer.ln_f.weight", "head": "lm_head.weight"}
    weights: dict = {role: (lambda n=name: files.get(n)) for role, name in names.items()}
    shapes = {role: files.shape(name) for role, name in names.items() if name in files}
    per_group = heads // groups + 2
    for i in range(layers):
        at, role = f"transformer.h.{i}.", f"layers.{i}."
        fused = at + "attn.attn.weight"
        if files.shape(fused) != ((heads + 2 * groups) * hd, d):
            raise MaskdiffError(f"tensor {fused} has shape {list(files.shape(fused))}; expected {[(heads + 2 * groups) * hd, d]} for {heads} heads")
        for j, part in enumerate(("q", "k", "v")):
            weights[role + part] = lambda n=fused, j=j: split_qkv(files.get(n), groups, per_group, hd)[j]
            names[role + part] = fused
        shapes |= {role + "q": (heads * hd, d), role + "k": (groups * hd, d), role + "v": (groups * hd, d)}
        own = {"o": "attn.proj.weight", "attn_norm": "norm_1.weight", "mlp_norm": "norm_2.weight", **MLP}
        for part, name in own.items():
            if at + name in files:
                weights[role + part] = lambda n=at + name: files.get(n)
                shapes[role + part] = files.shape(at + name)
            names[role + part] = at + name
    raw = read_tokenizer_json(Path(tokenizer))
    tok = bpe_tokenizer(raw, "tinyllama")
    if diffusion:
        vocab = Vocab(tok.vocab_size, embed_rows - 1)  # the mask's row is the last one (32000)
    else:
        bos = tok.tokenizer.token_to_id("<s>")
        if bos is None:
            raise MaskdiffError("the autoregressive SMDM model reads <s> before the first token, and this tokenizer has none")
        vocab = Vocab(tok.vocab_size, None, bos)
    dtype = storage_dtype(files.dtype("transformer.wte.weight"))
    objective = MASKED_DIFFUSION if diffusion else AUTOREGRESSIVE
    return ImportSource(
        "smdm", model, objective, CONTEXT, vocab, tok, weights, shapes, names, dtype, {"kind": "MDM" if diffusion else "ARM", "heads": heads}
    )


def split_qkv(fused: torch.Tensor, groups: int, per_group: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """lit-gpt's fused projection [(H + 2G) hd, d], grouped (q_1..q_{H/G}, k, v) per group, as q [H hd, d], k, v [G hd, d]."""
    grouped = fused.view(groups, per_group, head_dim, fused.shape[-1])
    q = grouped[:, :-2].reshape(-1, fused.shape[-1])
    return q, grouped[:, -2].reshape(-1, fused.shape[-1]), grouped[:, -1].reshape(-1, fused.shape[-1])

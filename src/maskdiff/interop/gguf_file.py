"""GGUF files (llama.cpp's format, read with the ``gguf`` package): Llama- and Qwen2-architecture
causal LMs, dequantised to float32, as maskdiff's autoregressive model.

Metadata: ``general.architecture`` (llama or qwen2) and, under its name, ``block_count``,
``embedding_length``, ``feed_forward_length``, ``attention.head_count``,
``attention.head_count_kv``, ``rope.freq_base``, ``attention.layer_norm_rms_epsilon``,
``context_length``; ``tokenizer.ggml.bos_token_id``. Tensors: ``token_embd.weight``,
``blk.N.attn_{q,k,v,output}.weight`` (q, k, v with ``.bias`` in Qwen2),
``blk.N.ffn_{gate,up,down}.weight``, ``blk.N.{attn,ffn}_norm.weight``, ``output_norm.weight`` and
``output.weight`` (absent when tied). The Llama converter interleaves the rotary pairs of q and k
(llama.cpp rotates adjacent channels); they are put back into halves here. The file is
memory-mapped and each tensor dequantised when it is written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from maskdiff.errors import MaskdiffError, install_hint
from maskdiff.interop.layout import Vocab, transformer_fields
from maskdiff.interop.source import AUTOREGRESSIVE, ImportSource
from maskdiff.interop.tokenizers import bpe_tokenizer, gguf_tokenizer_json, read_tokenizer_json

ARCHITECTURES = ("llama", "qwen2")
SUPPORTED = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
ROLES = {
    "q": "attn_q.weight",
    "k": "attn_k.weight",
    "v": "attn_v.weight",
    "q_bias": "attn_q.bias",
    "k_bias": "attn_k.bias",
    "v_bias": "attn_v.bias",
    "o": "attn_output.weight",
    "gate": "ffn_gate.weight",
    "up": "ffn_up.weight",
    "down": "ffn_down.weight",
    "attn_norm": "attn_norm.weight",
    "mlp_norm": "ffn_norm.weight",
}
DEFAULT_CONTEXT = 2048


def open_gguf(path: Path):
    try:
        from gguf import GGUFReader
    except ImportError:
        raise MaskdiffError(f"reading GGUF files needs the gguf package: {install_hint('judge')}") from None
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as err:
        raise MaskdiffError(f"cannot read {path}: {err.strerror}") from None
    if magic != b"GGUF":
        raise MaskdiffError(f"{path} is not a GGUF file (it does not start with the GGUF magic)")
    try:
        return GGUFReader(str(path))
    except Exception as err:  # a truncated file or an unknown tensor type fails in numpy or an enum
        raise MaskdiffError(
            f"{path} is not a complete GGUF file or uses a type this gguf package does not know ({' '.join(str(err).split())[:160]})"
        ) from None


def field(reader, key: str, path: Path, default=None):
    found = reader.fields.get(key)
    if found is None:
        if default is None:
            raise MaskdiffError(f"{path} has no {key!r} in its metadata")
        return default
    return found.contents()


def unpermute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo the converter's rotary permutation: each head's rows (pairs interleaved) back into halves."""
    rows, cols = w.shape
    return w.reshape(heads, rows // heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def read_gguf(path: Path, tokenizer: str | None, settings: dict[str, str]) -> ImportSource:
    reader = open_gguf(path)
    arch = field(reader, "general.architecture", path)
    if arch not in ARCHITECTURES:
        raise MaskdiffError(f"{path} holds a {arch!r} model; maskdiff imports GGUF files of {', '.join(ARCHITECTURES)}")
    tensors = {t.name: t for t in reader.tensors}
    unknown = sorted({t.tensor_type.name for t in reader.tensors} - set(SUPPORTED))
    if unknown:
        raise MaskdiffError(f"{path} is quantised as {', '.join(unknown)}, which maskdiff cannot dequantise (it reads {', '.join(SUPPORTED)})")
    heads = int(field(reader, f"{arch}.attention.head_count", path))
    groups = int(field(reader, f"{arch}.attention.head_count_kv", path, heads))
    model = transformer_fields(
        n_layers=int(field(reader, f"{arch}.block_count", path)),
        d_model=int(field(reader, f"{arch}.embedding_length", path)),
        n_heads=heads,
        n_kv_heads=groups,
        mlp_hidden=int(field(reader, f"{arch}.feed_forward_length", path)),
        norm_eps=float(field(reader, f"{arch}.attention.layer_norm_rms_epsilon", path, 1e-6)),
        rope_base=float(field(reader, f"{arch}.rope.freq_base", path, 10_000.0)),
        tie_embeddings="output.weight" not in tensors,
        qkv_bias="blk.0.attn_q.bias" in tensors,
        causal=True,
    )
    names = {"embed": "token_embd.weight", "norm": "output_norm.weight", "head": "output.weight"}
    for i in range(model["n_layers"]):
        names |= {f"layers.{i}.{role}": f"blk.{i}.{name}" for role, name in ROLES.items()}
    present = {role: name for role, name in names.items() if name in tensors}
    shapes = {role: tuple(int(n) for n in reversed(tensors[name].shape)) for role, name in present.items()}
    permuted = {"q": heads, "k": groups} if arch == "llama" else {}

    def reader_of(role: str, name: str):
        def read() -> torch.Tensor:
            w = dequantised(tensors[name], shapes[role])
            kind = role.rsplit(".", 1)[-1]
            return unpermute(w, permuted[kind]) if kind in permuted else w

        return read

    weights = {role: reader_of(role, name) for role, name in present.items()}
    raw = read_tokenizer_json(Path(tokenizer)) if tokenizer else gguf_tokenizer_json(path)
    tok = bpe_tokenizer(raw, path.stem)
    bos = int(field(reader, "tokenizer.ggml.bos_token_id", path))
    seq_len = min(int(field(reader, f"{arch}.context_length", path, DEFAULT_CONTEXT)), DEFAULT_CONTEXT)
    about = {"architecture": arch, "quantisation": sorted({t.tensor_type.name for t in reader.tensors})}
    return ImportSource("gguf", model, AUTOREGRESSIVE, seq_len, Vocab(tok.vocab_size, None, bos), tok, weights, shapes, names, torch.float32, about)


def dequantised(tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """One GGUF tensor as float32 of ``shape`` (rows first)."""
    from gguf.quants import dequantize

    values = dequantize(tensor.data, tensor.tensor_type)
    return torch.from_numpy(np.array(values, dtype=np.float32).reshape(shape))  # a writable copy

"""The weight mapping every importer shares: a Llama-shaped network, tensor by tensor, into
maskdiff's transformer (maskdiff/nets/transformer.py).

An importer names, for each *role* below, a function that reads that tensor from its source
(``LlamaWeights``); :func:`plan_weights` checks every shape against the model's config before
anything is written and returns the run's tensors, each made only when it is written:

    embed [rows, d]  head [rows, d] (absent when tied)  norm [d]
    layers.N.{q [H*hd, d], k [G*hd, d], v [G*hd, d], q_bias, k_bias, v_bias (optional),
              o [d, H*hd], gate [F, d], up [F, d], down [d, F], attn_norm [d], mlp_norm [d]}

In maskdiff q, k and v are one projection ``attn.qkv`` (their rows stacked) and gate and up one
``mlp.up`` (gate rows first). Rotary embeddings rotate the first half of each head against the
second half (the Hugging Face convention); a source that interleaves the pairs is permuted by its
importer.

Vocabulary (:class:`Vocab`): maskdiff's ids are 0..V-1 with the mask id V (an autoregressive
model reads id V as its begin-of-sequence input). A source whose mask id m is smaller than V
trades rows m and V, in the embedding, in the output layer and in the tokenizer
(maskdiff/interop/tokenizers.py); an autoregressive source's row V is a copy of its BOS row. Rows
past what maskdiff uses (the source's own padding) are dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from maskdiff.errors import MaskdiffError
from maskdiff.interop.writer import PlannedTensor
from maskdiff.nets import TransformerConfig

Read = Callable[[], torch.Tensor]
LlamaWeights = dict[str, Read]  # role -> reader


@dataclass(frozen=True)
class Vocab:
    """How maskdiff's ids 0..V map onto the source's rows."""

    size: int  # V
    mask_id: int | None  # the source's mask id (diffusion models); None: autoregressive
    bos_id: int | None = None  # the source's begin-of-sequence id (autoregressive models)

    def rows(self) -> torch.Tensor:
        """The source row of each maskdiff id 0..V.  -> LongTensor [V + 1]"""
        rows = torch.arange(self.size + 1)
        special = self.mask_id if self.mask_id is not None else self.bos_id
        if special is None:
            raise MaskdiffError("an autoregressive import needs the tokenizer's begin-of-sequence id")
        rows[self.size] = special
        if self.mask_id is not None and self.mask_id < self.size:
            rows[self.mask_id] = self.size
        return rows


def expected_shapes(cfg: TransformerConfig, layers: int) -> dict[str, tuple[int, ...]]:
    """The shape of every role but the embedding and the output layer (their rows vary by source)."""
    d, H = cfg.d_model, cfg.n_heads
    G, hd = cfg.n_kv_heads or H, cfg.d_model // H
    F = cfg.mlp_hidden or cfg.mlp_ratio * d
    shapes: dict[str, tuple[int, ...]] = {"norm": (d,)}
    for i in range(layers):
        p = f"layers.{i}."
        shapes |= {p + "q": (H * hd, d), p + "k": (G * hd, d), p + "v": (G * hd, d), p + "o": (d, H * hd)}
        shapes |= {p + "gate": (F, d), p + "up": (F, d), p + "down": (d, F), p + "attn_norm": (d,), p + "mlp_norm": (d,)}
        if cfg.qkv_bias:
            shapes |= {p + "q_bias": (H * hd,), p + "k_bias": (G * hd,), p + "v_bias": (G * hd,)}
    return shapes


def check_shapes(cfg: TransformerConfig, vocab: Vocab, shapes: dict[str, tuple[int, ...]], names: dict[str, str]) -> None:
    """Raise naming the first source tensor (``names``: role -> its name in the source) whose shape
    ``shapes`` (role -> shape) is not what the config says, or that is missing."""
    expected = expected_shapes(cfg, cfg.n_layers)
    d = cfg.d_model
    rows_needed = {"embed": int(vocab.rows().max()) + 1, "head": int(vocab.rows()[: vocab.size].max()) + 1}
    for role in [*expected, "embed", *([] if cfg.tie_embeddings else ["head"])]:
        name = names.get(role, role)
        if role not in shapes:
            raise MaskdiffError(f"the checkpoint has no tensor {name} ({role})")
        shape = shapes[role]
        if role in rows_needed:
            if len(shape) != 2 or shape[1] != d or shape[0] < rows_needed[role]:
                raise MaskdiffError(f"tensor {name} has shape {list(shape)}; expected [at least {rows_needed[role]}, {d}]")
        elif shape != expected[role]:
            raise MaskdiffError(f"tensor {name} has shape {list(shape)}; expected {list(expected[role])} for this config")


def plan_weights(
    cfg: TransformerConfig, vocab: Vocab, weights: LlamaWeights, dtype: torch.dtype, prefix: str = "denoiser."
) -> dict[str, PlannedTensor]:
    """maskdiff's state dict (names under ``prefix``, the objective's attribute) as planned tensors of ``dtype``."""
    d, H = cfg.d_model, cfg.n_heads
    G, hd = cfg.n_kv_heads or H, cfg.d_model // H
    F = cfg.mlp_hidden or cfg.mlp_ratio * d
    V = vocab.size
    rows = vocab.rows()
    plan: dict[str, PlannedTensor] = {}

    def add(name: str, shape: tuple[int, ...], make: Read) -> None:
        plan[prefix + name] = PlannedTensor(shape, dtype, make)

    add("embed.weight", (V + 1, d), lambda: weights["embed"]().index_select(0, rows))
    for i in range(cfg.n_layers):
        role, at = f"layers.{i}.", f"blocks.{i}."
        add(at + "norm1.weight", (d,), weights[role + "attn_norm"])
        add(at + "attn.qkv.weight", ((H + 2 * G) * hd, d), stacked([weights[role + x] for x in ("q", "k", "v")]))
        if cfg.qkv_bias:
            add(at + "attn.qkv.bias", ((H + 2 * G) * hd,), stacked([weights[role + x] for x in ("q_bias", "k_bias", "v_bias")]))
        add(at + "attn.out.weight", (d, d), weights[role + "o"])
        add(at + "norm2.weight", (d,), weights[role + "mlp_norm"])
        add(at + "mlp.up.weight", (2 * F, d), stacked([weights[role + "gate"], weights[role + "up"]]))
        add(at + "mlp.down.weight", (d, F), weights[role + "down"])
    add("norm.weight", (d,), weights["norm"])
    if not cfg.tie_embeddings:
        add("head.weight", (V, d), lambda: weights["head"]().index_select(0, rows[:V]))
        add("head.bias", (V,), lambda: torch.zeros(V))
    return plan


def stacked(parts: list[Read]) -> Read:
    """A reader of the tensors ``parts`` read and stacked along their rows."""
    return lambda: torch.cat([read() for read in parts])


def transformer_fields(**fields) -> dict:
    """The model section of an imported Llama-shaped network: RMSNorm, SwiGLU, no time input."""
    return {"architecture": "transformer", "norm": "rmsnorm", "mlp": "swiglu", "time_conditioning": False, **fields}

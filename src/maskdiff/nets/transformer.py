"""A transformer denoiser: (z_t [B, L], t [B]) -> logits [B, L, V], bidirectional or causal.

Pre-norm blocks with rotary position embeddings and ``scaled_dot_product_attention``.
With ``causal`` every position attends only to itself and earlier ones (the network of the
autoregressive baseline, maskdiff/objectives/autoregressive.py), and :meth:`Transformer.forward_cached`
decodes incrementally: a :class:`KVCache` keeps every layer's keys and values, so each call
runs only the new positions, rotated at their absolute positions.
With ``time_conditioning`` every norm is modulated by an embedding of t (adaLN-Zero, as in
DiT/MDLM); without it the network ignores t, which is exact for masked diffusion (the true
posterior of a masked token does not depend on t) and lets samplers reuse predictions.
The output layer starts at zero, so a fresh model predicts the uniform distribution.

The options that released checkpoints need (maskdiff/interop/) are fields of the one config:
grouped-query attention (``n_kv_heads``), the rotary base, q/k/v biases, RMSNorm's epsilon, the
MLP's hidden width, an output layer tied to the embedding or padded past the vocabulary (its
extra rows sliced off), and Dream's shifted logits. Their defaults are the network of earlier
runs, so old run folders load unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from maskdiff.sections import Section, at_least_one, option


@dataclass
class TransformerConfig(Section):
    """The ``model`` section of a transformer run (any token sequence)."""

    architecture: str = option("transformer", "denoiser network: transformer (any data), unet or uvit (images; see data.format)")
    n_layers: int = option(4, "number of transformer blocks")
    d_model: int = option(128, "width of the residual stream")
    n_heads: int = option(4, "attention heads; d_model must be a multiple of 2 * n_heads")
    n_kv_heads: int = option(0, "key/value heads (grouped-query attention: n_heads a multiple of it); 0: n_heads")
    mlp_ratio: int = option(4, "hidden width of the MLP as a multiple of d_model (unless mlp_hidden is set)")
    mlp_hidden: int = option(0, "hidden width of the MLP; 0: mlp_ratio * d_model")
    time_conditioning: bool = option(False, "condition every block on t with adaLN-Zero (off: the network ignores t)")
    time_features: int = option(256, "size of the sinusoidal embedding of t (with time_conditioning)")
    dropout: float = option(0.0, "dropout probability in attention and MLP")
    rope_base: float = option(10_000.0, "base of the rotary position embedding frequencies")
    causal: bool = option(False, "causal attention (a position sees itself and earlier ones): the network of objective.name=ar")
    mlp: str = option("gelu", "MLP: gelu (two matrices) or swiglu (Llama's gated MLP: three matrices of hidden width mlp_ratio * d_model)")
    norm: str = option("layernorm", "normalisation: layernorm or rmsnorm (Llama's)")
    norm_eps: float = option(0.0, "epsilon of every norm; 0: PyTorch's default (1e-5 for layernorm, the dtype's machine epsilon for rmsnorm)")
    qkv_bias: bool = option(False, "biases on the query, key and value projections (Qwen2's and Dream's attention)")
    tie_embeddings: bool = option(False, "the output layer is the input embedding matrix (its first V rows), with no bias")
    padded_vocab: int = option(0, "rows of the output layer when more than the vocabulary (padding); the rows past it are never sampled nor scored")
    shift_logits: bool = option(False, "the network's output at i predicts token i+1 (Dream's convention); shifted so logits[i] predict token i")

    def problems(self) -> list[str]:
        out = at_least_one(self, "model", ("n_layers", "d_model", "n_heads", "mlp_ratio", "time_features"))
        out += head_problems(self.d_model, self.n_heads)
        if self.n_kv_heads < 0 or (self.n_kv_heads and self.n_heads % self.n_kv_heads):
            out.append(f"model.n_kv_heads ({self.n_kv_heads}) must divide model.n_heads ({self.n_heads}) (0: as many as n_heads)")
        for name in ("mlp_hidden", "padded_vocab"):
            if getattr(self, name) < 0:
                out.append(f"model.{name} must be >= 0")
        if self.norm_eps < 0:
            out.append("model.norm_eps must be >= 0")
        if self.shift_logits and self.causal:
            out.append("model.shift_logits is for bidirectional networks; a causal one already predicts the next token")
        if self.mlp not in ("gelu", "swiglu"):
            out.append(f"model.mlp must be gelu or swiglu, not {self.mlp!r}")
        if self.norm not in ("layernorm", "rmsnorm"):
            out.append(f"model.norm must be layernorm or rmsnorm, not {self.norm!r}")
        if not 0 <= self.dropout < 1:
            out.append("model.dropout must be in [0, 1)")
        if self.rope_base <= 1:
            out.append("model.rope_base must be > 1")
        return out


def head_problems(d_model: int, n_heads: int) -> list[str]:
    """Rotary embeddings rotate channel pairs, so every head needs an even width."""
    if n_heads >= 1 and d_model % (2 * n_heads):
        return [f"model.d_model ({d_model}) must be a multiple of 2 * model.n_heads ({2 * n_heads})"]
    return []


def rotary_tables(length: int, head_dim: int, base: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables for rotary embeddings.  -> two [length, head_dim/2] tensors"""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (first half, second half) of x [B, H, L, D] by position-dependent angles."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1] (scaled by 1000 as in DDPM/DiT).  [B] -> [B, dim]"""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat((args.cos(), args.sin()), dim=-1)


def zero_init(modules: Iterable[nn.Module | None]) -> None:
    """Set every parameter of these layers (weights and biases) to zero; None entries are skipped."""
    for module in modules:
        if module is not None:
            for parameter in module.parameters(recurse=False):
                nn.init.zeros_(parameter)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x [B, L, D] * (1 + scale [B, D]) + shift [B, D]."""
    return x * (1 + scale[:, None]) + shift[:, None]


class KVCache:
    """Keys and values of every layer, room for ``capacity`` positions: the one cache of both uses.

    *Causal incremental decoding* (:meth:`Transformer.forward_cached`): :meth:`extend` appends
    the new positions' keys and values; :attr:`length` counts the positions stored so far, which
    are positions 0..length-1 of the sequence. Each layer's buffers [B, H, capacity, head_dim] are
    allocated at its first write (with the batch size and dtype of that write, so autocast
    decides the dtype).

    *Block decoding with bidirectional attention* (:meth:`Transformer.forward_block`, built with
    ``rows``): a full pass over the sequence stores the keys and values of every position of
    some rows (:meth:`recording`); a window pass computes only positions start..end-1 of some
    rows and lets them attend to the stored keys and values of the other positions
    (:meth:`attending`). The buffers hold ``rows`` rows.
    """

    def __init__(self, n_layers: int, capacity: int, rows: int | None = None):
        self.capacity = capacity
        self.length = 0
        self.rows = rows
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers
        self._record: torch.Tensor | None = None  # rows whose keys and values the current full pass stores
        self._window: tuple[torch.Tensor, int, int] | None = None  # (rows, start, end) of the current window pass
        self.tokens: torch.Tensor | None = None  # [rows, capacity] ids of the last full pass (shifted logits only)

    def _buffers(self, layer: int, k: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.keys[layer], self.values[layer]
        if keys is None or values is None:
            shape = (batch, k.shape[1], self.capacity, k.shape[3])
            keys = self.keys[layer] = k.new_empty(shape)
            values = self.values[layer] = k.new_empty(shape)
        return keys, values

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [B, H, n, D] of the new positions after the cached ones.  -> keys, values [B, H, length + n, D]"""
        start, end = self.length, self.length + k.shape[2]
        if end > self.capacity:
            raise ValueError(f"the KV cache holds {self.capacity} positions; {end} needed")
        keys, values = self._buffers(layer, k, k.shape[0])
        keys[:, :, start:end] = k
        values[:, :, start:end] = v
        return keys[:, :, :end], values[:, :, :end]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values that the new positions' queries attend to, storing what this pass keeps."""
        if self._window is not None:
            rows, start, end = self._window
            keys, values = self.keys[layer], self.values[layer]
            if keys is None or values is None:
                raise ValueError("a window pass needs a full pass that stored the other positions first")
            # the window's own stored entries are stale and never read again before the next full
            # pass, so the new ones go in place: no copy of the cache when every row runs
            if rows.numel() == keys.shape[0]:  # rows is an ascending subset of the rows, so all of them
                keys[:, :, start:end], values[:, :, start:end] = k, v
                return keys, values
            keys[rows, :, start:end], values[rows, :, start:end] = k.to(keys.dtype), v.to(values.dtype)
            return keys.index_select(0, rows), values.index_select(0, rows)
        if self._record is not None:
            keys, values = self._buffers(layer, k, self.rows or k.shape[0])
            keys[self._record] = k.to(keys.dtype)
            values[self._record] = v.to(values.dtype)
            return k, v  # the very tensors an uncached pass attends to, so its logits are the same bits
        return self.extend(layer, k, v)

    def remember_tokens(self, rows: torch.Tensor, z: torch.Tensor) -> None:
        """Keep the ids z [R, L] of a full pass over rows ``rows`` (a network with shifted logits
        reads the one before a window)."""
        if self.tokens is None:
            self.tokens = z.new_zeros((self.rows or z.shape[0], z.shape[1]))
        self.tokens[rows] = z

    def tokens_before(self, rows: torch.Tensor, start: int) -> torch.Tensor:
        """The remembered id at position start - 1 of rows ``rows``.  -> [R, 1]"""
        if self.tokens is None:
            raise ValueError("a window pass needs a full pass that stored the other positions first")
        return self.tokens[rows, start - 1 : start]

    @contextmanager
    def recording(self, rows: torch.Tensor) -> Iterator[None]:
        """Within this block, a full pass over rows ``rows`` [R] of the batch stores their keys and values."""
        self._record = rows
        try:
            yield
        finally:
            self._record = None

    @contextmanager
    def attending(self, rows: torch.Tensor, start: int, end: int) -> Iterator[None]:
        """Within this block, a pass over positions start..end-1 of rows ``rows`` [R] attends to the
        stored keys and values of the positions outside that window."""
        self._window = (rows, start, end)
        try:
            yield
        finally:
            self._window = None


class Attention(nn.Module):
    """Self-attention with rotary positions; ``n_kv_heads`` < ``n_heads`` shares each key/value
    head among n_heads / n_kv_heads query heads (grouped-query attention).

    One projection ``qkv`` computes the queries of every head, then the keys, then the values:
    its rows are [n_heads * head_dim | n_kv_heads * head_dim | n_kv_heads * head_dim].
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float, n_kv_heads: int = 0, bias: bool = False):
        super().__init__()
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads or n_heads
        self.head_dim = d_model // n_heads
        self.qkv = nn.Linear(d_model, (n_heads + 2 * self.n_kv_heads) * self.head_dim, bias=bias)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.dropout = dropout

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        causal: bool = False,
        cache: KVCache | None = None,
        layer: int = 0,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [B, L, D]; cos, sin [L, D/H/2] for the absolute positions of x's rows.

        ``mask`` (no cache): which keys each query sees, boolean [L, L] or [B, 1, L, L] (True:
        attends), in place of ``causal``.

        With ``cache`` the L positions come after the ``cache.length`` cached ones, their keys and
        values are appended to layer ``layer`` of the cache, and the queries attend to everything
        stored (causally within the new positions).
        """
        B, L, D = x.shape
        H, G, hd = self.n_heads, self.n_kv_heads, self.head_dim
        q, k, v = self.qkv(x).split((H * hd, G * hd, G * hd), dim=-1)
        q, k, v = q.view(B, L, H, hd).transpose(1, 2), k.view(B, L, G, hd).transpose(1, 2), v.view(B, L, G, hd).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        dropout = self.dropout if self.training else 0.0
        gqa = G != H  # the cache keeps G heads; attention shares each among H / G queries
        if mask is not None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, enable_gqa=gqa)
        elif cache is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=causal, enable_gqa=gqa)
        else:
            k, v = cache.update(layer, k, v)
            start = k.shape[2] - L  # the new positions follow the cached ones (causal decoding)
            if L == 1 or not causal:  # one new query sees every stored position; bidirectional: everything
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, enable_gqa=gqa)
            elif start == 0:  # the first chunk: the plain causal mask
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, enable_gqa=gqa)
            else:  # new query j sits at position start + j and sees keys 0..start + j
                mask = torch.arange(start + L, device=x.device)[None] <= torch.arange(start, start + L, device=x.device)[:, None]
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, enable_gqa=gqa)
        return self.out(y.transpose(1, 2).reshape(B, L, D))


def make_norm(kind: str, d_model: int, affine: bool, eps: float = 0.0) -> nn.Module:
    """LayerNorm, or RMSNorm (no centring, no bias) for ``kind="rmsnorm"``; ``eps`` 0: PyTorch's default."""
    if kind == "rmsnorm":
        return nn.RMSNorm(d_model, eps=eps or None, elementwise_affine=affine)
    return nn.LayerNorm(d_model, eps=eps or 1e-5, elementwise_affine=affine)


class MLP(nn.Module):
    """GELU MLP, or with ``gated`` SwiGLU: silu(x W_gate) * (x W_up), the two in one up-projection
    (its rows: the gate's ``hidden``, then the up-projection's)."""

    def __init__(self, d_model: int, hidden: int, dropout: float, gated: bool = False):
        super().__init__()
        self.gated = gated
        self.up = nn.Linear(d_model, 2 * hidden if gated else hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            gate, up = self.up(x).chunk(2, dim=-1)
            return self.dropout(self.down(F.silu(gate) * up))
        return self.dropout(self.down(F.gelu(self.up(x))))


class Block(nn.Module):
    """Pre-norm attention + MLP; with a condition c [B, D], adaLN-Zero shifts, scales and gates both."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        mlp_ratio: int,
        dropout: float,
        conditioned: bool,
        mlp: str = "gelu",
        norm: str = "layernorm",
        *,
        n_kv_heads: int = 0,
        qkv_bias: bool = False,
        mlp_hidden: int = 0,
        norm_eps: float = 0.0,
    ):
        super().__init__()
        self.norm1 = make_norm(norm, d_model, affine=not conditioned, eps=norm_eps)
        self.attn = Attention(d_model, n_heads, dropout, n_kv_heads, qkv_bias)
        self.norm2 = make_norm(norm, d_model, affine=not conditioned, eps=norm_eps)
        self.mlp = MLP(d_model, mlp_hidden or mlp_ratio * d_model, dropout, gated=mlp == "swiglu")
        self.modulation = nn.Linear(d_model, 6 * d_model) if conditioned else None

    def forward(self, x, cos, sin, c=None, causal: bool = False, cache: KVCache | None = None, layer: int = 0, mask: torch.Tensor | None = None):
        if self.modulation is None:
            x = x + self.attn(self.norm1(x), cos, sin, causal, cache, layer, mask)
            return x + self.mlp(self.norm2(x))
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c).chunk(6, dim=-1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1), cos, sin, causal, cache, layer, mask)
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class Transformer(nn.Module):
    """The denoiser network. ``vocab_size`` is V: V+1 input embeddings (mask id V), V output logits.

    A causal network (``cfg.causal``) keeps the same V+1 rows: the autoregressive objective feeds
    id V as its begin-of-sequence input, so both kinds of run have the same weights' shapes.
    """

    def __init__(self, cfg: TransformerConfig, vocab_size: int):
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        self.embed = nn.Embedding(vocab_size + 1, cfg.d_model)
        self.time_embed = (
            nn.Sequential(nn.Linear(cfg.time_features, cfg.d_model), nn.SiLU(), nn.Linear(cfg.d_model, cfg.d_model), nn.SiLU())
            if cfg.time_conditioning
            else None
        )
        self.blocks = nn.ModuleList(
            Block(
                cfg.d_model,
                cfg.n_heads,
                cfg.mlp_ratio,
                cfg.dropout,
                cfg.time_conditioning,
                cfg.mlp,
                cfg.norm,
                n_kv_heads=cfg.n_kv_heads,
                qkv_bias=cfg.qkv_bias,
                mlp_hidden=cfg.mlp_hidden,
                norm_eps=cfg.norm_eps,
            )
            for _ in range(cfg.n_layers)
        )
        self.norm = make_norm(cfg.norm, cfg.d_model, affine=not cfg.time_conditioning, eps=cfg.norm_eps)
        self.final_modulation = nn.Linear(cfg.d_model, 2 * cfg.d_model) if cfg.time_conditioning else None
        # the output layer; tied: the embedding's first V rows, in _run
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, max(vocab_size, cfg.padded_vocab))
        self._rotary_cache: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = 0.02
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                # residual projections are scaled down with depth (GPT-2)
                scale = 1 / math.sqrt(2 * self.cfg.n_layers) if name.endswith(("attn.out", "mlp.down")) else 1.0
                nn.init.normal_(module.weight, std=std * scale)
                bias = getattr(module, "bias", None)
                if bias is not None:
                    nn.init.zeros_(bias)
        zero_init([self.head, *self.modulations(), self.final_modulation])

    def modulations(self) -> list[nn.Module | None]:
        """The adaLN layers of the blocks (None without time conditioning)."""
        return [cast(Block, block).modulation for block in self.blocks]

    def rotary(self, length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (length, device)
        if key not in self._rotary_cache:
            self._rotary_cache[key] = rotary_tables(length, self.cfg.d_model // self.cfg.n_heads, self.cfg.rope_base, device)
        return self._rotary_cache[key]

    @property
    def causal(self) -> bool:
        """Whether a position attends only to itself and earlier positions."""
        return self.cfg.causal

    def forward(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """z_t [B, L] ids in 0..V (V = mask), t [B] -> logits [B, L, V]."""
        cos, sin = self.rotary(z_t.shape[1], z_t.device)
        return self._aligned(self._run(z_t, t, cos, sin))

    def forward_masked(self, z: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, L, V] of z [B, L] under an attention pattern of the caller's: ``mask`` boolean
        [L, L] or [B, 1, L, L] (True: query i sees key j) replaces the network's own (bidirectional or
        causal); ``positions`` [L] (default 0..L-1) are the rotary positions of z's columns, which may
        repeat (two copies of one sequence side by side). Not shifted by ``shift_logits``: the
        caller that lays out its own columns aligns them.
        """
        positions = torch.arange(z.shape[1], device=z.device) if positions is None else positions
        cos, sin = self.rotary(int(positions.max()) + 1, z.device)
        return self._run(z, t, cos[positions], sin[positions], mask=mask)

    def _aligned(self, logits: torch.Tensor) -> torch.Tensor:
        """With ``shift_logits`` the output at i predicts token i+1, so token i's prediction is the
        output at i-1; position 0 has none before it and keeps its own output (give it a fixed token)."""
        if not self.cfg.shift_logits:
            return logits
        return torch.cat((logits[:, :1], logits[:, :-1]), dim=1)

    def new_cache(self, capacity: int) -> KVCache:
        """An empty KV cache for :meth:`forward_cached` with room for ``capacity`` positions."""
        return KVCache(len(self.blocks), capacity)

    def forward_cached(self, z: torch.Tensor, t: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits [B, n, V] of the n positions z [B, n] that follow the ``cache.length`` cached ones.

        Appends their keys and values to ``cache``; the logits equal those of the same positions
        in :meth:`forward` over the whole prefix (up to rounding). Causal networks only: with
        bidirectional attention earlier positions would change as later ones arrive.
        """
        if not self.cfg.causal:
            raise ValueError("forward_cached needs a causal network (model.causal=true)")
        start, end = cache.length, cache.length + z.shape[1]
        cos, sin = self.rotary(cache.capacity, z.device)  # one table per cache; rows are absolute positions
        logits = self._run(z, t, cos[start:end], sin[start:end], cache)
        cache.length = end
        return logits

    def new_block_cache(self, rows: int, length: int) -> KVCache:
        """An empty KV cache for :meth:`forward_block`: ``rows`` rows of ``length`` positions."""
        return KVCache(len(self.blocks), length, rows)

    def forward_block(
        self, z: torch.Tensor, t: torch.Tensor, cache: KVCache, rows: torch.Tensor, window: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Block decoding on a KV cache with bidirectional attention; ``rows`` [R] are the rows of the
        cache that the R rows of ``z`` are.

        ``window`` None: z [R, L] is the whole sequence; its logits [R, L, V] are exactly those of
        :meth:`forward` (the same operations on the same tensors), and every layer's keys and
        values are stored for these rows. ``window`` (start, end): z [R, end - start] holds only
        those positions; they attend to each other and to the keys and values that the last full
        pass of each row stored for the positions outside the window (an approximation: those
        were computed from an earlier state, and at an earlier t). -> logits [R, end - start, V]
        """
        if self.cfg.causal:
            raise ValueError("forward_block is for bidirectional networks; a causal one decodes with forward_cached")
        cos, sin = self.rotary(cache.capacity, z.device)  # the table forward() uses for a sequence of that length
        if window is None:
            if self.cfg.shift_logits:  # a later window needs the token before it
                cache.remember_tokens(rows, z)
            with cache.recording(rows):
                return self._aligned(self._run(z, t, cos, sin, cache))
        start, end = window
        if self.cfg.shift_logits and start > 0:
            # the window's first prediction is the output at start - 1: run that position too
            z = torch.cat((cache.tokens_before(rows, start), z), dim=1)
            with cache.attending(rows, start - 1, end):
                return self._run(z, t, cos[start - 1 : end], sin[start - 1 : end], cache)[:, :-1]
        with cache.attending(rows, start, end):
            return self._aligned(self._run(z, t, cos[start:end], sin[start:end], cache))

    def _run(
        self, z: torch.Tensor, t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = self.embed(z)
        c = self.time_embed(timestep_features(t, self.cfg.time_features)) if self.time_embed is not None else None
        for layer, block in enumerate(self.blocks):
            x = block(x, cos, sin, c, self.cfg.causal, cache, layer, mask)
        x = self.norm(x)
        if self.final_modulation is not None:
            shift, scale = self.final_modulation(c).chunk(2, dim=-1)
            x = modulate(x, shift, scale)
        if self.head is None:
            return F.linear(x, self.embed.weight[: self.vocab_size])
        logits = self.head(x)
        return logits[..., : self.vocab_size] if logits.shape[-1] > self.vocab_size else logits  # padding rows: never a prediction

    def num_parameters(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if non_embedding else n

    def flops_per_token(self, length: int) -> float:
        """Training FLOPs per token (forward + backward) at sequence length ``length``.

        6 per weight that touches every token, plus the attention scores (12 n_layers L d); the
        time-conditioning weights run once per sequence, so they count 1/L per token.
        """
        per_sequence = [self.time_embed, self.final_modulation, *self.modulations()]
        n_sequence = sum(p.numel() for m in per_sequence if m is not None for p in m.parameters())
        n_token = self.num_parameters() - n_sequence
        if self.head is None:  # the tied output layer multiplies by the embedding matrix
            n_token += self.vocab_size * self.cfg.d_model
        return 6 * (n_token + n_sequence / length) + 12 * self.cfg.n_layers * length * self.cfg.d_model

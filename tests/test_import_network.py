"""The transformer options imported models need, each against what it must equal."""

from __future__ import annotations

import json

import pytest
import torch

from maskdiff.config import RunConfig
from maskdiff.errors import MaskdiffError
from maskdiff.nets import Transformer, TransformerConfig


def randomised(net: Transformer) -> Transformer:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)
    return net.eval()


def small(**fields) -> TransformerConfig:
    return TransformerConfig(n_layers=2, d_model=32, n_heads=4, mlp="swiglu", norm="rmsnorm", **fields)


def test_grouped_query_attention_equals_multi_head_attention_with_repeated_heads():
    gqa = randomised(Transformer(small(n_kv_heads=2, qkv_bias=True), 11))
    mha = Transformer(small(qkv_bias=True), 11).eval()
    state = gqa.state_dict()
    hd, H, G = 8, 4, 2
    for i in range(2):
        for kind in ("weight", "bias"):
            name = f"blocks.{i}.attn.qkv.{kind}"
            q, k, v = state[name].split((H * hd, G * hd, G * hd))
            repeat = lambda t: t.reshape(G, hd, *t.shape[1:]).repeat_interleave(H // G, 0).reshape(H * hd, *t.shape[1:])  # noqa: E731
            state[name] = torch.cat([q, repeat(k), repeat(v)])
    mha.load_state_dict(state)
    z, t = torch.randint(0, 12, (2, 7)), torch.zeros(2)
    torch.testing.assert_close(gqa(z, t), mha(z, t), rtol=1e-5, atol=1e-5)


def test_tied_and_padded_output_layers():
    tied = randomised(Transformer(small(tie_embeddings=True), 11))
    assert tied.head is None and "head.weight" not in tied.state_dict()
    z, t = torch.randint(0, 12, (2, 5)), torch.zeros(2)
    hidden = {}
    tied.norm.register_forward_hook(lambda module, args, out: hidden.setdefault("x", out))
    torch.testing.assert_close(tied(z, t), hidden["x"] @ tied.embed.weight[:11].T)
    padded = randomised(Transformer(small(padded_vocab=16), 11))
    assert padded.head.weight.shape[0] == 16
    plain = Transformer(small(), 11).eval()
    state = padded.state_dict()
    plain.load_state_dict(state | {"head.weight": state["head.weight"][:11], "head.bias": state["head.bias"][:11]})
    torch.testing.assert_close(padded(z, t), plain(z, t))  # the padding rows are gone, nothing else changed


def test_shifted_logits_are_the_outputs_one_position_earlier_also_on_the_block_cache():
    shifted = randomised(Transformer(small(shift_logits=True), 11))
    plain = Transformer(small(), 11).eval()
    plain.load_state_dict(shifted.state_dict())
    z, t = torch.randint(0, 12, (3, 9)), torch.zeros(3)
    raw, out = plain(z, t), shifted(z, t)
    torch.testing.assert_close(out[:, 1:], raw[:, :-1])
    torch.testing.assert_close(out[:, 0], raw[:, 0])
    # block decoding: a window pass right after a full pass sees the same keys and values, so the same logits
    cache, rows = shifted.new_block_cache(3, 9), torch.arange(3)
    torch.testing.assert_close(shifted.forward_block(z, t, cache, rows), out)
    for start, end in ((0, 3), (4, 7), (6, 9)):
        torch.testing.assert_close(shifted.forward_block(z[:, start:end], t, cache, rows, (start, end)), out[:, start:end], rtol=1e-5, atol=1e-5)


def test_norm_eps_and_mlp_hidden_reach_the_layers():
    net = Transformer(small(norm_eps=1e-5, mlp_hidden=40), 11)
    assert net.norm.eps == 1e-5 and net.blocks[0].norm1.eps == 1e-5
    assert net.blocks[0].mlp.up.weight.shape == (80, 32) and net.blocks[0].mlp.down.weight.shape == (32, 40)


def test_the_options_are_checked_and_an_old_config_loads_with_the_earlier_network(tmp_path):
    with pytest.raises(MaskdiffError, match="n_kv_heads"):
        RunConfig().with_overrides(["model.n_kv_heads=3"])
    with pytest.raises(MaskdiffError, match="shift_logits is for bidirectional"):
        RunConfig().with_overrides(["model.causal=true", "model.shift_logits=true", "objective.name=ar"])
    old = RunConfig().to_dict()
    for key in ("n_kv_heads", "mlp_hidden", "norm_eps", "qkv_bias", "tie_embeddings", "padded_vocab", "shift_logits"):
        del old["model"][key]
    (tmp_path / "config.json").write_text(json.dumps(old))
    cfg = RunConfig.load(tmp_path / "config.json")
    assert cfg == RunConfig()
    names = set(Transformer(cfg.model, 11).state_dict())
    assert "head.bias" in names and not any(n.endswith("qkv.bias") for n in names)

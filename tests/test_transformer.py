"""The transformer denoiser: output contract, zero-initialised head, bidirectionality, time conditioning."""

import math

import pytest
import torch

import maskdiff
from maskdiff.config import ModelConfig
from maskdiff.nets.transformer import Transformer

V = 11


def net(**kw):
    torch.manual_seed(0)
    return Transformer(ModelConfig(n_layers=2, d_model=32, n_heads=2, **kw), V)


def test_fresh_model_predicts_uniform_and_has_loss_L_log_V_per_masked_token():
    model = net()
    z = torch.randint(0, V + 1, (3, 9))
    logits = model(z, torch.rand(3))
    assert logits.shape == (3, 9, V)
    assert torch.all(logits == 0)
    diffusion = maskdiff.MaskedDiffusion(model, "linear", V)
    x0 = torch.randint(0, V, (3, 9))
    z_t = x0.clone()
    z_t[:, :4] = V
    t = torch.full((3,), 0.5)
    loss = diffusion.loss_from_logits(model(z_t, t), x0, z_t, t)
    expected = diffusion.schedule.weight(t) * 4 * math.log(V)
    torch.testing.assert_close(loss, expected)


def perturbed(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_attention_is_bidirectional():
    model = perturbed(net())
    z = torch.randint(0, V, (1, 8))
    z2 = z.clone()
    z2[0, -1] = (z[0, -1] + 1) % V
    t = torch.tensor([0.5])
    out, out2 = model(z, t), model(z2, t)
    assert not torch.allclose(out[0, 0], out2[0, 0])  # the first position sees the last


def test_time_conditioning_switch():
    z = torch.randint(0, V + 1, (2, 8))
    plain = perturbed(net(time_conditioning=False))
    torch.testing.assert_close(plain(z, torch.tensor([0.1, 0.1])), plain(z, torch.tensor([0.9, 0.9])))
    conditioned = perturbed(net(time_conditioning=True))
    assert not torch.allclose(conditioned(z, torch.tensor([0.1, 0.1])), conditioned(z, torch.tensor([0.9, 0.9])))


def test_longer_sequences_than_seen_work_and_gradients_flow():
    model = perturbed(net())
    z = torch.randint(0, V + 1, (2, 300))
    model(z, torch.rand(2)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_llama_shaped_blocks_swiglu_and_rmsnorm():
    """model.mlp=swiglu and model.norm=rmsnorm (SMDM's presets): three MLP matrices of hidden width
    mlp_ratio * d, norms without bias, and KV-cached decoding still equal to the full pass."""
    cfg = maskdiff.ModelConfig(n_layers=2, d_model=16, n_heads=2, mlp_ratio=4, causal=True, mlp="swiglu", norm="rmsnorm")
    net = maskdiff.Transformer(cfg, 11).eval()
    block = net.blocks[0]
    assert isinstance(block.norm1, torch.nn.RMSNorm) and block.mlp.up.weight.shape == (2 * 64, 16)
    assert sum(p.numel() for p in block.mlp.parameters()) == 3 * 16 * 64
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
        z, t = torch.randint(0, 12, (2, 9)), torch.zeros(2)
        full = net(z, t)
        cache = net.new_cache(9)
        pieces = [net.forward_cached(z[:, :4], t, cache), net.forward_cached(z[:, 4:], t, cache)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)
    with pytest.raises(maskdiff.MaskdiffError, match="model.mlp must be gelu or swiglu"):
        maskdiff.RunConfig().with_overrides(["model.mlp=relu"])


@pytest.mark.parametrize("causal", [False, True])
def test_forward_masked_with_the_networks_own_pattern_equals_forward_and_side_by_side_copies_stay_apart(causal):
    model = perturbed(net(causal=causal, n_kv_heads=1))
    z, t = torch.randint(0, V + 1, (3, 9)), torch.rand(3)
    own = torch.ones(9, 9, dtype=torch.bool)
    own = own.tril() if causal else own
    torch.testing.assert_close(model.forward_masked(z, t, own), model(z, t))
    # two copies at the same rotary positions, each seeing only itself: each gives forward's logits
    pair = model.forward_masked(torch.cat((z, z), 1), t, torch.block_diag(own, own), torch.arange(9).repeat(2))
    torch.testing.assert_close(pair[:, :9], model(z, t))
    torch.testing.assert_close(pair[:, 9:], model(z, t))

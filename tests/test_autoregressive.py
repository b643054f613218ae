"""The autoregressive baseline: a causal transformer with a KV cache, its exact likelihood and generation."""

import torch

from maskdiff.config import ModelConfig
from maskdiff.nets.transformer import Transformer

V = 11


def causal_net(**kw):
    torch.manual_seed(0)
    net = Transformer(ModelConfig(n_layers=2, d_model=32, n_heads=2, causal=True, **kw), V)
    with torch.no_grad():  # a fresh head is zero: perturb every weight so positions matter
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


# ---------------------------------------------------------------- the causal network
def test_changing_a_later_token_never_changes_an_earlier_position():
    net = causal_net()
    z = torch.randint(0, V + 1, (2, 12))
    t = torch.zeros(2)
    base = net(z, t)
    for i in range(12):
        changed = z.clone()
        changed[:, i] = (z[:, i] + 1) % (V + 1)
        out = net(changed, t)
        assert torch.equal(out[:, :i], base[:, :i]), i  # bit for bit: the earlier rows never see position i
        assert not torch.allclose(out[:, i:], base[:, i:])


def test_the_kv_cache_gives_the_logits_of_the_whole_prefix():
    net = causal_net(time_conditioning=True)
    z = torch.randint(0, V + 1, (3, 20))
    t = torch.full((3,), 0.3)
    with torch.no_grad():
        full = net(z, t)
        cache = net.new_cache(20)
        chunks = [(0, 5), *((i, i + 1) for i in range(5, 12)), (12, 20)]  # a prompt, single tokens, a chunk
        pieces = [net.forward_cached(z[:, a:b], t, cache) for a, b in chunks]
    assert cache.length == 20
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-5, atol=1e-5)


def test_the_first_cached_chunk_is_the_forward_pass_of_that_prefix_bit_for_bit():
    net = causal_net()
    z = torch.randint(0, V + 1, (2, 9))
    with torch.no_grad():
        assert torch.equal(net.forward_cached(z, torch.zeros(2), net.new_cache(16)), net(z, torch.zeros(2)))

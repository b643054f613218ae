"""The autoregressive baseline: a causal transformer with a KV cache, its exact likelihood and generation."""

import itertools

import pytest
import torch

from maskdiff.config import ModelConfig, RunConfig
from maskdiff.errors import MaskdiffError
from maskdiff.evaluation import chain_rule_log_likelihood, evaluate_nelbo
from maskdiff.models import build_model
from maskdiff.nets.transformer import Transformer
from maskdiff.objectives import Autoregressive

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


# ---------------------------------------------------------------- the objective and its exact likelihood
def arm(vocab=V, **kw):
    """An Autoregressive model over a small causal transformer with perturbed (non-uniform) weights."""
    cfg = RunConfig().with_overrides(["diffusion.objective=ar", "model.causal=true", "model.n_layers=2", "model.d_model=32", "model.n_heads=2"])
    for key, value in kw.items():
        setattr(cfg.model, key, value)
    model = build_model(cfg, vocab, seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def test_the_likelihood_is_the_sum_of_next_token_log_probabilities_by_hand():
    model = arm()
    x = torch.randint(0, V, (3, 10))
    with torch.no_grad():
        nll = model.nelbo(x)
        inputs = torch.cat([torch.full((3, 1), V), x[:, :-1]], dim=1)  # BOS = V, then x shifted right
        log_probs = torch.log_softmax(model.predict(inputs).double(), dim=-1)
    by_hand = -sum(log_probs[:, i, :].gather(-1, x[:, i, None]).squeeze(-1) for i in range(10))
    torch.testing.assert_close(nll.double(), by_hand)
    assert model.estimator == "exact" and nll.shape == (3,)
    # timesteps and generator are accepted and ignored; training minimises the same number
    with torch.no_grad():
        assert torch.equal(model.nelbo(x, timesteps=7, generator=torch.Generator().manual_seed(3)), nll)
        assert torch.equal(model.train_loss(x), nll)


def test_the_likelihood_is_a_normalised_distribution_over_all_sequences():
    model = arm(vocab=3)
    every = torch.tensor(list(itertools.product(range(3), repeat=5)))  # all 243 sequences
    with torch.no_grad():
        total = torch.exp(-model.nelbo(every).double()).sum()
    assert total.item() == pytest.approx(1.0, abs=1e-5)


def test_the_objective_needs_a_causal_transformer():
    with pytest.raises(MaskdiffError, match=r"diffusion.objective=ar needs model.causal=true"):
        RunConfig().with_overrides(["diffusion.objective=ar"])
    with pytest.raises(MaskdiffError, match="needs model.architecture=transformer"):
        RunConfig().with_overrides(["model.architecture=unet", "data.format=idx", "data.image_size=4", "data.seq_len=16", "diffusion.objective=ar"])
    with pytest.raises(MaskdiffError, match="needs a causal network"):
        Autoregressive(Transformer(ModelConfig(n_layers=1, d_model=16, n_heads=2), V), V)
    cfg = RunConfig().with_overrides(["diffusion.objective=ar", "model.causal=true"])
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_evaluation_reports_the_exact_likelihood_and_refuses_monte_carlo_options():
    model = arm()
    x = torch.randint(0, V, (6, 12))
    result = evaluate_nelbo(model, x, batch_size=4)
    with torch.no_grad():
        expected = model.nelbo(x).double().mean().item() / 12
    assert result.estimator == "exact" and result.nats_per_token == pytest.approx(expected)
    assert result.bits_per_token_mc_stderr == 0.0 and result.samples_per_sequence == 1 and result.timesteps is None
    assert evaluate_nelbo(model, x, batch_size=4, seed=9) == result  # nothing random
    with pytest.raises(MaskdiffError, match="exact .* neither --mc-samples > 1 nor --timesteps"):
        evaluate_nelbo(model, x, samples=2)
    with pytest.raises(MaskdiffError, match="neither --mc-samples > 1 nor --timesteps"):
        evaluate_nelbo(model, x, timesteps=10)
    with pytest.raises(MaskdiffError, match="--chain-rule is for masked diffusion models"):
        chain_rule_log_likelihood(model, x)

"""Sampling with a 50k-token vocabulary: draws in chunks of positions give the one-pass values,
and the peak memory of a sampling step stays near the network's own float32 logits."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import maskdiff
from maskdiff.sampling import SamplerOptions, loop
from maskdiff.sampling.rules import RULES

# a subprocess measures the growth of its peak resident memory (the kernel's high-water mark VmHWM,
# reset first where the kernel allows; not ru_maxrss, which a child inherits from the process that
# started it) over its resident memory before the measured call: "sample" samples from a
# 50,257-token transformer (one reveal step, top-p 0.9, the largest temporaries); "reference"
# computes today's full-vocabulary float64 top-p probabilities of logits of the same shape in one
# pass, which the bound must rule out
MEASURE = """
import sys, torch, maskdiff
from maskdiff.sampling import filter_probs
V, N, L = 50257, 2, 128
net = maskdiff.Transformer(maskdiff.ModelConfig(n_layers=1, d_model=16, n_heads=2), V).eval()
model = maskdiff.MaskedDiffusion(net, "linear", V)
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
try:
    open("/proc/self/clear_refs", "w").write("5")  # the high-water mark starts again from here
except OSError:
    pass
before = status("VmRSS")
if sys.argv[1] == "sample":
    model.sample(N, L, steps=1, top_p=0.9, generator=torch.Generator().manual_seed(0))
else:
    filter_probs(torch.randn(N, L, V), top_p=0.9)
print(status("VmHWM") - before)
"""


def peak_growth(mode: str) -> int:
    proc = subprocess.run([sys.executable, "-c", MEASURE, mode], capture_output=True, text=True, check=True)
    return int(proc.stdout.split()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_sampling_a_50k_vocabulary_stays_within_the_memory_bound():
    logits_bytes = 2 * 128 * 50257 * 4  # the network's float32 output for the 2 x 128 positions: 49 MiB
    bound = logits_bytes + 20 * loop.DRAW_CHUNK_BYTES  # plus the float64 temporaries of a few chunks (160 MiB)
    assert peak_growth("sample") < bound
    assert peak_growth("reference") > bound  # the full-vocabulary float64 pass it replaces would not fit


@pytest.mark.parametrize("method", RULES.names())
@pytest.mark.parametrize("options", [{}, {"top_p": 0.8, "temperature": 0.7}, {"top_k": 3}, {"temperature": 0.0}])
def test_draws_in_chunks_equal_one_pass(method, options, monkeypatch):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=gen, dtype=torch.float64) * 3
    u = torch.rand(3, 7, generator=gen, dtype=torch.float64)
    sampler = SamplerOptions(method=method, **options)
    for p_reveal in (torch.tensor(0.3, dtype=torch.float64), torch.rand(11, generator=gen, dtype=torch.float64)):  # one schedule, or per value
        whole = loop.draw_values(sampler.rule(), logits, u, p_reveal, False, sampler)
        for chunk_positions in (1, 5, 7, 15):  # pieces of a row, whole rows
            monkeypatch.setattr(loop, "DRAW_CHUNK_BYTES", chunk_positions * 8 * 11)
            parts = loop.draw_values(sampler.rule(), logits, u, p_reveal, False, sampler)
            monkeypatch.undo()
            for a, b in zip((whole.values, whole.confidence, whole.chance), (parts.values, parts.confidence, parts.chance)):
                assert torch.equal(a, b), (chunk_positions, p_reveal.ndim)


def test_a_float32_network_samples_the_same_with_float32_logits_and_small_chunks(monkeypatch):
    """Where the float64 copy of the logits would be too large they stay float32 and each chunk is
    converted: exact, so the samples do not change."""
    torch.manual_seed(0)
    net = maskdiff.Transformer(maskdiff.ModelConfig(n_layers=1, d_model=16, n_heads=2), 300).eval()
    model = maskdiff.MaskedDiffusion(net, "cosine", 300)

    def draw() -> torch.Tensor:
        return model.sample(3, 20, steps=6, method="low_confidence", top_p=0.9, generator=torch.Generator().manual_seed(1))

    expected = draw()
    monkeypatch.setattr(loop, "DRAW_CHUNK_BYTES", 7 * 8 * 300)  # 7 positions a chunk, and float32 logits
    assert torch.equal(draw(), expected)

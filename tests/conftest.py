"""Shared fixtures: an explicit toy distribution with its exact conditionals, and a small corpus."""

from __future__ import annotations

import itertools
import random

import pytest
import torch


class ToyDistribution:
    """An explicit distribution p over all V^L sequences, with exact conditionals.

    ``denoiser(z_t, t)`` returns log p(x_i = v | unmasked part of z_t) at every position: the
    exact posterior a perfect masked-diffusion denoiser would output.
    """

    def __init__(self, vocab_size: int = 3, length: int = 4, seed: int = 0):
        self.V, self.L = vocab_size, length
        gen = torch.Generator().manual_seed(seed)
        self.table = torch.tensor(list(itertools.product(range(vocab_size), repeat=length)))  # [N, L]
        # skewed weights, so that positions are strongly dependent and the test has teeth
        weights = torch.rand(self.table.shape[0], generator=gen, dtype=torch.float64) ** 4 + 1e-3
        self.probs = weights / weights.sum()  # [N]
        self.calls = 0

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) for x [B, L]."""
        index = (x * (self.V ** torch.arange(self.L - 1, -1, -1))).sum(-1)
        return self.probs[index].log()

    def conditionals(self, z: torch.Tensor) -> torch.Tensor:
        """p(x_i = v | unmasked part of z) for z [B, L] with mask id V.  -> [B, L, V] float64"""
        compatible = ((z[:, None, :] == self.table[None]) | (z[:, None, :] == self.V)).all(-1)  # [B, N]
        posterior = compatible.double() * self.probs[None]
        posterior = posterior / posterior.sum(-1, keepdim=True)
        one_hot = torch.nn.functional.one_hot(self.table, self.V).double()  # [N, L, V]
        return torch.einsum("bn,nlv->blv", posterior, one_hot)

    def denoiser(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.conditionals(z_t).clamp_min(1e-300).log()

    def marginals(self) -> torch.Tensor:
        """p(x_i = v).  -> [L, V]"""
        return self.conditionals(torch.full((1, self.L), self.V))[0]


@pytest.fixture
def toy() -> ToyDistribution:
    return ToyDistribution()


WORDS = (
    "the a of and to in is was he she it that with for his her as on at by this had not are but from or have "
    "an they which one you were all we there been if more when will would who so no king queen lord lady good "
    "night day love death sword crown heart fair sweet noble speak come go hence thou thee thy"
).split()


def make_corpus(num_chars: int = 40_000, seed: int = 0) -> str:
    """Deterministic English-like text: sentences of common words with capitals and punctuation."""
    rng = random.Random(seed)
    out, size = [], 0
    while size < num_chars:
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 12))]
        line = " ".join(words).capitalize() + rng.choice([".", ",", "!", "?", ";"]) + "\n"
        out.append(line)
        size += len(line)
    return "".join(out)[:num_chars]


def lose_checkpoints_after(run_dir, step: int) -> None:
    """Delete every checkpoint after ``step`` and point LATEST back to it, as a crash would leave the run."""
    import shutil

    from maskdiff.checkpoint import CHECKPOINTS, LATEST

    folder = run_dir / CHECKPOINTS
    for checkpoint in folder.glob("step-*"):
        if int(checkpoint.name.split("-")[-1]) > step:
            shutil.rmtree(checkpoint)
    (folder / LATEST).write_text(f"step-{step:06d}\n")


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(make_corpus(), encoding="utf-8")
    return path

"""The one real pretrained model here: SmolLM2-135M-Instruct from its GGUF file (the offline judge's
asset) imported as maskdiff's autoregressive model, against what transformers computes from the
same file."""

from __future__ import annotations

import math

import pytest
import torch

import maskdiff
from maskdiff import assets
from maskdiff.interop.importer import import_checkpoint

pytestmark = pytest.mark.slow
TEXT = (
    "The old lighthouse keeper climbed the stairs every evening to light the lamp. "
    "Ships passing in the night saw its beam and knew the rocks were near."
)


@pytest.fixture(scope="module")
def gguf_file():
    found = [p for p in assets.files("judge") if p.suffix == ".gguf"]
    if not found:
        pytest.skip(f"the SmolLM2 GGUF file is not here; {assets.fetch_hint('judge')}")
    pytest.importorskip("gguf")
    return found[0]


@pytest.fixture(scope="module")
def run(gguf_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2") / "run"
    import_checkpoint("auto", gguf_file, out)
    return maskdiff.load(out, precision="fp32")


@pytest.fixture(scope="module")
def reference(gguf_file):
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    return model.eval(), tokenizer


def test_smollm2_logits_equal_transformers(run, reference):
    model, tokenizer = reference
    ids = run.encode(TEXT)
    assert ids.tolist() == tokenizer(TEXT)["input_ids"]  # the same tokenizer, read from the file
    cfg = run.config.model
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.tie_embeddings) == (30, 576, 9, 3, True)
    with torch.no_grad():
        expected = model(ids[None]).logits
    ours = run.logits(ids[None])
    assert ((ours - expected).abs().max() / expected.abs().max()).item() < 1e-3


def test_smollm2_nll_equals_transformers(run, reference):
    model, tokenizer = reference
    ids = run.encode(TEXT)
    bos = torch.tensor([tokenizer.bos_token_id])
    with torch.no_grad():
        logits = model(torch.cat([bos, ids])[None]).logits[0, :-1]
    nll = torch.nn.functional.cross_entropy(logits, ids, reduction="sum").item()
    score = run.score(TEXT)
    assert score.estimator == "exact" and score.num_tokens == len(ids)
    assert math.isclose(score.nats, nll, rel_tol=1e-2)
    shuffled = " ".join(sorted(TEXT.split(), key=lambda w: (len(w) * 7919) % 13))  # the same words, out of order
    assert run.score(shuffled).bits_per_token > score.bits_per_token + 1  # the model knows English word order


def test_smollm2_cached_generation_equals_uncached(run):
    prompt = run.encode("Once upon a time")
    length = len(prompt) + 12
    given = torch.full((2, length), run.mask_id)
    given[:, : len(prompt)] = prompt
    samples = [
        run.model.sample(2, length, 1, given=given, generator=torch.Generator().manual_seed(3), recompute=recompute) for recompute in (False, True)
    ]
    assert torch.equal(samples[0], samples[1])
    assert (samples[0][:, : len(prompt)] == prompt).all() and (samples[0] < run.mask_id).all()

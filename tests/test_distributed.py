"""Multi-process training and evaluation under torchrun (gloo on the CPU), FSDP2 and sharded checkpoints.

A run's numbers must not depend on how its batches are split: 2 processes with batch B give the
losses, gradients and validation bound of 1 process with batch 2B, with DDP and with FSDP2.
"""

import json
import subprocess
import sys

import pytest
import torch
from conftest import lose_checkpoints_after, make_corpus
from safetensors.torch import load_file

from maskdiff.checkpoint import CHECKPOINTS, SHARDED, list_checkpoints, load_run, verify_checkpoint
from maskdiff.config import TrainConfig
from maskdiff.data import evaluation_sequences, prepare_data
from maskdiff.errors import MaskdiffError
from maskdiff.evaluation import evaluate_checkpoint
from maskdiff.evaluation.bound import evaluate_nelbo
from maskdiff.metrics import read_metrics
from maskdiff.models import build_model
from maskdiff.presets import get_preset
from maskdiff.training import train
from maskdiff.training.parallel import checkpoint_activations

SETTINGS = [
    "train.steps=4",
    "train.checkpoint_every=2",
    "train.keep_checkpoints=5",
    "train.log_every=1",
    "train.eval_every=2",
    "train.eval_sequences=20",
    "train.precision=fp32",
    "train.warmup_steps=2",
    "model.n_layers=1",
    "model.d_model=32",
    "model.time_conditioning=true",
    "data.seq_len=32",
]


def config(corpus, *overrides):
    return get_preset("tiny").with_overrides([f"data.path={corpus}", *SETTINGS, *overrides])


def torchrun(*argv):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "maskdiff", *map(str, argv)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def torchrun_train(corpus, out, *overrides, resume=False):
    sets = [item for setting in [*SETTINGS, *overrides] for item in ("--set", setting)]
    return torchrun("train", "--data", corpus, "--quiet", "--out", out, *sets, *(["--resume"] if resume else []))


def rows(run):
    """The logged numbers of a run, as floats (validation rows included)."""
    keys = ("train_loss", "grad_norm", "lr", "valid_bits")
    return [{k: float(r[k]) for k in keys if r.get(k)} for r in read_metrics(run / "metrics.csv")]


def assert_close_rows(a, b, rel=1e-5):
    assert len(a) == len(b) and all(x.keys() == y.keys() for x, y in zip(a, b))
    for x, y in zip(a, b):
        assert {k: pytest.approx(v, rel=rel) for k, v in x.items()} == y


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text(make_corpus(), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def one_process(corpus, tmp_path_factory):
    """The reference: one process with batch 8."""
    run = tmp_path_factory.mktemp("one") / "run"
    train(config(corpus, "train.batch_size=8"), run, progress=False)
    return run


@pytest.fixture(scope="module")
def fsdp_run(corpus, tmp_path_factory):
    """Two FSDP2 processes with batch 4 each."""
    run = tmp_path_factory.mktemp("fsdp") / "run"
    torchrun_train(corpus, run, "train.batch_size=4", "train.parallel=fsdp")
    return run


@pytest.mark.slow
def test_two_ddp_processes_give_the_losses_of_one_with_the_doubled_batch(corpus, one_process, tmp_path):
    run = tmp_path / "ddp"
    out = torchrun_train(corpus, run, "train.batch_size=4")
    assert out.count("done: 4 steps") == 1  # only rank 0 reports
    assert_close_rows(rows(run), rows(one_process))
    a = load_file(run / CHECKPOINTS / "step-000004" / "ema.safetensors")
    b = load_file(one_process / CHECKPOINTS / "step-000004" / "ema.safetensors")
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in a)


@pytest.mark.slow
def test_two_fsdp_processes_give_the_losses_of_one_with_the_doubled_batch(fsdp_run, one_process):
    assert_close_rows(rows(fsdp_run), rows(one_process))
    checkpoint = fsdp_run / CHECKPOINTS / "step-000004"
    assert (checkpoint / SHARDED / ".metadata").is_file() and not (checkpoint / "model.safetensors").exists()
    # the sharded checkpoint loads into one process: the same EMA weights as the reference
    weights = load_run(fsdp_run).model.state_dict()
    reference = load_file(one_process / CHECKPOINTS / "step-000004" / "ema.safetensors")
    assert weights.keys() == reference.keys()
    assert all(torch.allclose(weights[k], reference[k], rtol=1e-5, atol=1e-7) for k in weights)


@pytest.mark.slow
def test_an_fsdp_checkpoint_evaluates_in_one_process_to_the_bound_the_run_reported(fsdp_run):
    run = load_run(fsdp_run)
    cfg = run.config
    _, splits = prepare_data(cfg.data, run.tokenizer)
    valid, _ = evaluation_sequences(splits, "valid", cfg.data.seq_len)
    # the run evaluated in batches of its whole micro-batch (2 x 4), split across its processes,
    # with train.final_eval_samples draws per sequence
    result = evaluate_nelbo(run.model, valid, batch_size=8, samples=cfg.train.final_eval_samples, seed=cfg.train.seed + 3)
    assert result.bits_per_token == pytest.approx(rows(fsdp_run)[-1]["valid_bits"], rel=1e-5)


@pytest.mark.slow
def test_an_fsdp_run_resumes_exactly(corpus, fsdp_run, tmp_path):
    run = tmp_path / "interrupted"
    torchrun_train(corpus, run, "train.batch_size=4", "train.parallel=fsdp")
    lose_checkpoints_after(run, 2)
    torchrun_train(corpus, run, "train.batch_size=4", "train.parallel=fsdp", resume=True)
    key = lambda r: (r["step"], r["train_loss"], r["valid_bits"], r["lr"], r["grad_norm"])  # noqa: E731
    assert [key(r) for r in read_metrics(run / "metrics.csv")] == [key(r) for r in read_metrics(fsdp_run / "metrics.csv")]
    for weights in ("ema", "raw"):
        a, b = load_run(run, weights=weights).model.state_dict(), load_run(fsdp_run, weights=weights).model.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_evaluation_split_across_two_processes_equals_one(fsdp_run):
    # 62 validation sequences in batches of 8, 2 samples each: 16 batches, 8 per process
    flags = ["--checkpoint", fsdp_run, "--split", "valid", "--batch-size", "8", "-k", "2", "--seed", "5", "--precision", "fp32", "--json"]
    lines = [line for line in torchrun("eval", *flags).splitlines() if line.startswith("{")]
    assert len(lines) == 1  # rank 0 reports
    split = json.loads(lines[0])
    one, _ = evaluate_checkpoint(fsdp_run, split="valid", batch_size=8, mc_samples=2, seed=5, precision="fp32")
    for key in ("bits_per_token", "bits_per_token_stderr", "bits_per_token_mc_stderr", "perplexity"):
        assert split[key] == pytest.approx(getattr(one, key), rel=1e-9)
    assert split["num_sequences"] == one.num_sequences == 62


@pytest.mark.slow
def test_a_single_process_fsdp_run_writes_sharded_checkpoints_and_resumes_exactly(corpus, tmp_path):
    cfg = config(corpus, "train.batch_size=4", "train.parallel=fsdp", "train.eval_every=0")
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    train(cfg, straight, progress=False)
    train(cfg, interrupted, progress=False)
    lose_checkpoints_after(interrupted, 2)
    train(cfg, interrupted, resume=True, progress=False)
    assert rows(straight) == rows(interrupted)
    checkpoint = list_checkpoints(straight)[-1]
    assert (checkpoint / SHARDED).is_dir() and verify_checkpoint(checkpoint) is None
    # the manifest covers the shards: an altered shard is refused by name
    shard = next((checkpoint / SHARDED).glob("*.distcp"))
    data = shard.read_bytes()
    shard.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    assert "dcp/" in (verify_checkpoint(checkpoint) or "")


def test_activation_checkpointing_gives_the_same_loss_and_gradients(corpus):
    cfg = config(corpus, "model.dropout=0.1")
    losses, grads = [], []
    for recompute in (False, True):
        model = build_model(cfg, 40, seed=0)
        if recompute:
            checkpoint_activations(model)
        torch.manual_seed(1)  # dropout draws the same masks in both, and again in the recomputation
        x0 = torch.randint(0, 40, (4, 32), generator=torch.Generator().manual_seed(2))
        loss = model(x0, generator=torch.Generator().manual_seed(3)).mean()
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad for p in model.parameters()])
    assert torch.equal(losses[0], losses[1])
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-8) for a, b in zip(*grads))


def test_the_global_batch_sets_the_accumulation_and_must_divide():
    tc = TrainConfig(batch_size=8, global_batch=64)
    assert tc.accumulation(1) == 8 and tc.accumulation(2) == 4 and tc.accumulation(8) == 1
    assert TrainConfig(batch_size=8, grad_accum=3).accumulation(2) == 3
    with pytest.raises(MaskdiffError, match="not a multiple of train.batch_size \\* processes = 8 \\* 3 = 24"):
        tc.accumulation(3)
    cfg = get_preset("tiny")
    with pytest.raises(MaskdiffError, match="leave grad_accum at 1"):
        cfg.with_overrides(["train.global_batch=64", "train.grad_accum=2"])


@pytest.mark.slow
def test_a_global_batch_trains_like_the_same_accumulation(corpus, tmp_path):
    train(config(corpus, "train.batch_size=4", "train.global_batch=8", "train.steps=2", "train.eval_every=0"), tmp_path / "a", progress=False)
    train(config(corpus, "train.batch_size=4", "train.grad_accum=2", "train.steps=2", "train.eval_every=0"), tmp_path / "b", progress=False)
    assert rows(tmp_path / "a") == rows(tmp_path / "b")

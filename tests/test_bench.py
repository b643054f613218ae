"""`maskdiff bench train`: the table and the JSON of a tiny setting (what they hold, never how fast)."""

import json

import pytest

from maskdiff.bench.train import bf16_skip_reason
from maskdiff.cli import main
from maskdiff.hardware import resolve_device

QUICK = ["--sizes", "tiny", "--batch", "2", "--seq-len", "16", "--steps", "1", "--min-time", "0", "--max-time", "0", "--warmup", "1"]


def test_bench_train_prints_a_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "train", *QUICK, "--wait-quiet", "0", "--threads", "1", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert {"cpu", "device", "torch", "threads", "results", "skipped"} <= report.keys() and report["threads"] == 1
    skipped_bf16 = bf16_skip_reason(resolve_device("auto"))
    assert [r["precision"] for r in report["results"]] == (["fp32"] if skipped_bf16 else ["fp32", "bf16"])
    assert ("bf16" in report["skipped"]) == bool(skipped_bf16)
    for r in report["results"]:
        assert r["size"] == "tiny" and r["batch"] == 2 and r["seq_len"] == 16 and r["shape"] == "2x128/4h"
        assert r["tokens_per_s"] > 0 and r["peak_gflops"] > 0 and r["peak_n"] == 512
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * r["flops_per_token"] / 1e9 / r["peak_gflops"])
        assert set(r["phases_ms"]) == {"forward+loss", "backward", "clip_grad", "optimizer", "ema"}
    assert report["cpu"] in table and "MFU" in table and "tokens/s" in table


def test_bench_train_refuses_unknown_sizes_and_precisions(capsys):
    assert main(["bench", "train", "--sizes", "huge"]) == 1
    assert "unknown size 'huge'" in capsys.readouterr().err
    assert main(["bench", "train", "--sizes", "tiny", "--precision", "fp16"]) == 1
    assert "precisions must be among fp32, bf16" in capsys.readouterr().err


def test_flops_per_token_counts_forward_backward_and_attention():
    from maskdiff.models import build_model
    from maskdiff.presets import get_preset

    cfg = get_preset("tiny").with_overrides(["model.time_conditioning=false"])
    model = build_model(cfg, 65)
    n, layers, d, length = model.num_parameters(), cfg.model.n_layers, cfg.model.d_model, 128
    assert model.flops_per_token(length) == 6 * n + 12 * layers * length * d

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


@pytest.mark.slow  # compiles the tiny network's loss (seconds to a minute on a CPU)
def test_bench_train_compile_measures_eager_and_compiled_side_by_side(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", "train", *QUICK, "--precision", "fp32", "--compile", "--wait-quiet", "0", "--threads", "1", "--json", str(out)]
    assert main(args) == 0
    table = capsys.readouterr().out
    results = json.loads(out.read_text())["results"]
    assert [(r["size"], r["precision"], r["mode"]) for r in results] == [("tiny", "fp32", "eager"), ("tiny", "fp32", "compiled")]
    assert all(r["tokens_per_s"] > 0 and r["warmup_s"] > 0 and r["device_busy"] is None for r in results)
    assert results[0]["flops_per_token"] == results[1]["flops_per_token"]  # the same model, only the execution differs
    assert " compiled " in table and " eager " in table


def test_bench_sizes_include_the_shapes_of_larger_models():
    from maskdiff.bench.train import SIZES, size_config
    from maskdiff.models import build_model

    shapes = {}
    for size in ("md4-small", "smdm-170m", "llama-135m"):
        m = size_config(size, 2, None, [], "bf16").model
        shapes[size] = (m.n_layers, m.d_model, m.n_heads, m.mlp, m.time_conditioning, SIZES[size][2])
    assert shapes == {
        "md4-small": (12, 768, 12, "gelu", False, 50_257),
        "smdm-170m": (18, 768, 12, "swiglu", False, 32_000),
        "llama-135m": (30, 576, 9, "swiglu", False, 49_152),
    }
    # the 135M Llama shape without grouped key/value heads and with an MLP of 2 x 576: within 10% of its 106M
    # non-embedding weights (attention 30 x (2 x 576^2 + 2 x 576 x 192), SwiGLU 30 x 3 x 576 x 1536)
    llama = build_model(size_config("llama-135m", 2, None, [], "bf16"), 49_152)
    head = 576 * 49_152 + 49_152
    assert abs((llama.num_parameters() - head) - 106_168_320) / 106_168_320 < 0.1
    assert size_config("25M", 2, None, [], "fp32").model.time_conditioning

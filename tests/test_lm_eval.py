"""The lm-evaluation-harness adapter: the continuation bound against an oracle, and a local
multiple-choice task end to end through ``lm_eval.simple_evaluate`` (offline)."""

import math
import os
import tempfile
import textwrap
from pathlib import Path
from types import SimpleNamespace

# offline, and a private datasets cache: set before lm_eval (and datasets) are imported
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="maskdiff-hf-datasets-"))

import lm_eval  # noqa: E402,F401  (the lmeval extra; scripts/install.sh --test installs it)
import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import ToyDistribution, make_corpus  # noqa: E402
from tiny_run import train_tiny  # noqa: E402

import maskdiff  # noqa: E402
from maskdiff.evaluation.lm_eval import MaskdiffLM  # noqa: E402
from maskdiff.tokenizer import CharTokenizer  # noqa: E402


def request(*args):
    return SimpleNamespace(args=args)


def oracle_lm(toy: ToyDistribution, mc_samples: int, cfg: float = 0.0) -> MaskdiffLM:
    """The adapter around the toy distribution's exact denoiser (characters a, b, c)."""
    lm = MaskdiffLM.__new__(MaskdiffLM)
    lm.model = maskdiff.MaskedDiffusion(toy.denoiser, "cosine", toy.V)
    lm.tokenizer = CharTokenizer(list("abc"))
    lm.device_, lm.dtype, lm.seed, lm.progress, lm.dropped = torch.device("cpu"), None, 0, False, 0
    lm.mc_samples, lm.cfg, lm.batch_size, lm.max_length, lm.steps, lm.method = mc_samples, cfg, 512, toy.L, 8, "ancestral"
    return lm


def test_loglikelihood_with_the_oracle_is_log_p_of_the_continuation_given_the_context(toy):
    lm = oracle_lm(toy, mc_samples=4000)
    letters = "abc"
    for seq in ([0, 2, 1, 1], [2, 2, 0, 1], [1, 0, 0, 2]):
        text = "".join(letters[i] for i in seq)
        x = torch.tensor([seq])
        context = toy.table[(toy.table[:, :2] == x[:, :2]).all(-1)]  # sequences sharing the first two tokens
        exact = (toy.log_prob(x) - torch.logsumexp(toy.log_prob(context), 0)).item()  # log p(x_3, x_4 | x_1, x_2)
        ((estimate, _),) = lm.loglikelihood([request(text[:2], text[2:])])
        # bounded-variance check: 4000 stratified draws of a 2-token continuation
        assert estimate == pytest.approx(exact, abs=0.05), (text, estimate, exact)
    # unconditional: the whole sequence is the continuation and the bound is log p(x)
    ((whole, _),) = lm.loglikelihood([request("", "abca")])
    assert whole == pytest.approx(toy.log_prob(torch.tensor([[0, 1, 2, 0]])).item(), abs=0.1)
    # deterministic given the seed
    assert lm.loglikelihood([request("ab", "ca")]) == lm.loglikelihood([request("ab", "ca")])


def test_greedy_flag_and_guidance_change_the_scores(toy):
    lm = oracle_lm(toy, mc_samples=64)
    best = max(("a", "b", "c"), key=lambda c: lm.loglikelihood([request("ab", "c" + c)])[0][0])
    results = {c: lm.loglikelihood([request("ab", "c" + c)])[0] for c in "abc"}
    assert results[best][0] == max(r[0] for r in results.values())
    guided = oracle_lm(toy, mc_samples=64, cfg=1.0).loglikelihood([request("ab", "ca")])[0][0]
    assert math.isfinite(guided) and guided != results["a"][0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmeval")
    (root / "corpus.txt").write_text(make_corpus(), encoding="utf-8")
    return train_tiny(root / "run", root / "corpus.txt", steps=10)


@pytest.mark.slow
def test_local_multiple_choice_task_runs_end_to_end(run_dir, tmp_path):
    import json

    docs = [
        {"question": "The king and the", "choices": [" queen.", " qxzqj."], "label": 0},
        {"question": "Good night, sweet", "choices": [" lord!", " zzzzz!"], "label": 0},
        {"question": "Speak, fair", "choices": [" lady,", " kqkqk,"], "label": 0},
    ]
    (tmp_path / "tiny.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "tiny_mc.yaml").write_text(
        textwrap.dedent(f"""\
        task: maskdiff_tiny_mc
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {tmp_path / "tiny.jsonl"}
        test_split: test
        output_type: multiple_choice
        doc_to_text: "{{{{question}}}}"
        doc_to_choice: "{{{{choices}}}}"
        doc_to_target: label
        metric_list:
          - metric: acc
            aggregation: mean
            higher_is_better: true
        """)
    )
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    results = simple_evaluate(
        model="maskdiff",
        model_args=f"checkpoint={run_dir},mc_samples=8,precision=fp32",
        tasks=["maskdiff_tiny_mc"],
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),  # skip indexing ~10k built-in tasks
        log_samples=True,
    )
    metrics = results["results"]["maskdiff_tiny_mc"]
    assert 0.0 <= metrics["acc,none"] <= 1.0
    samples = results["samples"]["maskdiff_tiny_mc"]
    assert len(samples) == 3
    scores = [resp[0][0] for s in samples for resp in s["resps"]]
    assert len(scores) == 6 and all(math.isfinite(v) and v < 0 for v in scores)


@pytest.mark.slow
def test_the_shipped_example_task_runs_from_the_repository_root(run_dir, monkeypatch):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    repo = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(repo)  # the task's data path is relative to the repository root, as the README runs it
    results = simple_evaluate(
        model="maskdiff",
        model_args=f"checkpoint={run_dir},mc_samples=8,precision=fp32",
        tasks=["shk_mc"],
        task_manager=TaskManager(include_path=str(repo / "examples" / "lm_eval"), include_defaults=False),
    )
    assert 0.0 <= results["results"]["shk_mc"]["acc,none"] <= 1.0


def test_rolling_likelihood_and_generation_on_a_trained_run(run_dir):
    lm = MaskdiffLM(checkpoint=str(run_dir), mc_samples=4, steps=8, precision="fp32")
    text = make_corpus(100, seed=7)
    (rolling,) = lm.loglikelihood_rolling([request(text)])
    (single,) = lm.loglikelihood_rolling([request(text[:50])])
    assert math.isfinite(rolling) and rolling < single < 0  # more text, lower log-likelihood
    out = lm.generate_until([request("The king ", {"until": ["."], "max_gen_toks": 12}), request("A", {"max_gen_toks": 5})])
    assert len(out[0]) <= 12 and "." not in out[0] and len(out[1]) == 5
    with pytest.raises(maskdiff.MaskdiffError, match="mc_samples must be >= 1"):
        MaskdiffLM(checkpoint=str(run_dir), mc_samples=0)


def test_scores_do_not_depend_on_the_order_of_requests(toy):
    lm = oracle_lm(toy, mc_samples=16)
    a, b = request("ab", "ca"), request("c", "bba")
    assert lm.loglikelihood([a, b]) == lm.loglikelihood([b, a])[::-1]

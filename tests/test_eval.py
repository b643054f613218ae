"""Likelihood evaluation: the NELBO against the exact entropy of an oracle, its standard errors,
the discrete-time bound, the chain-rule likelihood, and `maskdiff eval` on a trained run."""

import json
import math
import re
from pathlib import Path

import pytest
import torch
from conftest import make_corpus
from tiny_run import train_tiny

import maskdiff
from maskdiff.cli import main
from maskdiff.evaluation import evaluate_nelbo
from maskdiff.evaluation.chain_rule import chain_rule_log_likelihood, evaluate_chain_rule, time_for_alpha


def oracle(toy, schedule="cosine"):
    return maskdiff.MaskedDiffusion(toy.denoiser, schedule=schedule, vocab_size=toy.V)


def draw(toy, n, seed=0):
    """n sequences drawn from the toy distribution.  -> [n, L]"""
    index = torch.multinomial(toy.probs, n, replacement=True, generator=torch.Generator().manual_seed(seed))
    return toy.table[index]


def entropy_bits_per_token(toy):
    return -(toy.probs * toy.probs.log()).sum().item() / toy.L / math.log(2)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_oracle_bound_equals_the_exact_entropy_within_its_standard_error(toy, schedule):
    result = evaluate_nelbo(oracle(toy, schedule), draw(toy, 6000), batch_size=1000, samples=4, seed=1)
    exact = entropy_bits_per_token(toy)
    assert result.num_sequences == 6000 and result.num_tokens == 6000 * toy.L
    assert abs(result.bits_per_token - exact) < 3 * result.bits_per_token_stderr, (result, exact)
    # the check has teeth: the standard error is small next to what a wrong model would cost
    marginal = -(toy.marginals() * toy.marginals().log()).sum().item() / toy.L / math.log(2)
    assert marginal - exact > 10 * result.bits_per_token_stderr
    assert result.perplexity == pytest.approx(2**result.bits_per_token)


def test_monte_carlo_standard_error_shrinks_like_one_over_sqrt_k(toy):
    # discrete time (bounded weights): the continuous-time weight 1/t makes single estimates
    # heavy-tailed, so their sample variance converges too slowly for a sharp ratio test. The
    # ratio's own spread over seeds is about 0.25 around 2; 1/K would give 4, no shrinking 1
    x = draw(toy, 200, seed=2)
    small = evaluate_nelbo(oracle(toy), x, batch_size=200, samples=8, timesteps=16, seed=3)
    large = evaluate_nelbo(oracle(toy), x, batch_size=200, samples=32, timesteps=16, seed=4)
    assert 1.5 < small.bits_per_token_mc_stderr / large.bits_per_token_mc_stderr < 2.6
    # one sequence: the reported standard error is the Monte Carlo one
    one = x[:1]
    se = [evaluate_nelbo(oracle(toy), one, samples=k, timesteps=16, seed=5).bits_per_token_stderr for k in (200, 800)]
    assert 1.5 < se[0] / se[1] < 2.7  # spread over seeds 1.6-2.6 (heavy tails)
    assert evaluate_nelbo(oracle(toy), one, samples=1).to_dict()["bits_per_token_stderr"] is None  # NaN -> JSON null


def test_discrete_time_bound_is_above_the_continuous_one(toy):
    x = draw(toy, 1000, seed=6)
    continuous = evaluate_nelbo(oracle(toy), x, batch_size=250, samples=8, seed=7)
    for steps in (2, 4):
        discrete = evaluate_nelbo(oracle(toy), x, batch_size=250, samples=8, timesteps=steps, seed=7)
        noise = math.hypot(discrete.bits_per_token_mc_stderr, continuous.bits_per_token_mc_stderr)
        assert discrete.bits_per_token - continuous.bits_per_token > 3 * noise, (steps, discrete, continuous)
        assert discrete.timesteps == steps


def test_evaluation_is_deterministic_given_the_seed(toy):
    x = draw(toy, 64, seed=8)
    a, b, c = (evaluate_nelbo(oracle(toy), x, batch_size=16, samples=2, seed=s) for s in (0, 0, 1))
    assert a == b and a.bits_per_token != c.bits_per_token


def test_chain_rule_with_the_oracle_is_exactly_log_p(toy):
    x = toy.table  # all 81 sequences
    log_p = chain_rule_log_likelihood(oracle(toy), x, batch_size=50)
    assert torch.allclose(log_p, toy.log_prob(x), rtol=0, atol=1e-10)
    result = evaluate_chain_rule(oracle(toy), x)
    assert result.estimator == "chain_rule" and result.bits_per_token_mc_stderr == 0
    assert result.nats_per_token == pytest.approx(-toy.log_prob(x).mean().item() / toy.L, abs=1e-12)


def test_chain_rule_of_any_denoiser_is_a_normalised_distribution(toy):
    # a denoiser that looks at every position: only the left-to-right masking keeps it causal
    weights = torch.randn(toy.L, toy.V + 1, toy.L, toy.V, generator=torch.Generator().manual_seed(9), dtype=torch.float64)

    def denoiser(z, t):
        return sum(weights[j, z[:, j]] for j in range(toy.L))  # [B, L, V]

    model = maskdiff.MaskedDiffusion(denoiser, "linear", toy.V)
    total = chain_rule_log_likelihood(model, toy.table, batch_size=7).exp().sum().item()
    assert total == pytest.approx(1.0, abs=1e-9)


def test_time_for_alpha_inverts_the_schedule():
    schedule = maskdiff.schedules.get("cosine")
    target = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    assert torch.allclose(schedule.alpha(time_for_alpha(schedule, target)), target, atol=1e-9)


# ------------------------------------------------------------------ the command line
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    (root / "corpus.txt").write_text(make_corpus(), encoding="utf-8")
    return train_tiny(root / "run", root / "corpus.txt")


def cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_json_reports_bound_perplexity_stderr_and_tokens(run_dir, capsys):
    base = ["eval", "--checkpoint", str(run_dir), "--json", "--max-sequences", "8", "--precision", "fp32"]
    code, out, _ = cli(capsys, *base, "-k", "3", "--seed", "4")
    assert code == 0
    result = json.loads(out)
    assert result["num_tokens"] == 8 * 32 and result["num_sequences"] == 8 and result["samples_per_sequence"] == 3
    assert result["perplexity"] == pytest.approx(2 ** result["bits_per_token"])
    assert result["bits_per_token_stderr"] > 0 and result["bits_per_token_mc_stderr"] > 0
    assert result["unit"] == "char" and result["estimator"] == "nelbo" and result["seed"] == 4
    assert json.loads(cli(capsys, *base, "-k", "3", "--seed", "4")[1]) == result  # deterministic
    assert json.loads(cli(capsys, *base, "-k", "3", "--seed", "5")[1])["bits_per_token"] != result["bits_per_token"]
    code, out, _ = cli(capsys, *base, "--precision", "bf16")
    assert code == 0 and json.loads(out)["precision"] == "bf16"
    code, out, _ = cli(capsys, *base, "--chain-rule", "--length", "12", "--max-sequences", "3")
    chain = json.loads(out)
    assert code == 0 and chain["estimator"] == "chain_rule" and chain["num_tokens"] == 36
    # every key is documented in the eval page's table
    page = (Path(__file__).parent.parent / "docs" / "evaluation.md").read_text()
    documented = set(re.findall(r"`([a-z_0-9]+)`", page[page.index("## `maskdiff eval --json` keys") :]))
    assert set(result) | set(chain) <= documented, set(result) - documented


def test_eval_zero_shot_corpus_with_unknown_characters(run_dir, tmp_path, capsys):
    text = make_corpus(3000, seed=3).replace("the", "thé").replace(" and ", " — ")
    (tmp_path / "other.txt").write_text(text, encoding="utf-8")
    accents, dashes = text.count("é"), text.count("—")
    code, _, err = cli(capsys, "eval", "--checkpoint", str(run_dir), "--data", str(tmp_path / "other.txt"))
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert f"{accents + dashes} characters" in err and f"'é' x{accents}" in err and f"'—' x{dashes}" in err
    assert "--skip-unknown" in err
    code, out, _ = cli(capsys, "eval", "--checkpoint", str(run_dir), "--data", str(tmp_path / "other.txt"), "--skip-unknown", "--json")
    result = json.loads(out)
    assert code == 0 and result["skipped_characters"] == accents + dashes and result["skipped"] == {"é": accents, "—": dashes}
    assert result["num_tokens"] == (len(text) - accents - dashes) // 32 * 32


def test_eval_bad_input_is_a_one_line_error(run_dir, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "greek.txt").write_text("αβγ" * 50, encoding="utf-8")
    base = ["eval", "--checkpoint", str(run_dir), "--quiet"]
    cases = [
        ([*base, "--data", str(tmp_path / "empty.txt")], "is empty"),
        ([*base, "--data", str(tmp_path / "greek.txt"), "--skip-unknown"], "fewer than one sequence"),
        ([*base, "-k", "0"], "Monte Carlo samples must be >= 1"),
        ([*base, "--mc-samples", "-2"], "Monte Carlo samples must be >= 1"),
        ([*base, "--samples", "4"], "use --mc-samples 4"),
        ([*base, "--chain-rule", "--timesteps", "10"], "neither --timesteps nor --mc-samples"),
        ([*base, "--max-sequences", "0"], "max sequences must be >= 1"),
        (["eval", "--json"], "required: --checkpoint"),
    ]
    for argv, message in cases:
        code, _, err = cli(capsys, *argv)
        assert code == 1 and len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err, (argv, err)

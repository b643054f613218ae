"""Every sampler option is declared once and reachable by every route: the Python API
(``maskdiff.load(...).sample``), the command line (``maskdiff sample``) and HTTP
(``POST /v1/completions``, driven in-process). For the same seed the three give the same samples;
an unknown option is refused by each with a message naming it."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from conftest import make_corpus
from starlette.testclient import TestClient
from tiny_run import train_tiny

import maskdiff
from maskdiff.cli import main
from maskdiff.generation import split_samples
from maskdiff.sampling import RULES, STEPS, CommonOptions, OptionError, SamplerOptions, every_option
from maskdiff.sampling.flags import add_option_flags, flag_message, flag_of, option_values
from maskdiff.sampling.options import declared, spelled
from maskdiff.serve import create_app
from maskdiff.serve.requests import SamplerFields

PROMPT = "The "
LENGTH = 20  # tokens per sample, the prompt included
STEPS_USED = 8

# one case per rule, and cases that between them set every option to a value other than its default
CASES = {
    "ancestral, every shared option": {
        "method": "ancestral",
        "grid": "uniform",
        "temperature": 0.7,
        "top_k": 5,
        "top_p": 0.9,
        "cfg": 0.5,
        "recompute": True,
        "min_length": 12,
    },
    "mean, prefix cache": {"method": "mean", "block_size": 8, "kv_cache": "prefix", "refresh": 2},
    "low_confidence, dual cache": {"method": "low_confidence", "tokens_per_step": 2, "block_size": 8, "kv_cache": "dual"},
    "random": {"method": "random", "tokens_per_step": 3},
    "threshold": {"method": "threshold", "threshold": 0.5, "max_tokens_per_step": 2},
    "factor": {"method": "factor", "factor": 2.0, "max_tokens_per_step": 3},
    "remdm loop": {"method": "remdm", "eta": 0.3, "remask": "loop", "t_on": 0.6, "t_off": 0.1, "alpha_on": 0.8},
    "remdm rescale": {"method": "remdm", "eta": 0.5, "remask": "rescale"},
}
EOS = "."  # min_length needs an end-of-text token: every route gets the same one


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("options")
    corpus = folder / "corpus.txt"
    corpus.write_text(make_corpus(20_000), encoding="utf-8")
    return train_tiny(folder / "run", corpus, steps=2)


@pytest.fixture(scope="module")
def run(run_dir):
    return maskdiff.load(run_dir, precision="fp32")


@pytest.fixture(scope="module")
def http(run):
    with TestClient(create_app(run)) as client:
        yield client


def test_the_cases_set_every_rule_and_every_option_away_from_its_default():
    assert {values["method"] for values in CASES.values()} == set(RULES.names())
    for item, _ in every_option():
        assert any(item.name in values and values[item.name] != item.option.default for values in CASES.values()), item.name
    assert {name for values in CASES.values() for name in values} == {item.name for item, _ in every_option()}


def python_route(run, values: dict, seed: int) -> list[str]:
    return run.sample(2, length=LENGTH, steps=STEPS_USED, prompt=PROMPT, seed=seed, eos=EOS, **values)


def flags(values: dict) -> list[str]:
    names = {item.name: item for item, _ in every_option()}
    out = []
    for name, value in values.items():
        item = names[name]
        out += [item.flag] if value is True else [item.flag, str(value)]
    return out


def cli_route(run_dir, values: dict, seed: int, capsys) -> list[str]:
    argv = ["sample", "--checkpoint", str(run_dir), "--num-samples", "2", "--length", str(LENGTH), "--steps", str(STEPS_USED)]
    argv += ["--prompt", PROMPT, "--seed", str(seed), "--eos", EOS, "--precision", "fp32", "--quiet", *flags(values)]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return split_samples(out)


def http_route(http, values: dict, seed: int) -> list[str]:
    body = {"prompt": PROMPT, "max_tokens": LENGTH - len(PROMPT), "n": 2, "seed": seed, "steps": STEPS_USED, "eos": EOS, **values}
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.json()
    return [PROMPT + choice["text"] for choice in sorted(response.json()["choices"], key=lambda c: c["index"])]


@pytest.mark.parametrize("case", list(CASES))
def test_python_cli_and_http_give_the_same_samples(run, run_dir, http, capsys, case):
    values = CASES[case]
    library = python_route(run, values, seed=11)
    assert len(library) == 2 and all(text.startswith(PROMPT) for text in library)
    assert cli_route(run_dir, values, 11, capsys) == library
    assert http_route(http, values, 11) == library


def test_remasking_over_http_is_remasking_not_ancestral_sampling(run, http):
    remdm = {"method": "remdm", "eta": 0.8, "remask": "cap"}
    over_http = http_route(http, remdm, seed=5)
    assert over_http == python_route(run, remdm, seed=5)
    assert over_http != python_route(run, {"method": "ancestral"}, seed=5)


def test_an_unknown_option_is_refused_by_every_route_by_its_name(run, run_dir, http, capsys):
    with pytest.raises(OptionError, match="colour") as refused:
        run.sample(1, length=LENGTH, steps=STEPS_USED, colour="red")
    assert refused.value.field == "colour"
    with pytest.raises(SystemExit) as exited:
        main(["sample", "--checkpoint", str(run_dir), "--colour", "red"])
    assert exited.value.code == 2 and "--colour" in capsys.readouterr().err
    error = http.post("/v1/completions", json={"prompt": PROMPT, "colour": "red"}).json()["error"]
    assert error["param"] == "colour" and error["code"] == "unknown_field" and "colour" in error["message"]


@pytest.mark.parametrize(
    ("values", "field", "flag_text"),
    [
        ({"top_p": 1.5}, "top_p", "--top-p must be in (0, 1], got 1.5"),
        ({"kv_cache": "dual"}, "kv_cache", "--kv-cache dual caches the blocks outside the one being decoded: it needs --block-size"),
        ({"method": "remdm", "t_on": 0.1, "t_off": 0.2}, "t_off", "need 0 < --t-off < --t-on < 1"),
        ({"eta": 0.2}, "eta", "--eta applies to the remdm rule"),
        ({"method": "threshold", "threshold": 1.5}, "threshold", "--threshold must be in (0, 1], got 1.5"),
    ],
)
def test_an_option_error_carries_its_field_and_each_route_names_it_its_way(run_dir, http, capsys, values, field, flag_text):
    with pytest.raises(OptionError) as refused:
        SamplerOptions(**values)
    assert refused.value.field == field and "--" not in str(refused.value)  # Python names in Python
    assert main(["sample", "--checkpoint", str(run_dir), "--steps", "2", "--quiet", *flags(values)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and flag_text in err and f" {field} " not in err  # flags on the command line
    error = http.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 4, "steps": 2, **values}).json()["error"]
    # a value out of its declared range is refused as the body is parsed, the rest by the sampler's checks
    assert error["param"] == field and error["code"] in ("invalid_value", "invalid_request") and field in error["message"]


def test_flags_fields_and_info_are_generated_from_the_declarations(http):
    parser = argparse.ArgumentParser()
    add_option_flags(parser)
    actions = {action.dest: action for action in parser._actions if action.help != argparse.SUPPRESS}
    info = http.get("/api/info").json()["options"]
    fields = SamplerFields.model_fields
    for item, rules in every_option():
        action, option = actions[item.name], item.option
        assert item.flag in action.option_strings and spelled(option.doc, flag_of).replace("%", "%%") in action.help
        assert all(rule in action.help for rule in rules)
        assert fields[item.name].default == option.default and fields[item.name].description == spelled(option.doc)
        assert info[item.name]["default"] == option.default and info[item.name]["doc"] == spelled(option.doc)
        assert info[item.name]["rules"] == (list(rules) or None)
    assert info["eta"]["range"] == "in [0, 1]" and info["top_p"]["range"] == "in (0, 1]" and info["method"]["choices"] == list(RULES.names())
    assert actions["steps"].default == STEPS.default
    assert "(needs --block-size)" in actions["kv_cache"].help and "[--t-off, --t-on]" in actions["t_on"].help  # no Python names on the CLI
    assert "(needs block_size)" in info["kv_cache"]["doc"]
    # only what was given is read back, so another rule's option left alone is no error
    assert option_values(parser.parse_args(["--method", "remdm", "--eta", "0.4", "--top-p", "0.8"])) == {"method": "remdm", "eta": 0.4, "top_p": 0.8}
    internal = [item.name for item in declared(CommonOptions) if item.option.internal]
    assert internal == ["eos_id", "truncate_after_eos"] and not set(internal) & set(fields)


def test_earlier_spellings_keep_working_for_one_release(run_dir, capsys):
    with pytest.warns(DeprecationWarning, match="'cache' is now 'recompute'"):
        assert SamplerOptions(cache=False).recompute is True
    rule = SamplerOptions(method="remdm", eta=0.1, remask="loop").rule()
    assert rule.mode == "loop"
    with pytest.warns(DeprecationWarning, match="Remasking.schedule is now Remasking.mode"):
        assert rule.schedule == "loop"
    base = ["sample", "--checkpoint", str(run_dir), "--num-samples", "1", "--length", "12", "--steps", "4", "--quiet"]
    assert main([*base, "--no-cache"]) == 0
    old_out, err = capsys.readouterr()
    assert err.splitlines()[0] == "maskdiff: warning: --no-cache is deprecated and goes in the next release; use --recompute"
    assert main([*base, "--recompute"]) == 0
    assert capsys.readouterr()[0] == old_out
    assert main([*base, "--block-size", "4", "--cache", "prefix"]) == 0  # --cache is --kv-cache's other spelling
    cached = capsys.readouterr()[0]
    assert main([*base, "--block-size", "4", "--kv-cache", "prefix"]) == 0
    assert capsys.readouterr()[0] == cached


def test_flag_message_names_flags_and_unknown_fields_by_their_dashed_names():
    err = OptionError("num_samples", "{num_samples} and {length} must be >= 1, got 0 and 0")
    assert str(err) == "num_samples and length must be >= 1, got 0 and 0"
    assert flag_message(err) == "--num-samples and --length must be >= 1, got 0 and 0"
    assert flag_message(OptionError("min_length", "{min_length} 3 has no end-of-text token to keep out: need {eos_id}")).endswith("need --eos")

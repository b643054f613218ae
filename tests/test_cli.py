"""The command line end to end, its help texts, and one-line errors for bad input."""

import argparse
import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

import maskdiff.cli
from maskdiff.cli import build_parser, main
from maskdiff.cli.evaluate import LIKELIHOOD, REVERSE_CURSE, SAMPLES

SMALL = [
    "--set",
    "model.n_layers=1",
    "--set",
    "model.d_model=32",
    "--set",
    "data.seq_len=32",
    "--set",
    "train.batch_size=4",
    "--set",
    "train.eval_every=3",
    "--set",
    "train.log_every=2",
    "--set",
    "train.precision=fp32",
]


def texts_of(stdout: str) -> list[str]:
    """The samples `maskdiff sample` printed (separated by a line of dashes)."""
    return stdout[:-1].split("\n" + "-" * 40 + "\n")


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def trained(corpus_file, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run(capsys, "train", "--data", str(corpus_file), "--out", str(out), "--quiet", "--set", "train.steps=6", *SMALL)
    assert code == 0, stdout
    assert "checkpoint:" in stdout and str(out) in stdout
    return out


@pytest.mark.slow
def test_train_sample_eval_end_to_end(trained, capsys, corpus_file):
    code, out, err = run(capsys, "sample", "--checkpoint", str(trained), "--num-samples", "2", "--length", "20", "--steps", "8", "--quiet")
    assert code == 0
    texts = texts_of(out)
    assert len(texts) == 2 and all(len(t) == 20 for t in texts)
    assert "tokens/s" in err

    code, out, _ = run(capsys, "eval", "--checkpoint", str(trained), "--json", "--mc-samples", "2")
    assert code == 0
    result = json.loads(out)
    assert {"bits_per_token", "bits_per_token_stderr", "perplexity", "num_tokens"} <= result.keys()
    assert 0 < result["bits_per_token"] < 10 and result["bits_per_token_stderr"] > 0
    assert result["samples_per_sequence"] == 2

    code, out, _ = run(capsys, "eval", "--checkpoint", str(trained), "--data", str(corpus_file), "--timesteps", "50", "--quiet")
    assert code == 0 and "bits/char" in out and "discrete-time (T=50)" in out


def test_resume_continues_to_more_steps(trained, capsys):
    code, out, _ = run(capsys, "train", "--out", str(trained), "--resume", "--quiet", "--set", "train.steps=8")
    assert code == 0 and "done: 8 steps" in out


def test_sample_show_steps_prints_the_unmasking(trained, capsys):
    code, out, err = run(
        capsys, "sample", "--checkpoint", str(trained), "--num-samples", "1", "--length", "12", "--steps", "4", "--show-steps", "--quiet"
    )
    assert code == 0
    assert "--- step 0/4" in err and "_" * 12 in err


def test_presets_listing_and_show(capsys):
    code, out, _ = run(capsys, "presets")
    assert code == 0 and "tiny" in out and "small" in out
    code, out, _ = run(capsys, "presets", "--show", "tiny")
    assert code == 0 and "train.steps = " in out and "# optimizer steps" in out


def subcommands() -> list[str]:
    actions = [a for a in build_parser()._actions if a.dest == "command"]
    return list(actions[0].choices)


def test_the_subcommands_are_all_here():
    assert set(subcommands()) == {
        "train",
        "finetune",
        "sample",
        "eval",
        "facts",
        "presets",
        "serve",
        "bench",
        "prepare",
        "scaling",
        "import",
        "export",
    }


def test_bench_train_has_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "train", "--help"])
    assert exit_info.value.code == 0 and "--json" in capsys.readouterr().out


@pytest.mark.parametrize("command", subcommands())
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "--" in capsys.readouterr().out


def bad_inputs(tmp_path, corpus_file):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 100)
    (tmp_path / "greek.txt").write_text("αβγ" * 100, encoding="utf-8")
    new = str(tmp_path / "new")
    return [
        (["train", "--data", str(tmp_path / "missing.txt"), "--out", new], "does not exist"),
        (["train", "--data", str(tmp_path / "empty.txt"), "--out", new], "is empty"),
        (["train", "--data", str(tmp_path / "latin1.txt"), "--out", new], "not UTF-8"),
        (["train", "--preset", "nope", "--out", new], "unknown preset"),
        (["train", "--set", "train.nope=1", "--out", new], "unknown config key"),
        (["train", "--set", "train.steps=ten", "--out", new], "must be int"),
        (["train", "--set", "train.steps", "--out", new], "not of the form"),
        (["train", "--resume", "--out", str(tmp_path / "missing-run")], "no config.json"),
        (["sample", "--checkpoint", str(tmp_path / "nowhere")], "does not exist"),
        (["eval", "--checkpoint", str(tmp_path / "nowhere")], "does not exist"),
        (["eval", "--checkpoint", str(tmp_path)], "holds no checkpoint"),
        (["sample", "--checkpoint", "x", "--steps", "many"], "invalid int value"),
        (["train", "--bogus"], "unrecognized arguments"),
        (["train", "--resume", "sometimes", "--out", new], "invalid choice"),
        (["train", "--resume", "--out", str(tmp_path)], "no config.json"),
        (["train", "--set", "train.lr=nan", "--out", new], "finite"),
        (["train", "--set", "model.d_model=-4", "--set", "train.batch_size=0", "--out", new], "train.batch_size must be >= 1"),
        (["sample"], "required: --checkpoint"),
        (["sample", "--checkpoint", str(tmp_path / "nowhere"), "--method", "best"], "invalid choice"),
        (["eval"], "required: --checkpoint"),
        (["eval", "--checkpoint", str(tmp_path / "nowhere"), "--mc-samples", "x"], "invalid int value"),
        (["presets", "--show", "nope"], "unknown preset"),
        (["nonsense"], "invalid choice"),
        ([], "required: COMMAND"),
    ]


def test_bad_input_gives_one_line_and_non_zero_exit(tmp_path, corpus_file, capsys):
    for argv, message in bad_inputs(tmp_path, corpus_file):
        try:
            code = main(argv)
        except SystemExit as exit_info:  # argparse usage errors
            code = exit_info.code
        out, err = capsys.readouterr()
        assert code != 0, argv
        lines = err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (argv, err)
        assert "Traceback" not in err
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").iterdir())


def test_malformed_numbers_for_a_trained_run_are_clear_errors(trained, capsys):
    cases = [
        (["eval", "--mc-samples", "0"], "samples must be >= 1"),
        (["eval", "--timesteps", "0"], "timesteps must be >= 1"),
        (["eval", "--batch-size", "0"], "batch size must be >= 1"),
        (["eval", "--length", "0"], "length must be >= 1"),
        (["eval", "--length", "100000"], "fewer than one sequence"),
        (["sample", "--num-samples", "0"], "--num-samples must be >= 1"),
        (["sample", "--length", "0"], "--length must be >= 1"),
        (["sample", "--temperature", "-1"], "--temperature must be >= 0"),
        (["sample", "--block-size", "-2"], "--block-size must be >= 0"),
    ]
    for extra, message in cases:
        code, _, err = run(capsys, extra[0], "--checkpoint", str(trained), "--quiet", *extra[1:])
        assert code == 1 and len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err, (extra, err)


def test_debug_flag_shows_the_traceback(tmp_path):
    from maskdiff.errors import MaskdiffError

    with pytest.raises(MaskdiffError):
        main(["--debug", "eval", "--checkpoint", str(tmp_path / "none")])


def test_eval_refuses_text_outside_the_vocabulary(trained, tmp_path, capsys):
    (tmp_path / "greek.txt").write_text("αβγ" * 100, encoding="utf-8")
    code, _, err = run(capsys, "eval", "--checkpoint", str(trained), "--data", str(tmp_path / "greek.txt"))
    assert code == 1 and "cannot encode" in err and "'α' x100" in err and "--skip-unknown" in err


def test_failed_commands_leave_the_run_folder_intact(trained, capsys):
    files = {p: p.read_bytes() for p in trained.rglob("*") if p.is_file() and "tensorboard" not in p.parts}
    assert run(capsys, "train", "--out", str(trained), "--quiet", *SMALL)[0] == 1  # refuses to overwrite
    assert run(capsys, "train", "--out", str(trained), "--resume", "--set", "train.lr=-1")[0] == 1
    assert run(capsys, "train", "--out", str(trained), "--resume", "--set", "train.steps=3")[0] == 1  # already past it
    assert run(capsys, "eval", "--checkpoint", str(trained), "--mc-samples", "0")[0] == 1
    after = {p: p.read_bytes() for p in trained.rglob("*") if p.is_file() and "tensorboard" not in p.parts}
    assert files == after


@pytest.mark.slow
def test_module_entry_point_runs_in_a_subprocess(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "maskdiff", "eval", "--checkpoint", str(tmp_path / "none")], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "maskdiff", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "train" in proc.stdout


def test_parser_lists_all_subcommands():
    help_text = build_parser().format_help()
    for command in ("train", "sample", "eval", "presets"):
        assert command in help_text


def test_sample_with_prompt_infill_rules_and_cfg(trained, capsys):
    base = ["sample", "--checkpoint", str(trained), "--num-samples", "2", "--steps", "6", "--quiet"]
    code, out, err = run(capsys, *base, "--length", "16", "--prompt", "The ", "--method", "low_confidence", "--cfg", "1.5")
    assert code == 0 and all(t.startswith("The ") and len(t) == 16 for t in texts_of(out))
    assert "network evaluations" in err
    code, out, _ = run(capsys, *base, "--infill", "the [[5]] and [[3]].", "--method", "threshold", "--block-size", "4")
    assert code == 0 and all(t.startswith("the ") and t.endswith(".") and len(t) == 18 and t[9:14] == " and " for t in texts_of(out))
    code, out, _ = run(capsys, *base, "--length", "12", "--top-k", "3", "--top-p", "0.9", "--temperature", "0.7", "--grid", "uniform")
    assert code == 0


def test_sample_bad_input_is_a_clear_error(trained, capsys):
    base = ["sample", "--checkpoint", str(trained), "--quiet"]
    cases = [
        (["--length", "4", "--prompt", "far too long a prompt"], "more than the sequence length"),
        (["--prompt", "ωμέγα"], "not in the vocabulary"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["--top-p", "0"], "--top-p must be in (0, 1]"),
        (["--cfg", "2"], "needs a prompt"),
        (["--infill", "no slots here"], "no [[N]] slot"),
        (["--eos", "ab"], "exactly one token"),
    ]
    for extra, message in cases:
        code, _, err = run(capsys, *base, *extra)
        assert code == 1 and len(err.strip().splitlines()) == 1 and message in err, (extra, err)


# ------------------------------------------------------------------ the package's shape
CLI = Path(maskdiff.cli.__file__).parent
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 300, 80


def test_no_cli_module_over_300_lines_and_no_function_over_80():
    modules = sorted(CLI.glob("*.py"))
    assert {m.stem for m in modules} >= {"__init__", "common", "train", "sample", "evaluate", "data", "scaling", "bench", "serve", "presets"}
    for module in modules:
        source = module.read_text(encoding="utf-8")
        assert len(source.splitlines()) <= MAX_MODULE_LINES, module.name
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None and node.end_lineno - node.lineno + 1 <= MAX_FUNCTION_LINES, f"{module.name}: {node.name}"


def leaf_parsers():
    """(command words, parser) of every command that runs a handler, nested ones included."""

    def walk(words, parser):
        commands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not commands:
            yield words, parser
        for action in commands:
            for name, child in action.choices.items():
                yield from walk([*words, name], child)

    return list(walk([], build_parser()))


def test_every_command_reads_typed_inputs_made_of_its_own_flags():
    leaves = leaf_parsers()
    assert len(leaves) == 15  # 10 commands, bench's 2 benchmarks, scaling's 3 steps
    for words, parser in leaves:
        declared = parser.get_default("inputs")
        assert declared is not None, words
        dests = {a.dest for a in parser._actions}
        for cls in declared if isinstance(declared, tuple) else (declared,):
            assert dataclasses.is_dataclass(cls), words
            made = {f.name for f in dataclasses.fields(cls)} - {"sampler_options", "limits"}  # made from several flags
            assert made <= dests, (words, made - dests)


@pytest.mark.parametrize("words", [w for w, _ in leaf_parsers()], ids=" ".join)
def test_every_command_and_step_has_help(words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*words, "--help"])
    assert exit_info.value.code == 0 and "--" in capsys.readouterr().out


def imports_torch(*argv: str) -> tuple[bool, subprocess.CompletedProcess]:
    """Whether `python -m maskdiff ARGV` imports torch (seen in the subprocess's sys.modules), and the process."""
    script = (
        "import runpy, sys\n"
        f"sys.argv = ['maskdiff', *{list(argv)!r}]\n"
        "try:\n    runpy.run_module('maskdiff', run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO TORCH', file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    return proc.stderr.splitlines()[-1] == "TORCH", proc


# the commands whose flags do not come from the sampler's rules (sample, bench generate) or the
# scaling package (its FLOP formula and size family are read from maskdiff.scaling)
LIGHT = [[], ["train"], ["finetune"], ["eval"], ["facts"], ["serve"], ["bench"], ["bench", "train"], ["prepare"], ["presets"]]


@pytest.mark.slow
def test_help_and_usage_errors_do_not_import_torch():
    for words in LIGHT:
        torch_loaded, proc = imports_torch(*words, "--help")
        assert not torch_loaded and proc.stdout.startswith("usage: maskdiff"), words
    for argv in (["nonsense"], ["train", "--bogus"], ["eval", "--mc-samples", "x"], ["serve", "--checkpoint", "x", "--port", "99999"]):
        torch_loaded, proc = imports_torch(*argv)
        assert not torch_loaded and "error:" in proc.stderr, argv
    assert imports_torch("presets")[0]  # a command that runs loads what it needs


@pytest.mark.parametrize("port", ["99999", "65536", "-1"])
def test_serve_refuses_a_port_out_of_range_before_anything_loads(port, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--checkpoint", "nowhere", "--port", port])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert f"argument --port: {port} is not a port: give 0-65535 (0: a free one)" in err


def test_serve_takes_every_port_of_the_range():
    for port in (0, 1, 8000, 65535):
        assert build_parser().parse_args(["serve", "--checkpoint", "x", "--port", str(port)]).port == port


def test_train_help_says_what_data_each_kind_of_preset_takes(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--data PATH" in text and "UTF-8 text file for the character presets" in text and "folder written by `maskdiff prepare`" in text


# ------------------------------------------------------------------ eval: three modes chosen in one place
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--task", "reverse-curse", "--checkpoint", "x", "--data", "f", "--seed", "3"], "--seed does not apply to --task reverse-curse"),
        (
            ["--task", "reverse-curse", "--checkpoint", "x", "--data", "f", "--samples", "s", "--judge", "j", "-k", "2", "--timesteps", "5"]
            + ["--chain-rule", "--length", "9", "--max-sequences", "3", "--skip-unknown"],
            "--max-sequences, --skip-unknown, --samples, --judge do not apply to --task reverse-curse (greedy decoding, exact match)",
        ),
        (["--samples", "out.txt", "--mc-samples", "4"], "--mc-samples does not apply to --samples"),
        (["--samples", "out.txt", "--checkpoint", "run"], "--checkpoint does not apply to --samples"),
        (["--checkpoint", "run", "--judge", "smollm2"], "--judge does not apply to --checkpoint"),
        (["--task", "reverse-curse", "--checkpoint", "x"], "--task reverse-curse needs --checkpoint RUN and --data FACTS"),
        (["--quiet"], "the following arguments are required: --checkpoint DIR"),
        (["--checkpoint", "run", "--samples", "8"], "use --mc-samples 8"),
    ],
)
def test_eval_refuses_flags_its_mode_does_not_declare(argv, message, capsys):
    code, _, err = run(capsys, "eval", *argv)
    assert code == 1 and err.count("\n") == 1 and message in err, err


def test_eval_modes_declare_the_flags_their_handlers_read():
    parser = next(p for words, p in leaf_parsers() if words == ["eval"])
    flags = {a.dest for a in parser._actions if a.option_strings} - {"help", "task", "threads"}
    declared = [{f.name for f in dataclasses.fields(mode.inputs)} for mode in (LIKELIHOOD, SAMPLES, REVERSE_CURSE)]
    assert set().union(*declared) == flags  # every flag belongs to some mode
    # the flags a mode needs given: typed without None in its inputs, without a default on the command line
    needed = {mode.name: [name for name in mode.required() if parser.get_default(name) is None] for mode in (LIKELIHOOD, SAMPLES, REVERSE_CURSE)}
    assert needed == {"--checkpoint": ["checkpoint"], "--samples": ["samples"], "--task reverse-curse": ["checkpoint", "data"]}


def test_presets_show_lists_every_sampler_option_with_its_default(capsys):
    from maskdiff.sampling.flags import flag_of
    from maskdiff.sampling.settings import every_option

    assert main(["presets", "--show", "tiny"]) == 0
    out = capsys.readouterr().out
    for item, _ in every_option():
        assert f"\n{flag_of(item.name)} = {item.option.default!r}  # " in out

"""Scaling studies: the fit recovers known power laws, plans spend their budgets, runs resume and
skip, and bad input (budgets, corpora, too few sizes, unfinished runs) is one line."""

from __future__ import annotations

import json
import math
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import lose_checkpoints_after, make_corpus

from maskdiff.checkpoint import CHECKPOINTS, checkpoint_name
from maskdiff.cli import main
from maskdiff.errors import MaskdiffError
from maskdiff.models import build_model
from maskdiff.scaling.family import member
from maskdiff.scaling.fit import Point, collect_runs, fit_study
from maskdiff.scaling.plan import load_plan, plan_isoflops, write_plan
from maskdiff.scaling.runner import RECORD, run_commands, run_plan, write_record
from maskdiff.tokenizer import CharTokenizer

BUDGETS = [1e12, 3e12, 1e13, 3e13, 1e14]


def isoflop_points(family: str, k_n: float, b_n: float, k_l: float, b_l: float, noise: float, seed: int, budgets=BUDGETS) -> list[Point]:
    """Synthetic IsoFLOP data with known laws: at budget C the loss is L*(C) + 0.08 ln(N / N*(C))^2 + noise,
    with N*(C) = k_n C^b_n and L*(C) = k_l C^b_l; 7 sizes from N*/5 to 5 N*, off-centre by a random factor."""
    rng = np.random.default_rng(seed)
    points = []
    for c in budgets:
        n_opt, l_opt = k_n * c**b_n, k_l * c**b_l
        shift = math.exp(rng.uniform(-0.3, 0.3))  # the grid is not centred on the optimum
        for f in np.geomspace(1 / 5, 5, 7) * shift:
            points.append(Point(family, c, int(n_opt * f), l_opt + 0.08 * math.log(f) ** 2 + rng.normal(0, noise)))
    return points


def test_fit_recovers_known_exponents_and_optima_from_noisy_isoflop_data():
    mdm = isoflop_points("mdm", 0.1, 0.48, 40.0, -0.05, noise=0.01, seed=1)
    ar = isoflop_points("ar", 0.08, 0.52, 30.0, -0.05, noise=0.01, seed=2)
    study = fit_study(mdm + ar, draws=200)
    for name, (k_n, b_n, k_l) in {"mdm": (0.1, 0.48, 40.0), "ar": (0.08, 0.52, 30.0)}.items():
        fit = study.families[name]
        assert fit.n_opt.exponent == pytest.approx(b_n, rel=0.05)
        assert fit.loss_opt.exponent == pytest.approx(-0.05, rel=0.05)
        assert fit.n_opt.exponent_stderr > 0 and fit.n_opt.exponent_bootstrap > 0
        lo, hi = fit.n_opt.exponent_interval
        assert lo < fit.n_opt.exponent < hi
        for parabola in fit.parabolas:  # the right optimum at every budget
            assert parabola.n_opt == pytest.approx(k_n * parabola.budget**b_n, rel=0.15)
            assert parabola.loss_opt == pytest.approx(k_l * parabola.budget**-0.05, abs=0.02)
            assert parabola.tokens_opt == pytest.approx(parabola.budget / (6 * parabola.n_opt))
    # equal slopes: the MDM needs (40 / 30)^(1 / 0.05) = 315x the compute for the ARM's loss, at every budget
    assert len(study.compute_multiple) == len(BUDGETS)
    for m in study.compute_multiple:
        assert m["multiple"] == pytest.approx((40 / 30) ** (1 / 0.05), rel=0.25)
        assert m["interval"][0] < m["multiple"] < m["interval"][1]


def test_fit_recovers_the_optimal_size_exponent_of_a_chinchilla_loss():
    """L(N, D) = E + A / N^a + B / D^b with D = C / 6N has N*(C) proportional to C^(b / (a + b)) exactly."""
    e, a_coef, alpha, b_coef, beta = 1.7, 400.0, 0.34, 410.0, 0.28
    rng = np.random.default_rng(0)
    points = []
    for c in BUDGETS:
        n_opt = (alpha * a_coef / (beta * b_coef)) ** (1 / (alpha + beta)) * (c / 6) ** (beta / (alpha + beta))
        for f in np.geomspace(1 / 4, 4, 7):
            n = n_opt * f
            points.append(Point("ar", c, int(n), e + a_coef / n**alpha + b_coef / (c / (6 * n)) ** beta + rng.normal(0, 0.002)))
    fit = fit_study(points, draws=0).families["ar"]
    assert fit.n_opt.exponent == pytest.approx(beta / (alpha + beta), rel=0.05)
    assert fit.n_opt.exponent_bootstrap is None  # no bootstrap asked


def test_fit_refuses_too_few_sizes_and_curves_without_a_valley():
    points = isoflop_points("mdm", 0.1, 0.5, 40.0, -0.05, noise=0.0, seed=0, budgets=[1e12, 1e13])
    two_sizes = [p for p in points if p.budget == 1e12][:2] + [p for p in points if p.budget == 1e13]
    with pytest.raises(MaskdiffError, match=r"budget 1e\+12 \(mdm\) has runs of 2 sizes; a parabola needs at least 3"):
        fit_study(two_sizes)
    # straight (a ~ 0 from rounding) or bending down: no minimum; the budget is kept, out of the power laws
    for curve in (lambda x: 5 - x, lambda x: 5 - x - 0.01 * x**2):
        falling = [Point("mdm", 1e12, n, curve(math.log(n))) for n in (1000, 2000, 4000, 8000)]
        study = fit_study(falling + [p for p in points if p.budget == 1e13])
        parabola = study.families["mdm"].parabolas[0]
        assert parabola.n_opt is None and "do not curve upwards" in parabola.problem and "add larger sizes" in parabola.problem
        assert study.families["mdm"].n_opt is None and any("left out of the power laws" in note for note in study.notes)
    single = fit_study([p for p in points if p.budget == 1e12])  # one budget: the parabola, no power law
    assert single.families["mdm"].n_opt is None and len(single.families["mdm"].parabolas) == 1


# ------------------------------------------------------------------ plans
def independent_count(cfg, vocab_size: int) -> int:
    """N counted directly: every parameter of the built model except its input embedding."""
    model = build_model(cfg, vocab_size)
    return sum(p.numel() for name, p in model.named_parameters() if not name.endswith("denoiser.embed.weight"))


def test_plan_spends_every_budget_within_one_percent(corpus_file, tmp_path, capsys):
    budgets = [1e12, 3e12, 1e13]
    plan = plan_isoflops("mdm", budgets, data=str(corpus_file))
    vocab = CharTokenizer.from_text(corpus_file.read_text()).vocab_size
    assert plan.data["vocab_size"] == vocab and plan.data["description"] == str(corpus_file)
    assert "C = 6 N D" in plan.flops_formula and "n_layers = 1 + floor(i/2)" in plan.size_family
    for budget in budgets:
        runs = [r for r in plan.runs if r.budget == budget]
        assert len(runs) == 5 and len({r.params for r in runs}) == 5
        optimum = math.sqrt(budget / 120)
        assert min(r.params for r in runs) < optimum < max(r.params for r in runs)  # spread around the expected optimum
        for r in runs:
            cfg = plan.run_config(r)
            shape = member(r.member)
            assert (cfg.model.n_layers, cfg.model.d_model, cfg.model.n_heads) == (shape.n_layers, shape.d_model, shape.d_model // 32)
            n = independent_count(cfg, vocab)
            tokens = cfg.train.steps * cfg.train.batch_size * cfg.data.seq_len
            assert n == r.params and tokens == r.tokens and cfg.train.steps >= 100
            assert abs(6 * n * tokens - budget) / budget < 0.01
    # the CLI writes the same plan, states the formula, and accepts its own plan again
    out = tmp_path / "plan.json"
    argv = ["scaling", "plan", "--budgets", "1e12,3e12,1e13", "--family", "mdm", "--data", str(corpus_file), "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "C = 6 N D" in printed and "member i = 0, 1, 2" in printed and "mdm-C3e12-" in printed
    assert load_plan(out).to_dict() == plan.to_dict()
    assert main(argv) == 0
    # the autoregressive family has the same shapes, made causal
    ar = plan_isoflops("ar", budgets, data=str(corpus_file))
    assert [(r.n_layers, r.d_model, r.steps) for r in ar.runs] == [(r.n_layers, r.d_model, r.steps) for r in plan.runs]
    assert ar.run_config(ar.runs[0]).model.causal and ar.run_config(ar.runs[0]).objective.name == "ar"


def one_line_error(capsys, argv: list[str], message: str) -> None:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err, (argv, err)


def test_bad_plans_are_one_line_errors(corpus_file, tmp_path, capsys):
    base = ["scaling", "plan", "--family", "mdm", "--data", str(corpus_file), "--out", str(tmp_path / "p.json")]
    one_line_error(capsys, [*base, "--budgets", "1e9"], "too small for the smallest model of the family")
    one_line_error(capsys, [*base, "--budgets", "1e11"], "a parabola needs 3")
    one_line_error(capsys, [*base, "--budgets", "lots"], "comma-separated FLOP counts")
    one_line_error(capsys, [*base, "--budgets=-1e12"], "positive FLOP counts")
    one_line_error(capsys, [*base, "--budgets", "1e12", "--set", "model.n_layers=3"], "drop model.n_layers=3")
    one_line_error(capsys, [*base, "--budgets", "1e12", "--sizes", "2"], "--sizes must be between 3 and 9")
    assert not (tmp_path / "p.json").exists()
    (tmp_path / "p.json").write_text("{}")
    one_line_error(capsys, [*base, "--budgets", "1e12"], "already exists and holds something else")
    one_line_error(capsys, ["scaling", "run", str(tmp_path / "p.json")], "is not a scaling plan")
    one_line_error(capsys, ["scaling", "run", str(tmp_path / "missing.json")], "does not exist")


# ------------------------------------------------------------------ running a plan
SMALL = ["data.seq_len=16", "train.batch_size=2", "train.precision=fp32", "train.log_every=5"]


@pytest.fixture(scope="module")
def trained_plan(tmp_path_factory):
    """A three-size plan at one tiny budget, trained to the end (a few seconds)."""
    folder = tmp_path_factory.mktemp("scaling")
    corpus = folder / "corpus.txt"
    corpus.write_text(make_corpus(), encoding="utf-8")
    plan = plan_isoflops("mdm", [1.5e9], data=str(corpus), overrides=SMALL, sizes=3, min_steps=50)
    write_plan(plan, folder / "plan.json")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # models this small only wait for a second thread, the more so on a busy machine
    try:
        outcomes = run_plan(plan, folder / "runs", progress=False)
        assert [o.status for o in outcomes] == ["new"] * 3
        yield plan, folder
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_run_skips_finished_runs_and_resumes_a_stopped_one(trained_plan):
    plan, folder = trained_plan
    root = folder / "runs"
    first = plan.runs[0]
    final_before = (root / first.name / "metrics.csv").read_text()
    others = {r.name: (root / r.name / "metrics.csv").stat().st_mtime_ns for r in plan.runs[1:]}
    kept = sorted((root / first.name / CHECKPOINTS).glob("step-*"))[0]
    lose_checkpoints_after(root / first.name, int(kept.name.split("-")[1]))  # as if it had been killed there
    seen = []
    outcomes = run_plan(plan, root, progress=False, on_start=lambda run, run_dir, status: seen.append((run.name, status)))
    assert seen == [(first.name, "stopped")] + [(name, "finished") for name in others]
    assert outcomes[0].result is not None and all(o.result is None for o in outcomes[1:])
    assert {name: (root / name / "metrics.csv").stat().st_mtime_ns for name in others} == others  # untouched
    # the resumed run ends exactly where the uninterrupted one did
    assert (root / first.name / "metrics.csv").read_text().splitlines()[-1] == final_before.splitlines()[-1]
    points, identity = collect_runs([root])
    assert identity == plan.data and len(points) == 3
    for point, run in zip(sorted(points, key=lambda p: p.params), plan.runs):
        assert point.params == run.params and point.tokens == run.tokens and point.budget == 1.5e9 and point.family == "mdm"
        assert abs(6 * point.params * point.tokens - 1.5e9) / 1.5e9 < 0.01 and 0 < point.loss < 10


@pytest.mark.slow
def test_printed_commands_are_the_plans_runs(trained_plan, capsys):
    plan, folder = trained_plan
    root = folder / "runs"
    assert main(["scaling", "run", str(folder / "plan.json"), "--root", str(root), "--print", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(plan.runs)
    for line, run in zip(lines, plan.runs):
        argv = shlex.split(line)
        assert argv[:4] == ["maskdiff", "train", "--preset", "tiny"] and f"train.steps={run.steps}" in argv
        assert argv[argv.index("--out") + 1] == str(root / run.name) and "--resume" in argv and argv[argv.index("--resume") + 1] == "auto"
        assert main(argv[1:]) == 0  # the same config as the run's own: a finished run has nothing to do
        assert "nothing to do" in capsys.readouterr().out
    torchrun = run_commands(plan, root, launcher="torchrun")
    assert all(shlex.split(line)[:6] == ["torchrun", "--standalone", "--nproc_per_node", "1", "-m", "maskdiff"] for line in torchrun)


@pytest.mark.slow
def test_fit_of_real_runs_refuses_unfinished_runs_and_mixed_corpora(trained_plan, tmp_path, capsys):
    plan, folder = trained_plan
    root = folder / "runs"
    # a planned run that never trained
    fresh = plan_isoflops("mdm", [1.5e9], data=plan.data["path"], overrides=SMALL, sizes=3, min_steps=50)
    write_record(fresh, fresh.runs[0], tmp_path / "pending")
    one_line_error(capsys, ["scaling", "fit", str(root), str(tmp_path / "pending"), "--out", str(tmp_path / "fit")], "is not finished")
    # the same run claimed for another corpus
    other = tmp_path / "other"
    shutil.copytree(root / plan.runs[0].name, other)
    record = json.loads((other / RECORD).read_text())
    record["data"] = {**record["data"], "description": "other.txt", "fingerprint": "0123456789abcdef"}
    (other / RECORD).write_text(json.dumps(record))
    one_line_error(capsys, ["scaling", "fit", str(root), str(other), "--out", str(tmp_path / "fit")], "runs from different corpora")
    one_line_error(capsys, ["scaling", "fit", str(root / plan.runs[0].name), "--out", str(tmp_path / "fit")], "a parabola needs at least 3")
    assert not (tmp_path / "fit").exists()


def fake_study(tmp_path: Path, corpus: Path, family: str, k_l: float) -> Path:
    """Run folders of a planned study with synthetic final losses (L*(C) = k_l C^-0.05, N*(C) = 0.1 C^0.5),
    written the way `maskdiff scaling run` and the trainer write them."""
    plan = plan_isoflops(family, [1e12, 3e12, 1e13], data=str(corpus), sizes=5)
    root = tmp_path / family
    tokenizer = CharTokenizer.from_text(corpus.read_text())
    for run in plan.runs:
        run_dir = root / run.name
        write_record(plan, run, run_dir)
        plan.run_config(run).save(run_dir / "config.json")
        tokenizer.save(run_dir / "tokenizer.json")
        (run_dir / CHECKPOINTS / checkpoint_name(run.steps)).mkdir(parents=True)
        loss = k_l * run.budget**-0.05 + 0.08 * math.log(run.params / (0.1 * run.budget**0.5)) ** 2
        (run_dir / "metrics.csv").write_text(
            "step,tokens,lr,train_loss,train_bits,grad_norm,tokens_per_s,skipped_steps,valid_bits\n"
            f"{run.steps},{run.tokens},0.0001,1,1,1,1,0,\n{run.steps},,,,,,,,{loss:.6g}\n"
        )
    return root


def test_fit_command_writes_every_number_and_the_plot(corpus_file, tmp_path, capsys):
    mdm, ar = fake_study(tmp_path, corpus_file, "mdm", 40.0), fake_study(tmp_path, corpus_file, "ar", 30.0)
    out = tmp_path / "fit"
    assert main(["scaling", "fit", str(mdm), str(ar), "--out", str(out), "--bootstrap", "100"]) == 0
    printed = capsys.readouterr().out
    assert "C = 6 N D" in printed and "N*(C) =" in printed and "compute multiple at C=3e12" in printed
    fit = json.loads((out / "fit.json").read_text())
    assert set(fit["families"]) == {"mdm", "ar"} and fit["data"]["description"] == str(corpus_file)
    for family in fit["families"].values():
        assert family["n_opt"]["exponent"] == pytest.approx(0.5, rel=0.05)
        assert family["loss_opt"]["exponent"] == pytest.approx(-0.05, rel=0.05)
        assert [p["budget"] for p in family["parabolas"]] == [1e12, 3e12, 1e13] and all(len(p["points"]) == 5 for p in family["parabolas"])
    assert [m["multiple"] for m in fit["compute_multiple"]] == pytest.approx([(40 / 30) ** 20] * 3, rel=0.05)
    from PIL import Image

    with Image.open(out / "isoflops.png") as png:
        assert png.size[0] > 1000 and png.size[1] > 300
    # a run whose metrics say it trained on other than its planned tokens (e.g. under more processes) is refused
    run_dir = sorted(mdm.iterdir())[0]
    metrics = (run_dir / "metrics.csv").read_text().splitlines()
    steps, tokens = metrics[1].split(",")[:2]
    metrics[1] = metrics[1].replace(f"{steps},{tokens},", f"{steps},{2 * int(tokens)},", 1)
    (run_dir / "metrics.csv").write_text("\n".join(metrics) + "\n")
    one_line_error(capsys, ["scaling", "fit", str(mdm), "--out", str(tmp_path / "fit2")], "not its budget")


def test_every_scaling_and_bench_step_has_help(capsys):
    for argv in (["scaling"], ["scaling", "plan"], ["scaling", "run"], ["scaling", "fit"], ["bench"], ["bench", "generate"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--help"])
        assert exit_info.value.code == 0 and "--" in capsys.readouterr().out


def test_no_compute_multiple_when_the_mdm_does_not_improve_with_compute():
    flat = isoflop_points("mdm", 0.1, 0.5, 4.0, 0.01, noise=0.0, seed=0, budgets=[1e12, 1e13, 1e14])  # L* rises with C
    study = fit_study(flat + isoflop_points("ar", 0.1, 0.5, 30.0, -0.05, noise=0.0, seed=0, budgets=[1e12, 1e13, 1e14]), draws=0)
    assert [m["multiple"] for m in study.compute_multiple] == [None] * 3
    assert any("does not fall with compute" in note for note in study.notes)

"""The LLE in the harness: the eval metric, the run record, the tables, the plot, `seqpar predictability`."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from seqpar.analysis import compare as cmp
from seqpar.analysis.plots import plot_records
from seqpar.analysis.report import results_table
from seqpar.cli import app
from seqpar.records.reader import read_metrics
from seqpar.spec import SpecError, validate_spec
from seqpar.train.runner import run_experiment

runner = CliRunner()


@pytest.fixture(scope="module")
def lle_run(tmp_path_factory):
    from conftest import TINY

    spec = json.loads(json.dumps(TINY))
    spec["task"]["val_sequences"] = 8
    spec["train"].update(steps=4, eval_every=2, lle_sequences=4)
    spec["methods"] = [
        {"type": "bptt", "optimizer": {"type": "adam", "lr": 1e-2}},
        {"type": "deer", "jacobian": "diagonal", "optimizer": {"type": "adam", "lr": 1e-2}},
        {"type": "parallel", "optimizer": {"type": "adam", "lr": 1e-2}},
        {"type": "memoryless", "optimizer": {"type": "adam", "lr": 1e-2}},
    ]
    run_dir = tmp_path_factory.mktemp("lle") / "run"
    summary = run_experiment(validate_spec(spec), run_dir)
    return run_dir, summary


def test_every_evaluation_of_a_recurrence_records_its_lle(lle_run):
    run_dir, summary = lle_run
    evals = [ln for ln in read_metrics(run_dir) if "rollout_loss_test" in ln]
    by_method: dict[str, list[dict]] = {}
    for ln in evals:
        by_method.setdefault(ln["method"], []).append(ln)
    for label in ("bptt", "deer", "parallel"):
        assert [ln["step"] for ln in by_method[label]] == [0, 2, 4]
        assert all(math.isfinite(ln["lle"]) for ln in by_method[label])
    # One initial model and one key for the tangent vectors: every method starts at the same LLE.
    assert by_method["bptt"][0]["lle"] == by_method["deer"][0]["lle"] == by_method["parallel"][0]["lle"]
    assert by_method["bptt"][-1]["lle"] != by_method["bptt"][0]["lle"]  # training moves it
    # A model whose rollout cuts the recurrence has no exponent.
    assert all("lle" not in ln for ln in by_method["memoryless"])
    runs = {r["label"]: r for r in summary["runs"]}
    assert runs["bptt"]["final"]["lle"] == by_method["bptt"][-1]["lle"]
    assert runs["memoryless"]["final"]["lle"] is None


def test_results_table_and_compare_show_the_lle(lle_run):
    run_dir, summary = lle_run
    table = results_table(summary)
    headers = [c.header for c in table.columns]
    col = list(table.columns)[headers.index("LLE")]
    lle = summary["runs"][0]["final"]["lle"]
    assert list(col.cells)[0] == f"{lle:.3f}" and list(col.cells)[3] == "—"  # bptt; memoryless has none
    rows, keys, _ = cmp.compare([run_dir])
    assert {r["method"]: r["lle"] for r in rows}["bptt"] == pytest.approx(lle)
    md = cmp.markdown(rows, keys)
    assert "| LLE | status |" in md.splitlines()[0]
    res = runner.invoke(app, ["compare", str(run_dir), "--metric", "lle", "--format", "json"])
    assert res.exit_code == 0, res.output
    assert {r["method"]: r["mean"] for r in json.loads(res.stdout)}["deer"] == pytest.approx(summary["runs"][1]["final"]["lle"])


def test_plot_draws_the_solvers_against_the_lle(lle_run, tmp_path):
    run_dir, _ = lle_run
    files, _ = plot_records([run_dir], tmp_path / "figs")
    fig = tmp_path / "figs" / "lle_vs_parallel.png"
    assert fig in files and fig.stat().st_size > 10_000


def test_lle_sequences_must_be_a_count():
    from conftest import TINY

    spec = json.loads(json.dumps(TINY))
    spec["train"]["lle_sequences"] = -1
    with pytest.raises(SpecError, match="train.lle_sequences"):
        validate_spec(spec)


def test_lle_sequences_zero_measures_nothing():
    import jax
    from conftest import TINY

    from seqpar.train.loop import build_experiment, init_state, make_eval

    spec = validate_spec({**json.loads(json.dumps(TINY)), "methods": [TINY["methods"][0]]})
    exp = build_experiment(spec)
    method = spec.methods[0].build(exp.model, exp.task)
    state = init_state(exp, method)
    key = jax.random.key(0)
    assert "lle" not in make_eval(method, exp.model, exp.task, key, 0)(state, exp.train, exp.val, exp.test)
    assert "lle" in make_eval(method, exp.model, exp.task, key, 2)(state, exp.train, exp.val, exp.test)


def test_the_runs_lle_skips_a_burn_in_and_states_its_standard_error():
    """The evaluation's `lle` is the mean over the sequences' estimates with the first quarter of each
    rollout run but not counted (or `train.lle_burn_in` steps); `lle_stderr` is the standard error
    over the sequences, computed here from the per-sequence estimates independently."""
    import jax
    import numpy as np
    from conftest import TINY

    from seqpar.model.lle import model_lle, model_lle_estimates
    from seqpar.train.loop import build_experiment, init_state, make_eval

    spec = validate_spec({**json.loads(json.dumps(TINY)), "methods": [TINY["methods"][0]]})
    exp = build_experiment(spec)
    method = spec.methods[0].build(exp.model, exp.task)
    state = init_state(exp, method)
    params, key, x = method.params(state), jax.random.key(0), exp.val.x[:4]
    length = x.shape[1]
    for given, discard in ((None, length // 4), (3, 3)):
        out = make_eval(method, exp.model, exp.task, key, 4, given)(state, exp.train, exp.val, exp.test)
        per = np.asarray(model_lle_estimates(exp.model, params, x, key, discard=discard)).mean(axis=1)
        assert float(out["lle"]) == pytest.approx(float(model_lle(exp.model, params, x, key, discard=discard)), abs=1e-6)
        assert float(out["lle_stderr"]) == pytest.approx(np.std(per, ddof=1) / math.sqrt(len(per)), rel=1e-4)
    assert float(out["lle"]) != pytest.approx(float(model_lle(exp.model, params, x, key, discard=0)), abs=1e-7)


def test_predictability_command_smoke(tmp_path):
    """The gain sweep at toy size: a point per (solver, gain, draw, length); a contracting gain
    converges within T and has a negative LLE, an expanding one a positive LLE; a converged
    DEER solve's adjoint gradient is BPTT's."""
    out = tmp_path / "pred"
    args = ["predictability", "--gains", "0.5,3", "--hidden", "8", "--lengths", "24", "--sequences", "1", "--dtype", "float32"]
    args += ["--solvers", "deer,quasi-deer,elk", "--burn-in", "4", "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["predictability.json"]
    result = json.loads((out / "predictability.json").read_text())
    points = result["points"]
    assert len(points) == 3 * 2  # solvers x gains at one length and one draw
    assert {k for p in points for k in p} >= {"solver", "gain", "length", "iterations", "lle", "lle_spread", "converged"}
    for p in points:
        assert p["iterations"] <= p["length"] and p["cap"] == p["length"]  # the paper's cap: T
    deer = {p["gain"]: p for p in points if p["solver"] == "deer"}
    assert deer[0.5]["lle"] < 0 < deer[3.0]["lle"]
    assert deer[0.5]["converged"] and deer[0.5]["grad_cos"] > 1 - 1e-4
    bad = runner.invoke(app, ["predictability", "--lengths", "0", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "--lengths" in bad.stderr and not (tmp_path / "bad").exists()
    bad = runner.invoke(app, ["predictability", "--solvers", "newton", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "--solvers: 'newton' is not one of deer, quasi-deer, elk" in bad.stderr

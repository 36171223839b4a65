"""Newton under faults, through the CLI: every row hitting `max_iters` for every step is counted in
the record, a solve that overflows ends the method `diverged` (a result, exit 0) naming the step,
and a method that diverges mid-run keeps the checkpoint before it."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from seqpar.cli import app
from seqpar.records.layout import METRICS, SUMMARY

runner = CliRunner()


def _deer(tiny_spec, **method) -> dict:
    tiny_spec["task"]["length"] = 16
    tiny_spec["train"].update(steps=6, eval_every=3, checkpoint_every=2)
    tiny_spec["methods"] = [{"type": "deer", "optimizer": {"type": "adam", "lr": 1e-2}, **method}]
    return tiny_spec


def _lines(out) -> list[dict]:
    return [json.loads(x) for x in (out / METRICS).read_text().splitlines()]


def test_every_row_at_max_iters_on_every_step_is_counted_not_silent(tiny_spec, write_spec, tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", str(write_spec(_deer(tiny_spec, max_iters=1, tol=1e-9))), "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    record = json.loads((out / SUMMARY).read_text())["runs"][0]
    assert record["status"] == "completed"
    last = [x for x in _lines(out) if "train_newton_hit_max_total" in x][-1]
    batch, steps = tiny_spec["train"]["batch_size"], tiny_spec["train"]["steps"]
    assert last["step"] == steps and last["train_newton_hit_max_total"] == batch * steps  # every row, every step
    assert last["train_newton_hit_max"] == batch


def test_an_overflowing_solve_falls_back_to_bptts_gradient_and_is_counted(tiny_spec, write_spec, tmp_path):
    """The default (`unconverged: bptt`): a solve that overflows is never applied; the step takes
    BPTT's gradient, counts the non-finite rows and the fallback, and the method completes."""
    spec = _deer(tiny_spec, max_iters=128, jacobian="diagonal")
    spec["task"]["length"] = 64
    spec["model"]["cell"] = {"type": "elman", "recurrent_scale": 8.0}
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", str(write_spec(spec)), "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    record = json.loads((out / SUMMARY).read_text())["runs"][0]
    assert record["status"] == "completed"
    train = [x for x in _lines(out) if "train_newton_fallback_total" in x]
    assert train[-1]["train_newton_fallback_total"] == spec["train"]["steps"]  # every step fell back
    assert all(x["train_newton_nonfinite"] > 0 for x in train) and all(np.isfinite(x["train_objective"]) for x in train)
    assert "fell back to BPTT's gradient" in res.stdout + res.stderr


def test_a_solve_that_overflows_is_diverged_naming_the_step(tiny_spec, write_spec, tmp_path):
    """`unconverged: apply`: the adjoint at the overflowed iterate is applied, so the method diverges."""
    spec = _deer(tiny_spec, max_iters=128, jacobian="diagonal", unconverged="apply")
    spec["task"]["length"] = 64
    spec["model"]["cell"] = {"type": "elman", "recurrent_scale": 8.0}  # J_t of norm ~8: plain Newton's products overflow float32
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", str(write_spec(spec)), "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output  # divergence is a result, not a crash
    record = json.loads((out / SUMMARY).read_text())["runs"][0]
    assert record["status"] == "diverged" and record["diverged_at_step"] == 1
    assert record["error"] == "non-finite training metric at step 1" and "diverged deer: non-finite training metric at step 1" in res.stderr
    # Only how states are solved may change on resume; (quasi-)ELK's damping makes the same training
    # finish. (A damping that does not converge within max_iters is no remedy: the best iterate is
    # then returned, and the adjoint through its expanding Jacobians overflows in turn.)
    res = runner.invoke(app, ["run", "--resume", str(out), "--set", "model.hidden=4"])
    assert res.exit_code == 2, res.output
    settable = "methods.0.damping, methods.0.max_iters, methods.0.tol, methods.0.unconverged"
    assert f"may change only how states are solved ({settable})" in res.stderr
    res = runner.invoke(app, ["run", "--resume", str(out), "--set", "methods.0.damping=0.01", "--quiet"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["runs"][0]["status"] == "completed" and summary["resumes"][-1]["set"] == {"deer": {"damping": 0.01}}
    assert summary["spec"]["methods"][0]["damping"] == 0.01  # recorded: a later --resume continues with it


def test_a_method_diverging_mid_run_keeps_the_checkpoint_before_it(tmp_path, write_spec):
    """One training row's target is 3e38: its squared error overflows float32 at the first step that draws it."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8, 1)).astype(np.float32)
    y = rng.normal(size=(40,)).astype(np.float32)
    y[7] = 3e38
    np.savez(tmp_path / "d.npz", x=x, y=y, x_val=x[:8], y_val=y[:8] * 0, x_test=x[:8], y_test=y[:8] * 0)
    spec = {
        "name": "fault",
        "task": {"type": "dataset", "path": str(tmp_path / "d.npz")},
        "model": {"cell": "gru", "hidden": 8},
        "train": {"steps": 40, "batch_size": 4, "eval_every": 40, "checkpoint_every": 1, "baseline_trained": False},
        "methods": [{"type": "deer", "optimizer": {"type": "adam", "lr": 1e-2}}],
    }
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", str(write_spec(spec)), "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    record = json.loads((out / SUMMARY).read_text())["runs"][0]
    k = record["diverged_at_step"]
    assert record["status"] == "diverged" and k > 1, record
    ckpts = sorted((out / "checkpoints").glob("*/ckpt-*.npz"))
    assert ckpts and int(ckpts[-1].stem.split("-")[1]) == k - 1  # the last one before the non-finite step, kept
    res = runner.invoke(app, ["run", "--resume", str(out), "--quiet"])  # diverged is final: the record stays as it is
    assert res.exit_code == 0 and json.loads((out / SUMMARY).read_text())["runs"][0]["diverged_at_step"] == k
    # With a solver setting changed, it continues from that checkpoint (and meets the same bad row at step k).
    res = runner.invoke(app, ["run", "--resume", str(out), "--set", "methods.0.damping=0.5", "--quiet"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["resumes"][-1]["from_step"] == {"deer": k - 1} and summary["runs"][0]["diverged_at_step"] == k
    steps = [x["step"] for x in _lines(out)]
    assert len(steps) == len(set(steps))  # no line logged twice

"""The cost figures on hand-made records: Pareto points where the records put them, the lag slope."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from seqpar.analysis.cost_plots import cost_point, depth_cost, lag_slope, plot_costs, seconds_cost
from seqpar.cli import app
from seqpar.records.reader import load, results

# steps to target = SLOPE[label] * lag + 10; "parallel" never reaches it at lag 8
SLOPE = {"bptt": 30.0, "parallel": 5.0}


def write_run(root: Path, lag: int, seed: int) -> Path:
    d = root / f"lag{lag}-s{seed}"
    d.mkdir(parents=True)
    records, lines = [], []
    for label, depth, ms in (("bptt", 64.0, 4.0), ("parallel", 2.0, 1.0)):
        reached = not (label == "parallel" and lag == 8)
        steps = SLOPE[label] * lag + 10 + seed  # seed noise: +0 / +1, the same at every lag
        loss = 0.05 * lag + 0.01 * seed
        records.append(
            {
                "method": label,
                "label": label,
                "status": "completed",
                "final": {"rollout_loss_test": loss, "rollout_loss_val": loss},
                "baseline_loss": 1.386,
                "steps_done": 400,
                "steps_to_target": steps if reached else None,
                "seconds_to_target": steps * ms / 1e3 if reached else None,
                "step_time_ms": ms,
                "sequential_depth": depth,
                "diagnostics": {},
            }
        )
        lines += [{"method": label, "step": s, "wall_s": s * ms / 1e3, "rollout_loss_test": loss + 1 / (1 + s)} for s in (0, 200, 400)]
    spec = {
        "name": "lags",
        "seed": seed,
        "task": {"type": "delayed_recall", "length": 32, "lag": lag, "vocab": 4},
        "train": {"steps": 400, "batch_size": 8, "target_loss": 0.5},
        "methods": [{"type": "bptt"}, {"type": "parallel"}],
    }
    summary = {"name": "lags", "seed": seed, "status": "completed", "spec": spec, "runs": records, "task": {"loss": "cross-entropy"}}
    (d / "summary.json").write_text(json.dumps(summary))
    (d / "spec.yaml").write_text("name: lags\n")
    (d / "metrics.jsonl").write_text("".join(json.dumps(ln) + "\n" for ln in lines))
    return d


@pytest.fixture
def lag_runs(tmp_path):
    for lag in (1, 2, 4, 8):
        for seed in (0, 1):
            write_run(tmp_path / "runs", lag, seed)
    return tmp_path / "runs"


def test_lag_slope_is_least_squares():
    assert lag_slope([(1, 40), (2, 70), (4, 130), (4, 131)]) == pytest.approx(30.0, rel=0.01)
    assert lag_slope([(1.0, 10.0), (3.0, 16.0)]) == pytest.approx(3.0)
    assert lag_slope([(2.0, 5.0), (2.0, 9.0)]) is None  # one lag: no slope


def test_pareto_points_are_the_records_costs(lag_runs):
    rs = results(load([lag_runs]).runs)
    for r in rs:
        lag, steps = r.settings["task.lag"], r.record["steps_to_target"]
        if steps is None:  # not reached: the whole run's cost, flagged
            assert cost_point(r, seconds_cost) == (pytest.approx(1.0 / 1e3 * 400), False)
            assert r.label == "parallel" and lag == 8
        else:
            ms, depth = r.record["step_time_ms"], r.record["sequential_depth"]
            assert cost_point(r, seconds_cost) == (pytest.approx(ms / 1e3 * steps), True)
            assert cost_point(r, depth_cost) == (pytest.approx(depth * steps), True)


def test_cost_figures_are_written(lag_runs, tmp_path):
    names = {p.name for p in plot_costs([lag_runs], tmp_path / "figs")}
    assert names == {"pareto_seconds.png", "pareto_depth.png", "steps_vs_lag.png"}


def test_no_lag_figure_without_a_lag_sweep(lag_runs, tmp_path):
    one_lag = [d for d in lag_runs.iterdir() if d.name.startswith("lag2-")]
    res = CliRunner().invoke(app, ["plot", *map(str, one_lag), "--out", str(tmp_path / "figs")])
    assert res.exit_code == 0, res.output
    names = {p.name for p in (tmp_path / "figs").iterdir()}
    assert {"pareto_seconds.png", "pareto_depth.png", "rollout_vs_seconds.png"} <= names and "steps_vs_lag.png" not in names

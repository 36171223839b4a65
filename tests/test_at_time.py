"""`seqpar compare --at-seconds / --at-step` against the same numbers read by hand from metrics.jsonl."""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

import pytest
from typer.testing import CliRunner

from seqpar.cli import app

runner = CliRunner()


def write_run(root: Path, seed: int, seconds_per_eval: dict[str, float], evals: int, rng: random.Random) -> Path:
    """A run directory with two methods evaluated every 10 steps, each at its own pace in seconds."""
    d = root / f"seed{seed}"
    d.mkdir(parents=True)
    records, lines = [], []
    for label, pace in seconds_per_eval.items():
        n = evals if label == "bptt" else evals - seed  # later seeds of "parallel" end sooner: short of a budget
        method_lines = []
        for i in range(n):
            loss = 2.0 / (1 + i) + rng.random() * 0.1
            line = {"method": label, "step": 10 * i, "wall_s": round(i * pace * (1 + 0.1 * seed), 6)}
            line.update(rollout_loss_test=loss, rollout_loss_val=loss + 0.01, rollout_loss_train=loss, objective=loss)
            method_lines.append(line)
            if i:  # a log-only line between evaluations: not an evaluation
                lines.append({"method": label, "step": 10 * i - 5, "wall_s": line["wall_s"] - pace / 2, "train_objective": loss})
            lines.append(line)
        last = method_lines[-1]
        hit = next((ln for ln in method_lines if ln["rollout_loss_val"] <= 0.5), None)
        records.append(
            {
                "method": label,
                "label": label,
                "status": "completed",
                "final": {k: last[k] for k in ("rollout_loss_test", "rollout_loss_val", "rollout_loss_train", "objective")},
                "baseline_loss": 1.386,
                "steps_done": last["step"],
                "wall_s": last["wall_s"],
                "steps_to_target": None if hit is None else hit["step"],
                "seconds_to_target": None if hit is None else hit["wall_s"],
                "step_time_ms": pace * 100,
                "diagnostics": {},
            }
        )
    spec = {
        "name": "hand",
        "seed": seed,
        "task": {"type": "delayed_recall", "length": 8, "lag": 2, "vocab": 4},
        "train": {"steps": 10 * evals, "batch_size": 8, "eval_every": 10, "target_loss": 0.5},
        "methods": [{"type": "bptt"}, {"type": "parallel"}],
    }
    summary = {"name": "hand", "seed": seed, "status": "completed", "spec": spec, "runs": records, "task": {"loss": "cross-entropy"}}
    (d / "summary.json").write_text(json.dumps(summary))
    (d / "spec.yaml").write_text("name: hand\n")
    (d / "metrics.jsonl").write_text("".join(json.dumps(ln) + "\n" for ln in lines))
    return d


def by_hand(root: Path, label: str, field: str, limit: float, metric: str) -> tuple[float, list[bool]]:
    """Mean over seeds of `metric` at each run's last evaluation with `field` <= limit, and who reached the limit."""
    vals, reached = [], []
    for d in sorted(root.iterdir()):
        evals = [json.loads(s) for s in (d / "metrics.jsonl").read_text().splitlines()]
        evals = [e for e in evals if e["method"] == label and "rollout_loss_test" in e]
        vals.append([e for e in evals if e[field] <= limit][-1][metric])
        reached.append(evals[-1][field] >= limit)
    return statistics.fmean(vals), reached


@pytest.fixture
def runs(tmp_path):
    rng = random.Random(0)
    for seed in range(3):
        write_run(tmp_path / "runs", seed, {"bptt": 1.0, "parallel": 0.3}, evals=8, rng=rng)
    return tmp_path / "runs"


def compare_json(*args) -> list[dict]:
    res = runner.invoke(app, ["compare", *map(str, args), "--format", "json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.mark.parametrize("seconds", [0.0, 1.7, 2.5, 4.0, 100.0])
def test_at_seconds_is_what_a_reader_computes_by_hand(runs, seconds):
    rows = compare_json(runs, "--at-seconds", seconds)
    assert {r["method"] for r in rows} == {"bptt", "parallel"}
    for row in rows:
        test, reached = by_hand(runs, row["method"], "wall_s", seconds, "rollout_loss_test")
        val, _ = by_hand(runs, row["method"], "wall_s", seconds, "rollout_loss_val")
        assert row["mean"] == pytest.approx(test, abs=1e-12) and row["val_mean"] == pytest.approx(val, abs=1e-12)
        assert row["n"] == 3  # a run short of the budget is read at its last evaluation, not dropped
        assert row["at"]["reached"] == sum(reached)


def test_at_step_and_short_runs_are_shown(runs):
    rows = compare_json(runs, "--at-step", 60)
    par = next(r for r in rows if r["method"] == "parallel")
    test, reached = by_hand(runs, "parallel", "step", 60, "rollout_loss_test")
    assert par["mean"] == pytest.approx(test, abs=1e-12)
    assert par["at"]["reached"] == sum(reached) == 2 and par["at"]["short_last"] == [50]  # seed 2 ended at step 50
    res = runner.invoke(app, ["compare", str(runs), "--at-step", "60", "--format", "markdown"])
    assert res.exit_code == 0 and "evaluated at ≤ step 60" in res.stdout
    assert "(2/3 reached; the rest ended at 50)" in res.stdout


def test_target_counts_only_within_the_budget(runs):
    (full,) = [r for r in compare_json(runs) if r["method"] == "bptt"]
    (early,) = [r for r in compare_json(runs, "--at-seconds", 1.0) if r["method"] == "bptt"]
    assert full["reached"] == 3 and full["seconds_to_target"] > 1.0
    assert early["reached"] == 0 and early["seconds_to_target"] is None


def test_one_budget_only(runs):
    res = runner.invoke(app, ["compare", str(runs), "--at-seconds", "1", "--at-step", "10"])
    assert res.exit_code == 2 and "one budget" in res.output


def test_a_real_run_read_at_seconds(tmp_path, tiny_spec, write_spec):
    tiny_spec["methods"] = tiny_spec["methods"][:1]
    tiny_spec["train"].update(steps=8, eval_every=1)
    out = tmp_path / "run"
    assert runner.invoke(app, ["run", str(write_spec(tiny_spec)), "--out", str(out), "--quiet"]).exit_code == 0
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [ln for ln in lines if "rollout_loss_test" in ln]
    middle = evals[len(evals) // 2]["wall_s"]  # exactly at an evaluation's clock: that one counts
    (row,) = compare_json(out, "--at-seconds", middle)
    assert row["mean"] == [e for e in evals if e["wall_s"] <= middle][-1]["rollout_loss_test"]
    assert row["at"]["eval_step"] == evals[len(evals) // 2]["step"]


def test_a_run_stopped_by_its_own_budget_reached_it(tmp_path, tiny_spec, write_spec):
    """Stopped by train.max_seconds = S, a run's clock ends a fraction of a step short of S: read
    at S it spent its budget (reached), read at a longer budget it is short."""
    tiny_spec["methods"] = tiny_spec["methods"][:1]
    tiny_spec["train"].update(steps=10**6, eval_every=50, max_seconds=1.0)
    out = tmp_path / "run"
    assert runner.invoke(app, ["run", str(write_spec(tiny_spec)), "--out", str(out), "--quiet"]).exit_code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs"][0]["stop_reason"] == "max_seconds"
    summary["runs"][0]["wall_s"] = 0.97  # as the budget plans it: the next step would have passed 1 s
    (out / "summary.json").write_text(json.dumps(summary))
    (row,) = compare_json(out, "--at-seconds", 1.0)
    assert row["at"]["reached"] == 1
    (row,) = compare_json(out, "--at-seconds", 2.0)
    assert row["at"]["reached"] == 0

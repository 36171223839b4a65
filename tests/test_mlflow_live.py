"""MLflow receives every logged point as the run goes, read back with MLflow's own client, exactly."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from seqpar.cli import app
from seqpar.records.layout import METRICS
from seqpar.track.mlflow import flatten

runner = CliRunner()


def test_every_logged_point_params_and_tags_read_back_with_mlflow_client(tiny_spec, write_spec, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    tiny_spec["methods"][1]["label"] = "table"
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", str(write_spec(tiny_spec)), "--out", str(out), "--tracker", "mlflow", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "mlflow ui --backend-store-uri" in res.output

    lines = [json.loads(x) for x in (out / METRICS).read_text().splitlines()]
    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "tiny"]
    runs = {r.data.tags["method"]: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["bptt", "table"]
    summary = json.loads((out / "summary.json").read_text())
    written = read = 0
    for label, run in runs.items():
        rec = next(r for r in summary["runs"] if r["label"] == label)
        assert run.data.tags["status"] == rec["status"] == "completed"
        assert run.data.tags["method_type"] == rec["method"]
        assert run.info.status == "FINISHED"
        assert run.data.params == flatten(summary["spec"])
        assert run.data.params["methods.1.label"] == "table" and run.data.params["train.steps"] == "6"
        expected: dict[str, list[tuple[int, float]]] = {}
        for line in (x for x in lines if x["method"] == label):
            for key, v in line.items():
                if key not in ("method", "step") and isinstance(v, (int, float)) and math.isfinite(v):
                    expected.setdefault(key, []).append((line["step"], float(v)))
        assert expected["rollout_loss_test"][-1] == (6, rec["final"]["rollout_loss_test"])
        for key, points in expected.items():
            got = [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: (m.step, m.timestamp))]
            assert got == points, key  # exact: the same floats, every step
            written += len(points)
            read += len(got)
        assert set(run.data.metrics) == set(expected)
    assert written == read > 0
    print(f"MLflow points written {written}, read back {read}")


def test_unknown_tracker_and_stray_tracking_uri_exit_2(tiny_spec, write_spec, tmp_path):
    spec = str(write_spec(tiny_spec))
    res = runner.invoke(app, ["run", spec, "--out", str(tmp_path / "a"), "--tracker", "wandb"])
    assert res.exit_code == 2 and res.output.strip() == (
        "error: --tracker wandb: expected one of: tensorboard, mlflow (metrics.jsonl is always written)"
    )
    res = runner.invoke(app, ["run", spec, "--out", str(tmp_path / "b"), "--tracking-uri", "sqlite:///x.db"])
    assert res.exit_code == 2 and "give it with --tracker mlflow" in res.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_flatten_spells_dotted_keys():
    got = flatten({"a": {"b": 1, "c": [1, 2]}, "m": [{"type": "x"}], "n": None})
    assert got == {"a.b": "1", "a.c": "[1, 2]", "m.0.type": "x", "n": "None"}

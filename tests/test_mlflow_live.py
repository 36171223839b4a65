"""MLflow receives every logged point as the run goes, read back with MLflow's own client, exactly."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from seqpar.cli import app
from seqpar.records.layout import METRICS
from seqpar.track.mlflow import flatten

runner = CliRunner()


# Read back in a fresh process, as a user would: no MLFLOW_ALLOW_FILE_STORE, nothing of seqpar's process state.
READ_BACK = """
import json, sys
from mlflow.tracking import MlflowClient
client = MlflowClient(tracking_uri=sys.argv[1])
(experiment,) = [e for e in client.search_experiments() if e.name == "tiny"]
out = {}
for run in client.search_runs([experiment.experiment_id]):
    history = {k: [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, k), key=lambda m: (m.step, m.timestamp))]
               for k in run.data.metrics}
    out[run.data.tags["method"]] = {"tags": run.data.tags, "status": run.info.status, "params": run.data.params, "history": history}
print(json.dumps(out))
"""


def _fresh_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_ALLOW_FILE_STORE"}


def test_every_logged_point_params_and_tags_read_back_with_mlflow_client(tiny_spec, write_spec, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root would be ./mlruns here
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)

    tiny_spec["methods"][1]["label"] = "table"
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", str(write_spec(tiny_spec)), "--out", str(out), "--tracker", "mlflow", "--quiet"])
    assert res.exit_code == 0, res.output
    ui = next(line for line in res.output.splitlines() if "mlflow ui" in line)
    store = ui.split("--backend-store-uri ", 1)[1].strip()
    assert ui.startswith("MLflow (live): mlflow ui --backend-store-uri sqlite:///") and store == f"sqlite:///{out / 'mlflow.db'}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "spec.yaml"]  # nothing written outside the run

    got = subprocess.run([sys.executable, "-c", READ_BACK, store], env=_fresh_env(), capture_output=True, text=True, timeout=300)
    assert got.returncode == 0, got.stderr
    runs = json.loads(got.stdout)
    lines = [json.loads(x) for x in (out / METRICS).read_text().splitlines()]
    assert sorted(runs) == ["bptt", "table"]
    summary = json.loads((out / "summary.json").read_text())
    written = read = 0
    for label, run in runs.items():
        rec = next(r for r in summary["runs"] if r["label"] == label)
        assert run["tags"]["status"] == rec["status"] == "completed"
        assert run["tags"]["method_type"] == rec["method"]
        assert run["status"] == "FINISHED"
        assert run["params"] == flatten(summary["spec"])
        assert run["params"]["methods.1.label"] == "table" and run["params"]["train.steps"] == "6"
        expected: dict[str, list[list[float]]] = {}
        for line in (x for x in lines if x["method"] == label):
            for key, v in line.items():
                if key not in ("method", "step") and isinstance(v, (int, float)) and math.isfinite(v):
                    expected.setdefault(key, []).append([line["step"], float(v)])
        assert expected["rollout_loss_test"][-1] == [6, rec["final"]["rollout_loss_test"]]
        assert run["history"] == expected  # exact: the same floats, every step, every key
        written += sum(map(len, expected.values()))
        read += sum(map(len, run["history"].values()))
    assert written == read > 0
    print(f"MLflow points written {written}, read back {read}")

    # docs/tracking.md's read-back snippet, as written, in a fresh process.
    page = (Path(__file__).resolve().parents[1] / "docs" / "tracking.md").read_text()
    (snippet,) = [b for b in re.findall(r"```python\n(.*?)```", page, re.S) if "MlflowClient" in b]
    code = f"import seqpar\nrecord = seqpar.load({str(out)!r})\n{snippet}"
    got = subprocess.run([sys.executable, "-c", code], env=_fresh_env(), capture_output=True, text=True, timeout=300)
    assert got.returncode == 0, got.stderr
    assert sorted(line.split()[0] for line in got.stdout.splitlines()) == ["bptt", "table"]


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


def test_a_tracking_uri_mlflow_cannot_open_is_refused_before_anything_is_written(tiny_spec, write_spec, tmp_path):
    pytest.importorskip("mlflow")
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    spec = str(write_spec(tiny_spec))
    refused = (("bogus://x", "not a tracking URI MLflow can open"), (f"http://127.0.0.1:{closed}", "no MLflow server answers there"))
    for uri, words in refused:
        out = tmp_path / "run"
        res = runner.invoke(app, ["run", spec, "--out", str(out), "--tracker", "mlflow", "--tracking-uri", uri, "--quiet"])
        assert res.exit_code == 2, res.output
        assert res.output.strip().splitlines() == [f"error: --tracking-uri {uri}: {res.output.split(uri + ': ', 1)[1].strip()}"]
        assert words in res.output and not out.exists()


def test_a_tracking_store_that_fails_mid_run_is_reported_once_and_the_run_goes_on(tiny_spec, write_spec, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    calls = []

    def gone(self, *args, **kwargs):  # the server went down after the run started
        calls.append(1)
        raise MlflowException("API request to http://mlflow.example.org failed: Max retries exceeded (Connection refused)")

    monkeypatch.setattr(MlflowClient, "log_batch", gone)
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", str(write_spec(tiny_spec)), "--out", str(out), "--tracker", "mlflow", "--quiet"])
    assert res.exit_code == 0, res.output  # the methods' results decide, not the tracker
    assert res.output.count("warning: --tracker mlflow:") == 1 and "Connection refused" in res.output
    assert len(calls) == 1  # MLflow was left alone after its first failure
    summary = json.loads((out / "summary.json").read_text())
    assert [r["status"] for r in summary["runs"]] == ["completed", "completed"]
    assert len((out / METRICS).read_text().splitlines()) > 2

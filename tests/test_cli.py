"""The CLI end to end on a tiny spec, and the issue's bad-spec cases (exit 2, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from seqpar.cli import app

runner = CliRunner()


def test_run_end_to_end_writes_the_run_record(tiny_spec, write_spec, tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", str(write_spec(tiny_spec)), "--out", str(out), "--set", "train.steps=4"])
    assert res.exit_code == 0, res.output
    assert {p.name for p in out.iterdir()} >= {"spec.yaml", "metrics.jsonl", "summary.json"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert [r["label"] for r in summary["runs"]] == ["bptt", "parallel"]
    for r in summary["runs"]:
        assert r["status"] == "completed" and r["steps_done"] == 4
        assert set(r["final"]) == {
            "rollout_loss_test",
            "rollout_loss_val",
            "rollout_loss_train",
            "rollout_acc_test",
            "rollout_acc_val",
            "objective",
            "lle",
        }
        assert r["step_time_ms"] > 0 and r["compile_s"] > 0
    assert summary["runs"][0]["state_table_bytes"] == 0
    assert summary["runs"][1]["state_table_bytes"] == 16 * 8 * 8 * 4  # N x T x H float32
    assert {r["lle_burn_in"] for r in summary["runs"]} == {8 // 4}  # a quarter of the sequence, recorded
    assert summary["env"]["versions"]["jax"] and summary["env"]["backend"] == "cpu"
    # The resolved spec carries the override; metrics lines carry method, step and wall time.
    assert yaml.safe_load((out / "spec.yaml").read_text())["train"]["steps"] == 4
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {(line["method"], line["step"]) for line in lines} >= {("bptt", 0), ("bptt", 4), ("parallel", 4)}
    assert all("wall_s" in line for line in lines)
    assert "rollout test" in res.output  # the results table was printed


def test_default_run_dirs_never_collide(tiny_spec, write_spec, tmp_path):
    tiny_spec["train"]["steps"] = 1
    tiny_spec["methods"] = tiny_spec["methods"][:1]
    spec = write_spec(tiny_spec)
    for _ in range(2):
        res = runner.invoke(app, ["run", str(spec), "--results-root", str(tmp_path / "results"), "--quiet"])
        assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "results" / "tiny").iterdir())) == 2


def test_out_dir_that_is_not_empty_is_refused(tiny_spec, write_spec, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    res = runner.invoke(app, ["run", str(write_spec(tiny_spec)), "--out", str(out)])
    assert res.exit_code == 2 and "not empty" in res.output
    assert (out / "summary.json").read_text() == "{}"


@pytest.mark.parametrize("name", sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "experiments").glob("*.yaml")))
def test_validate_accepts_the_experiments(name):  # every shipped experiment, a new one included
    res = runner.invoke(app, ["validate", f"experiments/{name}.yaml"])
    assert res.exit_code == 0, res.output


def _set(d: dict, dotted: str, value):
    *head, last = dotted.split(".")
    for k in head:
        d = d[int(k)] if isinstance(d, list) else d[k]
    if isinstance(d, list):
        d[int(last)] = value
    else:
        d[last] = value


@pytest.mark.parametrize(
    "key, value, expect",
    [
        ("task.lagg", 3, "task.lagg: unknown key; did you mean 'lag'?"),
        ("methods.1.consistensy_weight", 1.0, "methods.1.consistensy_weight: unknown key"),
        ("model.hidden", "wide", "model.hidden"),
        ("train.steps", [1, 2], "train.steps"),
        ("task.lag", 8, "task.lag: must be smaller than length=8"),
        ("model.hidden", 0, "model.hidden"),
        ("methods", [], "methods"),
        ("methods.0.optimizer.lr", -1, "methods.0.optimizer.lr"),
        ("methods.0.type", "magic", "methods.0.type: unknown type 'magic'; expected one of: "),
        ("model.cell", "transformer", "model.cell.type: unknown type 'transformer'; expected one of: elman, function, gru, lstm, mingru"),
        ("train.batch_size", 17, "train.batch_size: must not exceed task.train_sequences=16"),
    ],
)
def test_bad_spec_exits_2_names_the_key_and_writes_nothing(tiny_spec, write_spec, tmp_path, key, value, expect):
    _set(tiny_spec, key, value)
    out = tmp_path / "never"
    res = runner.invoke(app, ["run", str(write_spec(tiny_spec)), "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert expect in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert not out.exists()


@pytest.mark.parametrize(
    "text, expect",
    [
        ("name: x\ntask: {type: delayed_recall\n", "invalid YAML"),
        ("- just\n- a list\n", "top level must be a mapping"),
    ],
)
def test_malformed_yaml_exits_2(write_spec, tmp_path, text, expect):
    res = runner.invoke(app, ["run", str(write_spec(text)), "--out", str(tmp_path / "never")])
    assert res.exit_code == 2 and expect in res.output
    assert not (tmp_path / "never").exists()


def test_missing_spec_file_exits_2(tmp_path):
    res = runner.invoke(app, ["run", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "never")])
    assert res.exit_code == 2 and "file not found" in res.output
    assert not (tmp_path / "never").exists()


def test_override_that_is_not_key_value_exits_2(tiny_spec, write_spec):
    res = runner.invoke(app, ["validate", str(write_spec(tiny_spec)), "--set", "train.steps"])
    assert res.exit_code == 2 and "expected KEY=VALUE" in res.output

"""Tuning handicaps no method: pruning waits for half the budget, and the untuned default is the floor."""

from __future__ import annotations

import copy
import json
import math

import pytest
import yaml
from typer.testing import CliRunner

from seqpar.cli import app
from seqpar.tune.defaults import objective_value, verdict
from seqpar.tune.space import check_tune, pruner_warmup

pytest.importorskip("optuna")
runner = CliRunner()


def _study(tiny_spec, pruner=None, space=None, trials=2, steps=20):
    spec = copy.deepcopy(tiny_spec)
    spec["methods"] = spec["methods"][:1]  # bptt, lr 1e-2
    spec["task"]["val_sequences"] = 16
    spec["train"].update(steps=steps, eval_every=steps // 2)
    spec["tune"] = {
        "trials": trials,
        "sampler": {"type": "random"},
        "space": {"bptt": space or {"optimizer.lr": {"log": [1e-3, 1e-1]}}},
        **({"pruner": pruner} if pruner else {}),
    }
    return spec


def test_pruning_waits_for_half_the_budget(tiny_spec):
    assert pruner_warmup(check_tune(_study(tiny_spec, {"type": "median"}, steps=21), "s")) == 11
    assert pruner_warmup(check_tune(_study(tiny_spec, {"type": "median", "warmup_steps": 15}), "s")) == 15
    assert pruner_warmup(check_tune(_study(tiny_spec, {"type": "hyperband"}), "s")) == 10


def test_a_shorter_warmup_is_refused(tiny_spec, write_spec, tmp_path):
    spec = _study(tiny_spec, {"type": "median", "warmup_steps": 9})  # 20 steps: at least 10
    res = runner.invoke(app, ["tune", str(write_spec(spec)), "--out", str(tmp_path / "study")])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, res.output
    assert "tune.pruner.warmup_steps: must be at least half of train.steps (10, got 9)" in res.stderr
    assert not (tmp_path / "study").exists()


def test_verdict():
    assert verdict(0.5, 1.0) == "tuned" and verdict(1.0, 1.0) == "tuned"  # ties go to the tuned setting
    assert verdict(1.5, 1.0) == "default" and verdict(None, 1.0) == "default" and verdict(math.inf, 1.0) == "default"
    assert verdict(0.5, None) == "unchecked"
    assert verdict(0.5, math.inf) == "tuned"  # a diverged default is beaten by anything finite


def test_objective_value_follows_the_study(tiny_spec):
    lines = [{"rollout_loss_val": v} for v in (2.0, 0.5, 0.7)]
    record = {"final": {"rollout_loss_val": 0.7}}
    final = check_tune(_study(tiny_spec), "s")
    best = check_tune({**_study(tiny_spec), "tune": {**_study(tiny_spec)["tune"], "objective": "best"}}, "s")
    assert objective_value(final, record, lines) == 0.7 and objective_value(best, record, lines) == 0.5


def test_a_space_worse_than_the_default_keeps_the_default(tiny_spec, write_spec, tmp_path):
    # Every trial's learning rate is 1e-6: nothing moves in 20 steps, while the untuned 1e-2 learns.
    spec = _study(tiny_spec, space={"optimizer.lr": {"log": [1e-6, 2e-6]}})
    out = tmp_path / "study"
    res = runner.invoke(app, ["tune", str(write_spec(spec)), "--out", str(out)])
    assert res.exit_code == 0, res.output
    (m,) = json.loads((out / "tune.json").read_text())["methods"]
    assert m["default"]["chosen"] == "default" and m["default"]["value"] < m["best"]["value"]
    (summary,) = (out / "defaults").glob("*/summary.json")  # the reference is an ordinary, unpruned run record
    (record,) = json.loads(summary.read_text())["runs"]
    assert record["final"]["rollout_loss_val"] == m["default"]["value"] and record["steps_done"] == 20
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["methods"][0]["optimizer"]["lr"] == 1e-2  # the untuned setting, not the trials'
    assert "untuned default kept" in (out / "best.yaml").read_text()
    assert "nothing better than the untuned default" in " ".join(res.stdout.split())

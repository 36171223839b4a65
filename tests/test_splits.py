"""The validation split: its own data key, and everything decided during training is decided on it.

The test split is only reported: a run that differs only in `test_sequences` must make exactly the
same training-time decisions (steps to target, the training curve, the validation numbers).
"""

from __future__ import annotations

import copy
import json

import jax
import numpy as np

from seqpar.spec import validate_spec
from seqpar.train.loop import build_experiment
from seqpar.train.runner import run_experiment

# Fields of a metrics line that depend on the test split (or on the clock).
# BPTT on the tiny spec reaches it on validation at step 6 but on test already at step 3.
TARGET = 1.39
TEST_ONLY = {"rollout_loss_test", "rollout_acc_test", "gap", "wall_s"}


def _run(spec_dict, out):
    summary = run_experiment(validate_spec(spec_dict), out)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return summary, lines


def test_changing_the_val_split_leaves_train_test_and_init_unchanged(tiny_spec):
    a = build_experiment(validate_spec(tiny_spec))
    tiny_spec["task"]["val_sequences"] = 48
    b = build_experiment(validate_spec(tiny_spec))
    for u, v in zip(jax.tree.leaves((a.train, a.test, a.init_params)), jax.tree.leaves((b.train, b.test, b.init_params)), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    assert b.val.x.shape[0] == 48 and not np.array_equal(a.val.x, a.train.x[: a.val.x.shape[0]])
    assert not np.array_equal(a.val.x, a.test.x)


def test_changing_only_the_test_split_changes_no_training_time_number(tiny_spec, tmp_path):
    spec = copy.deepcopy(tiny_spec)
    spec["train"]["target_loss"] = TARGET
    base, base_lines = _run(spec, tmp_path / "a")
    spec["task"]["test_sequences"] = 32
    other, other_lines = _run(spec, tmp_path / "b")
    assert any(r["steps_to_target"] is not None for r in base["runs"])
    for r, o in zip(base["runs"], other["runs"], strict=True):
        assert r["steps_to_target"] == o["steps_to_target"]
        for k in ("rollout_loss_val", "rollout_acc_val", "rollout_loss_train", "objective"):
            assert r["final"][k] == o["final"][k], k
        assert r["final"]["rollout_loss_test"] != o["final"]["rollout_loss_test"]  # the test split did change
    assert len(base_lines) == len(other_lines)
    for x, y in zip(base_lines, other_lines, strict=True):
        assert {k: v for k, v in x.items() if k not in TEST_ONLY} == {k: v for k, v in y.items() if k not in TEST_ONLY}


def test_target_is_judged_on_validation(tiny_spec, tmp_path):
    tiny_spec["train"]["target_loss"] = TARGET
    summary, lines = _run(tiny_spec, tmp_path / "r")
    bptt = [line for line in lines if line["method"] == "bptt" and "rollout_loss_val" in line]
    on_val = next(line["step"] for line in bptt if line["rollout_loss_val"] <= TARGET)
    on_test = next(line["step"] for line in bptt if line["rollout_loss_test"] <= TARGET)
    assert on_val != on_test  # this spec tells the two apart
    assert summary["runs"][0]["steps_to_target"] == on_val

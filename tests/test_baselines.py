"""The memoryless baseline, one definition everywhere: the best held-out loss of a predictor that
sees `x_t` and `t` but nothing earlier. The trained baseline (`memoryless`: the same cell with its
recurrence cut) must agree with every task's formula, and on dynamics and char_lm, where the
formulas were wrong before, it must be no better than the formula."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqpar.model.rollout import rollout_states
from seqpar.spec import SpecError, validate_spec
from seqpar.tasks import TASKS
from seqpar.train.loop import build_experiment, run_method
from seqpar.train.runner import run_experiment

# Agreement of the trained baseline with the formula: within 5% either way. The trained one
# is an estimate from finite data and steps (it overfits a little: above the formula by a
# few %); the formula is exact or itself estimated from large samples (dynamics: < 0.5%).
AGREE_RTOL = 0.05
# "No better than the formula": at most 2% below it (the formula's own sampling error).
NO_BETTER_RTOL = 0.02


# One small configuration per task; 1024 training sequences keep the memoryless net's
# overfitting (it may condition on t) to a few %, 4096 held-out ones keep the MSE tasks'
# sampling error near 2%.
def _token_file() -> str:
    """Tokens whose label is the first token (so it needs memory), in explicit splits of the sizes `_spec` uses."""
    rng, d = np.random.default_rng(0), Path(tempfile.mkdtemp(prefix="seqpar-baselines-"))
    arrays = {}
    for sfx, n in (("", 1024), ("_val", 512), ("_test", 4096)):
        x = rng.integers(0, 4, (n, 8))
        arrays["x" + sfx], arrays["y" + sfx] = x, x[:, 0]
    np.savez(d / "tokens.npz", **arrays)
    return str(d / "tokens.npz")


CONFIGS = {
    "adding": {"type": "adding", "length": 20},
    "char_lm": {"type": "char_lm", "length": 32},
    "copy_memory": {"type": "copy_memory", "length": 12},
    "delayed_recall": {"type": "delayed_recall", "length": 16, "lag": 3, "vocab": 8},
    "dataset": {"type": "dataset", "path": _token_file()},
    "dynamics": {"type": "dynamics", "length": 16, "burn_in": 50},
    "parity": {"type": "parity", "length": 16},
}
FORMULA_WAS_WRONG = ("dynamics", "char_lm")


def _spec(task: dict, steps: int = 500, **train):
    return validate_spec(
        {
            "name": "baseline",
            "seed": 0,
            "task": {**task, "train_sequences": 1024, "val_sequences": 512, "test_sequences": 4096},
            "model": {"cell": "gru", "hidden": 32},
            "train": {"steps": steps, "batch_size": 64, "eval_every": steps, **train},
            "methods": [{"type": "memoryless", "optimizer": {"type": "adam", "lr": 1e-2}}],
        }
    )


def test_every_task_is_checked_here():
    assert set(TASKS.names()) == set(CONFIGS)


def test_the_memoryless_rollout_sees_only_the_current_input(tiny_spec):
    exp = build_experiment(validate_spec(tiny_spec))
    x = exp.train.x[:4]
    reset = jax.random.normal(jax.random.key(1), (x.shape[1], exp.model.state_dim))
    states = rollout_states(exp.model, exp.init_params, x, reset=reset)
    changed = x.at[:, :-1].set(x[::-1, :-1])  # every step but the last from other sequences
    np.testing.assert_array_equal(rollout_states(exp.model, exp.init_params, changed, reset=reset)[:, -1], states[:, -1])
    t = 3
    s = jnp.broadcast_to(reset[t], (4, exp.model.state_dim))
    np.testing.assert_allclose(states[:, t], exp.model.step_batch(exp.init_params, s, x[:, t]), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_trained_baseline_agrees_with_the_formula(name):
    spec = _spec(CONFIGS[name])
    exp = build_experiment(spec)
    record = run_method(exp, spec.methods[0], lambda line: None)
    trained, formula = record["final"]["rollout_loss_test"], exp.task.baseline_loss
    assert record["status"] == "completed" and formula is not None
    np.testing.assert_allclose(trained, formula, rtol=AGREE_RTOL)
    if name in FORMULA_WAS_WRONG:
        assert trained >= formula * (1 - NO_BETTER_RTOL), (trained, formula)


def test_the_runner_trains_the_baseline_first_and_records_it(tiny_spec, tmp_path):
    tiny_spec["train"].update(steps=3, baseline_trained=True)
    summary = run_experiment(validate_spec(tiny_spec), tmp_path / "run")
    first, *methods = summary["runs"]
    assert (first["label"], first["method"], first["status"]) == ("baseline_trained", "memoryless", "completed")
    assert summary["task"]["baseline_trained"] == {k: first["final"][f"rollout_loss_{k}"] for k in ("val", "test")}
    assert [m["label"] for m in methods] == ["bptt", "parallel"]
    for m in methods:
        assert m["baseline_trained"] == first["final"]["rollout_loss_test"]
        assert m["baseline_loss"] == summary["task"]["baseline_loss"]  # the formula stays the baseline
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {line["method"] for line in lines} == {"baseline_trained", "bptt", "parallel"}


def test_auto_trains_no_baseline_where_a_formula_exists(tiny_spec, tmp_path):
    tiny_spec["train"]["steps"] = 1
    tiny_spec["methods"] = tiny_spec["methods"][:1]
    summary = run_experiment(validate_spec(tiny_spec), tmp_path / "run")
    assert [r["label"] for r in summary["runs"]] == ["bptt"] and "baseline_trained" not in summary["task"]


def test_the_baseline_label_is_reserved(tiny_spec):
    tiny_spec["methods"][1]["label"] = "baseline_trained"
    with pytest.raises(SpecError, match=r"methods\.1\.label: 'baseline_trained' is reserved"):
        validate_spec(tiny_spec)

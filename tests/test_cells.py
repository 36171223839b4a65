"""The cell zoo: one interface, batched with vmap and scanned, and every cell x method runs.

Equivalence tests use fixed tolerances (1e-5) and are never loosened.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from seqpar import testing as checks
from seqpar.methods import METHODS
from seqpar.methods.bptt import BPTTConfig
from seqpar.methods.parallel import ParallelConfig
from seqpar.model.cells.lstm import LSTMConfig
from seqpar.model.model import build_model
from seqpar.model.rollout import rollout_states
from seqpar.spec import validate_spec
from seqpar.tasks.delayed_recall import DelayedRecallConfig

CELL_NAMES = checks.cell_names()
# One small size everywhere, so eager ops and model inits compile once per cell.
IN, HIDDEN, OUT = 3, 4, 3
TASK = DelayedRecallConfig(length=6, lag=2, vocab=IN, train_sequences=4, test_sequences=4)
SGD = {"type": "sgd", "lr": 0.05}
# Method fields without a default; a method added later that needs more fails here by name.
REQUIRED_METHOD_FIELDS = {"truncated_bptt": {"window": 3}}


def _model(cell, key=0):
    return build_model(cell, IN, HIDDEN, OUT, jax.random.key(key))


@functools.cache
def _reference(cell):
    """Rollout states, BPTT loss and gradients, and parallel losses on the true table: one jit per cell."""
    task = TASK.build()
    data = task.make_data(jax.random.key(4), 4)
    model, params = _model(cell)
    bptt = BPTTConfig(optimizer=SGD).build(model, task)
    readers = {r: ParallelConfig(optimizer=SGD, readout_from=r).build(model, task) for r in ("cell", "table")}

    @jax.jit
    def compute(params, x, y, mask):
        states = rollout_states(model, params, x)
        loss, grads = jax.value_and_grad(bptt.loss)(params, x, y, mask)
        return states, loss, grads, {r: m.loss(params, states, x, y, mask) for r, m in readers.items()}

    return model, params, data, *compute(params, data.x, data.y, data.mask)


def test_the_zoo_is_registered():
    assert set(CELL_NAMES) >= {"elman", "gru", "lstm", "mingru", "paragru", "paralstm"}


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_vmap_and_scan_match_a_python_loop(cell):
    checks.scan_is_a_python_loop(cell)


@pytest.mark.parametrize("forget_bias", [None, 2.5])
def test_lstm_forget_gate_bias_is_its_option_in_the_trained_params(forget_bias):
    cell = "lstm" if forget_bias is None else LSTMConfig.model_validate({"forget_bias": forget_bias})
    model, params = _model(cell)
    bias = np.asarray(params["cell"]["wx"]["bias"][...])  # gate order i, f, g, o
    np.testing.assert_array_equal(bias[HIDDEN : 2 * HIDDEN], 1.0 if forget_bias is None else forget_bias)
    np.testing.assert_array_equal(np.delete(bias, np.s_[HIDDEN : 2 * HIDDEN]), 0.0)


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_cell_given_by_name_or_by_config_is_the_same_and_recorded_as_written(cell):
    """`model.cell: gru` and `model.cell: {type: gru}` are one spec; a cell with options keeps them."""
    base = {**_tiny_spec(cell, "bptt").model_dump(mode="json"), "name": "x"}
    by_name = validate_spec({**base, "model": {"cell": cell, "hidden": HIDDEN}})
    by_config = validate_spec({**base, "model": {"cell": {"type": cell}, "hidden": HIDDEN}})
    assert by_name == by_config
    assert by_config.model_dump(mode="json")["model"]["cell"] == cell
    with_option = validate_spec({**base, "model": {"cell": {"type": "lstm", "forget_bias": 0.5}, "hidden": HIDDEN}})
    assert with_option.model_dump(mode="json")["model"]["cell"] == {"type": "lstm", "forget_bias": 0.5}
    assert validate_spec(with_option.model_dump(mode="json")) == with_option


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_linear_recurrence_flag_is_true_to_the_cell(cell):
    """cell(a s1 + (1-a) s2, x) = a cell(s1, x) + (1-a) cell(s2, x) exactly when the recurrence is affine."""
    model, params = _model(cell)
    k1, k2 = jax.random.split(jax.random.key(3))
    s1, s2 = jax.random.normal(k1, (2, model.state_dim))
    x = jax.random.normal(k2, (IN,))
    a = 0.3

    @jax.jit
    def gap(params):
        lhs = model.step(params, a * s1 + (1 - a) * s2, x)
        rhs = a * model.step(params, s1, x) + (1 - a) * model.step(params, s2, x)
        return jnp.max(jnp.abs(lhs - rhs))

    if model.linear_recurrence:
        assert float(gap(params)) < 1e-5
    else:
        assert float(gap(params)) > 1e-3


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_gradient_reaches_every_parameter(cell):
    *_, grads, _ = _reference(cell)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert float(jnp.max(jnp.abs(g))) > 0, jax.tree_util.keystr(path)


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_parallel_with_the_true_rollout_table_is_bptt(cell):
    """E = rollout states: zero consistency, and the task loss is the BPTT loss (either readout)."""
    *_, bptt_loss, _, parallel = _reference(cell)
    for readout_from, (objective, aux) in parallel.items():
        assert float(jnp.max(jnp.sqrt(aux["sq_residual"]))) < 1e-5, readout_from
        assert float(aux["consistency"]) < 1e-5, readout_from
        np.testing.assert_allclose(float(aux["task_loss"]), float(bptt_loss), atol=1e-5, rtol=0, err_msg=readout_from)
        np.testing.assert_allclose(float(objective), float(bptt_loss), atol=1e-5, rtol=0, err_msg=readout_from)


def _tiny_spec(cell: str, method: str):
    return validate_spec(
        {
            "name": f"tiny-{cell}-{method}",
            "seed": 0,
            "task": TASK.model_dump(),
            "model": {"cell": cell, "hidden": HIDDEN},
            "train": {"steps": 2, "batch_size": 4, "eval_every": 2},
            "methods": [{"type": method, "optimizer": SGD, **REQUIRED_METHOD_FIELDS.get(method, {})}],
        }
    )


@pytest.mark.parametrize("method", METHODS.names())
@pytest.mark.parametrize("cell", CELL_NAMES)
def test_every_cell_with_every_method_trains(cell, method):
    checks.trains_with(cell, method)


@pytest.mark.parametrize(
    "cell, expect",
    [
        ({"type": "paragru", "heads": 2}, ["model.cell.heads", "recurrent_init"]),  # unknown option: the known ones listed
        ({"type": "paralstm", "peephole": "maybe"}, ["model.cell.peephole", "bool"]),
        ({"type": "paralstm", "recurrent_init": 0}, ["model.cell.recurrent_init", "greater than 0"]),
        ({"type": "gru", "forget_bias": 1.0}, ["model.cell.forget_bias"]),  # an lstm option on a gru
    ],
    ids=["unknown option", "wrong type", "out of range", "another cell's option"],
)
def test_bad_cell_options_are_one_line_naming_the_key_exit_2(tmp_path, cell, expect):
    from typer.testing import CliRunner

    from seqpar.cli import app

    raw = _tiny_spec("gru", "bptt").model_dump(mode="json") | {"model": {"cell": cell, "hidden": HIDDEN}}
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump(raw))
    res = CliRunner().invoke(app, ["run", str(spec), "--out", str(tmp_path / "out"), "--quiet"])
    msg = res.output.strip()
    assert res.exit_code == 2 and len(msg.splitlines()) == 1, msg
    for s in expect:
        assert s in msg, (s, msg)
    assert not (tmp_path / "out").exists()

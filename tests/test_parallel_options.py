"""Embedding-parallel stabilizers: freezing, schedules, stop-gradients, table optimizer/init, refresh.

Each test runs the method's own jitted step (as the trainer builds it) on the tiny
spec and checks the behaviour the issue asks for at fixed tolerances.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqpar.methods.parallel import jacobi_sweeps
from seqpar.model.rollout import rollout_states
from seqpar.sharding import stratified_batch_indices
from seqpar.spec import SpecError, validate_spec
from seqpar.train.loop import build_experiment, make_train_step
from seqpar.train.runner import run_experiment

ADAM = {"type": "adam", "lr": 1e-2}


def _setup(tiny_spec, batch_size=8, **options):
    """Experiment, method, initial state and a (non-donating) jitted step for one parallel config."""
    tiny_spec = copy.deepcopy(tiny_spec)
    tiny_spec["methods"] = [{"type": "parallel", "optimizer": ADAM, **options}]
    tiny_spec["train"]["batch_size"] = batch_size
    spec = validate_spec(tiny_spec)
    exp = build_experiment(spec)
    method = spec.methods[0].build(exp.model, exp.task)
    state = method.init(jax.random.fold_in(exp.train_key, 2), exp.init_params, exp.train)
    n = spec.task.train_sequences
    step = jax.jit(make_train_step(method, exp.train_key, n, batch_size))
    return exp, method, state, step


def _run(step, state, data, steps):
    """States before every step (index k = before step k, last = after the final step) and metrics."""
    states, metrics = [state], []
    for k in range(steps):
        state, m = step(state, data, jnp.int32(k))
        states.append(state)
        metrics.append(jax.device_get(m))
    return states, metrics


def _batch_rows(exp, step, n, b):
    sample_key, _ = jax.random.split(exp.train_key)  # the trainer's minibatch key
    return stratified_batch_indices(sample_key, jnp.int32(step), n, b, exp.strata)


# ----------------------------------------------------------------------------- freeze_every


def test_freeze_every_1_equals_the_plain_method_step_for_step(tiny_spec):
    exp, _, s_plain, plain = _setup(tiny_spec, batch_size=4)
    _, _, s_frozen, frozen = _setup(tiny_spec, batch_size=4, freeze_every=1, accumulate="mean")
    a, _ = _run(plain, s_plain, exp.train, 6)
    b, _ = _run(frozen, s_frozen, exp.train, 6)
    for sa, sb in zip(a, b, strict=True):
        for x, y in zip(jax.tree.leaves(sa), jax.tree.leaves(sb), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("accumulate", ["sum", "mean"])
def test_frozen_table_is_fixed_between_applications_and_applies_the_accumulated_gradient(tiny_spec, accumulate):
    # SGD with lr 1 on the table: the applied update is exactly minus the accumulated gradient.
    # K=3 with 16 rows in batches of 8: rows are batched once or twice per window, so `mean` is per row.
    k, n, b = 3, 16, 8
    exp, method, state, step = _setup(
        tiny_spec, batch_size=b, freeze_every=k, accumulate=accumulate, table_init="random", table_optimizer={"type": "sgd", "lr": 1.0}
    )
    states, _ = _run(step, state, exp.train, 2 * k)
    table0 = np.asarray(states[0]["table"])
    for i in range(1, k):  # bit-identical until the K-th step
        np.testing.assert_array_equal(np.asarray(states[i]["table"]), table0)

    acc, count = np.zeros_like(table0), np.zeros(n)
    d = exp.train
    row_grad = jax.jit(jax.grad(lambda rows, p, idx, w: method.loss(p, rows, d.x[idx], d.y[idx], d.mask[idx], w)[0]))
    for i in range(k):
        idx = _batch_rows(exp, i, n, b)
        g = row_grad(jnp.asarray(table0)[idx], states[i]["params"], idx, method.consistency_weight(jnp.int32(i)))
        acc[np.asarray(idx)] += np.asarray(g)
        count[np.asarray(idx)] += 1
    assert set(count.tolist()) == {1.0, 2.0}
    expected = acc if accumulate == "sum" else acc / count[:, None, None]
    np.testing.assert_allclose(np.asarray(states[k]["table"]) - table0, -expected, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(states[k]["grad_sum"]), 0.0)  # buffer cleared
    np.testing.assert_array_equal(np.asarray(states[k]["grad_count"]), 0)
    for i in range(k + 1, 2 * k):  # held again through the second window
        np.testing.assert_array_equal(np.asarray(states[i]["table"]), np.asarray(states[k]["table"]))


def test_frozen_update_advances_only_rows_batched_in_the_window(tiny_spec):
    # 16 rows, batches of 4, K=2: 8 rows are batched in the window, 8 never.
    n, b = 16, 4
    exp, _, state, step = _setup(tiny_spec, batch_size=b, freeze_every=2, table_init="random")
    states, _ = _run(step, state, exp.train, 2)
    touched = np.zeros(n, bool)
    touched[np.concatenate([np.asarray(_batch_rows(exp, i, n, b)) for i in range(2)])] = True
    assert touched.sum() == 8
    before, after = states[0], states[2]
    np.testing.assert_array_equal(np.asarray(after["table"])[~touched], np.asarray(before["table"])[~touched])
    assert np.all(np.any(np.asarray(after["table"])[touched] != np.asarray(before["table"])[touched], axis=(1, 2)))
    for a, o in zip(jax.tree.leaves(after["table_opt_state"]), jax.tree.leaves(before["table_opt_state"]), strict=True):
        np.testing.assert_array_equal(np.asarray(a)[~touched], np.asarray(o)[~touched])
    # Adam's per-row count advances once per application, not once per accumulated gradient.
    counts = [np.asarray(c) for c in jax.tree.leaves(after["table_opt_state"]) if np.asarray(c).dtype == np.int32]
    assert counts and all(np.array_equal(c, touched.astype(np.int32)) for c in counts)


# ----------------------------------------------------------------------------- consistency weight and stop-gradient


def test_consistency_schedules(tiny_spec):
    def weights(schedule):
        spec = dict(
            tiny_spec, methods=[{"type": "parallel", "optimizer": ADAM, "consistency_weight": 2.0, "consistency_schedule": schedule}]
        )
        method = validate_spec(spec).methods[0].build(None, None)
        return [float(method.consistency_weight(jnp.int32(s))) for s in (0, 5, 10, 20)]

    np.testing.assert_allclose(weights({"type": "constant"}), [2.0, 2.0, 2.0, 2.0], atol=1e-5)
    np.testing.assert_allclose(weights({"type": "linear", "steps": 10}), [0.0, 1.0, 2.0, 2.0], atol=1e-5)
    np.testing.assert_allclose(weights({"type": "cosine", "steps": 10}), [0.0, 1.0, 2.0, 2.0], atol=1e-5)
    np.testing.assert_allclose(weights({"type": "cosine", "steps": 10, "start": 1.0, "end": 0.5}), [2.0, 1.5, 1.0, 1.0], atol=1e-5)
    # The cosine ramp is flat at both ends, the linear one is not.
    assert weights({"type": "cosine", "steps": 1000})[1] < weights({"type": "linear", "steps": 1000})[1]


@pytest.mark.parametrize("stop", ["none", "target", "prediction"])
def test_consistency_stop_gradient(tiny_spec, stop):
    exp, method, _, _ = _setup(tiny_spec, consistency_stop_gradient=stop, consistency_weight=1.0)
    d, params = exp.train, exp.init_params
    table = jax.random.normal(jax.random.key(3), (d.x.shape[0], d.x.shape[1], exp.model.state_dim))
    grad = jax.jit(jax.grad(lambda p, e: method.loss(p, e, d.x, d.y, d.mask)[0], argnums=(0, 1)))
    g_params, g_table = grad(params, table)
    task_params = jax.jit(jax.grad(lambda p: method.loss(p, table, d.x, d.y, d.mask)[1]["task_loss"]))(params)
    param_diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(g_params), jax.tree.leaves(task_params), strict=True))
    # E[T-1] is never a cell input, so its only gradient is the consistency target's.
    last = float(jnp.max(jnp.abs(g_table[:, -1])))
    if stop == "prediction":  # only E[t] is pulled: no consistency gradient reaches the cell
        assert param_diff <= 1e-5 and last > 1e-3
    elif stop == "target":  # E[t] is held: the last row gets nothing, the cell is pulled
        assert last <= 1e-5 and param_diff > 1e-3
    else:
        assert last > 1e-3 and param_diff > 1e-3


# ----------------------------------------------------------------------------- table optimizer and init


def test_table_has_its_own_optimizer(tiny_spec):
    exp, method, state, step = _setup(tiny_spec, table_init="random", table_optimizer={"type": "sgd", "lr": 0.5})
    new, _ = step(state, exp.train, jnp.int32(0))
    d, idx = exp.train, _batch_rows(exp, 0, 16, 8)
    g = jax.jit(jax.grad(lambda rows: method.loss(state["params"], rows, d.x[idx], d.y[idx], d.mask[idx])[0]))(state["table"][idx])
    np.testing.assert_allclose(new["table"][idx], state["table"][idx] - 0.5 * g, atol=1e-5)
    assert jax.tree.leaves(new["table_opt_state"]) == []  # plain SGD keeps no state; the model's Adam does
    assert jax.tree.leaves(new["opt_state"])


def test_table_init(tiny_spec):
    exp, _, zeros, _ = _setup(tiny_spec)
    np.testing.assert_array_equal(zeros["table"], 0.0)
    _, _, rand, _ = _setup(tiny_spec, table_init="random", table_init_scale=0.5)
    assert 0.4 < float(jnp.std(rand["table"])) < 0.6
    _, method, roll, _ = _setup(tiny_spec, table_init="rollout")
    np.testing.assert_allclose(roll["table"], rollout_states(exp.model, exp.init_params, exp.train.x), atol=1e-5)
    _, aux = method.loss(exp.init_params, roll["table"], exp.train.x, exp.train.y, exp.train.mask)
    assert float(jnp.max(aux["sq_residual"])) <= 1e-10


# ----------------------------------------------------------------------------- refresh


def test_rollout_refresh_zeroes_the_consistency_residual_at_that_step(tiny_spec):
    exp, method, state, step = _setup(tiny_spec, refresh="rollout", refresh_every=3)
    states, metrics = _run(step, state, exp.train, 4)
    assert metrics[2]["residual_max"] > 1e-2  # not refreshed yet
    # Bit-exact zero is not promised: the rollout's scan and the batched predictions evaluate
    # a gated cell in differently shaped XLA kernels, which may round one ulp apart.
    assert metrics[3]["residual_max"] <= 1e-5
    # With the true rollout as its table, the step's task loss is BPTT's loss on that batch.
    idx = _batch_rows(exp, 3, 16, 8)
    d = exp.train
    roll = rollout_states(exp.model, states[3]["params"], d.x[idx])
    _, aux = method.loss(states[3]["params"], roll, d.x[idx], d.y[idx], d.mask[idx])
    np.testing.assert_allclose(metrics[3]["task_loss"], aux["task_loss"], atol=1e-5)


def test_jacobi_sweeps_make_the_leading_steps_exact(tiny_spec):
    exp, _, _, _ = _setup(tiny_spec)
    d, params, t = exp.train, exp.init_params, exp.train.x.shape[1]
    truth = rollout_states(exp.model, params, d.x)
    table = jax.random.normal(jax.random.key(7), truth.shape)
    for m in (1, 3):
        swept = jacobi_sweeps(exp.model, params, table, d.x, m)
        np.testing.assert_allclose(swept[:, :m], truth[:, :m], atol=1e-5)
        assert float(jnp.max(jnp.abs(swept[:, m:] - truth[:, m:]))) > 1e-3
    np.testing.assert_allclose(jacobi_sweeps(exp.model, params, table, d.x, t), truth, atol=1e-5)


def test_jacobi_refresh_in_the_step_and_its_eval_distance(tiny_spec):
    exp, method, state, step = _setup(tiny_spec, refresh="jacobi", refresh_every=2, sweeps=8)
    states, metrics = _run(step, state, exp.train, 3)
    assert metrics[2]["residual_max"] <= 1e-5  # 8 sweeps over length 8: the refreshed table is the rollout
    eval_fn = jax.jit(lambda s: method.eval_metrics(s, exp.train, rollout_states(exp.model, s["params"], exp.train.x), jnp.float32(0)))
    ev = eval_fn(states[-1])
    assert float(ev["jacobi_rollout_dist"]) <= 1e-5 and float(ev["table_rollout_dist"]) > 1e-3
    assert {f"jacobi_rollout_dist_q{q}" for q in range(1, 5)} <= set(ev)


def test_newton_refresh_from_the_table_makes_the_leading_steps_exact_and_converges(tiny_spec):
    exp, method, _, _ = _setup(tiny_spec, refresh="newton", refresh_every=2, iterations=1, newton_jacobian="diagonal")
    d, params = exp.train, exp.init_params
    truth = rollout_states(exp.model, params, d.x)
    table = jax.random.normal(jax.random.key(7), truth.shape)
    # Newton from any table: iteration k makes at least the first k steps exact, like k Jacobi sweeps.
    np.testing.assert_allclose(method.newton_refresh(params, table, d.x)[:, :1], truth[:, :1], atol=1e-5)
    exp, method, state, step = _setup(tiny_spec, refresh="newton", refresh_every=2, iterations=8)
    states, metrics = _run(step, state, exp.train, 3)
    assert metrics[1]["residual_max"] > 1e-3  # not refreshed yet
    assert metrics[2]["residual_max"] <= 1e-5  # DEER from the table within 8 iterations: the rollout
    eval_fn = jax.jit(lambda s: method.eval_metrics(s, exp.train, rollout_states(exp.model, s["params"], exp.train.x), jnp.float32(0)))
    ev = eval_fn(states[-1])
    assert float(ev["newton_rollout_dist"]) <= 1e-5 and float(ev["table_rollout_dist"]) > 1e-3
    assert {f"newton_rollout_dist_q{q}" for q in range(1, 5)} <= set(ev)


# ----------------------------------------------------------------------------- spec validation and a full run


@pytest.mark.parametrize(
    "options, message",
    [
        ({"refresh": "rollout"}, "methods.0.refresh_every: required with refresh: rollout"),
        ({"refresh_every": 5}, "methods.0.refresh_every: only meaningful with refresh"),
        ({"refresh": "jacobi", "refresh_every": 5}, "methods.0.sweeps: required with refresh: jacobi"),
        ({"refresh": "rollout", "refresh_every": 5, "sweeps": 2}, "methods.0.sweeps: only meaningful with refresh: jacobi"),
        ({"table_init_scale": 0.3}, "methods.0.table_init_scale: only meaningful with table_init: random"),
        ({"refresh": "newton", "refresh_every": 5}, "methods.0.iterations: required with refresh: newton"),
        (
            {"refresh": "jacobi", "refresh_every": 5, "sweeps": 2, "iterations": 3},
            "methods.0.iterations: only meaningful with refresh: newton",
        ),
        ({"newton_jacobian": "diagonal"}, "methods.0.newton_jacobian: only meaningful with refresh"),
        ({"refresh": "newton", "refresh_every": 5, "iterations": 2, "sweeps": 2}, "methods.0.sweeps: only meaningful with refresh: jacobi"),
        ({"freeze_every": 4, "refresh": "rollout", "refresh_every": 6}, "methods.0.refresh_every: must be a multiple of freeze_every=4"),
        ({"freeze_every": 0}, "methods.0.freeze_every"),
        ({"accumulate": "max"}, "methods.0.accumulate"),
        (
            {"consistency_schedule": {"type": "exp"}},
            "methods.0.consistency_schedule.type: unknown type 'exp'; expected one of: constant, cosine, linear",
        ),
        ({"consistency_schedule": {"type": "linear"}}, "methods.0.consistency_schedule.steps: required key is missing"),
        (
            {"table_optimizer": {"type": "lion", "lr": 1.0}},
            "methods.0.table_optimizer.type: unknown type 'lion'; expected one of: adam, adamw, sgd",
        ),
    ],
)
def test_bad_options_name_the_key(tiny_spec, options, message):
    tiny_spec["methods"] = [{"type": "parallel", "optimizer": ADAM, **options}]
    with pytest.raises(SpecError) as e:
        validate_spec(tiny_spec)
    assert message in str(e.value)


def test_all_options_together_run_and_report_diagnostics(tiny_spec, tmp_path):
    tiny_spec["methods"] = [
        {
            "type": "parallel",
            "optimizer": ADAM,
            "label": "everything",
            "freeze_every": 2,
            "accumulate": "mean",
            "consistency_schedule": {"type": "cosine", "steps": 4},
            "consistency_stop_gradient": "target",
            "table_optimizer": {"type": "sgd", "lr": 0.1, "momentum": 0.9},
            "table_init": "rollout",
            "refresh": "jacobi",
            "refresh_every": 4,
            "sweeps": 2,
        }
    ]
    summary = run_experiment(validate_spec(tiny_spec), tmp_path)
    (run,) = summary["runs"]
    assert run["status"] == "completed", run.get("error")
    diag = run["diagnostics"]
    for key in (
        "gap",
        "residual_mean",
        "residual_max",
        "table_rollout_dist_q4",
        "jacobi_rollout_dist",
        "train_grad_norm_params",
        "train_grad_norm_table",
    ):
        assert np.isfinite(diag[key]), key
    np.testing.assert_allclose(diag["gap"], diag["rollout_loss_test"] - diag["objective"], atol=1e-5)

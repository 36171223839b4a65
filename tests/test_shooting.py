"""Multiple shooting (`parallel.segment: K`): free states every K steps, the cell scanned inside segments.

K = 1 is the seed's table, K >= T is BPTT (objective, gradient and trajectory), the nodes
hold what the rollout holds at the segment ends, Newton on the nodes converges to them, the
augmented Lagrangian's multipliers follow their update rule and resume exactly, and the
table's memory falls by K. Fixed tolerances: 1e-5 for states and objectives, 1e-5 relative
for parameters after several steps.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import Crash, CrashAt, metric_lines

from seqpar.model.model import build_model
from seqpar.model.newton import NewtonOptions
from seqpar.model.rollout import rollout_states
from seqpar.model.shooting import node_steps, shooting_predictions, solve_nodes
from seqpar.spec import SpecError, validate_spec
from seqpar.tasks.delayed_recall import DelayedRecallConfig
from seqpar.train.loop import build_experiment, make_train_step
from seqpar.train.runner import run_experiment

ADAM = {"type": "adam", "lr": 1e-2}
T = 10


def _spec(methods, layers=1, steps=6, batch=8, cell="gru", **train):
    return validate_spec(
        {
            "name": "shoot",
            "task": DelayedRecallConfig(length=T, lag=3, vocab=4, train_sequences=8, val_sequences=8, test_sequences=8).model_dump(),
            "model": {"cell": cell, "hidden": 6, "layers": layers},
            "train": {"steps": steps, "batch_size": batch, "eval_every": steps, "lle_sequences": 0, **train},
            "methods": methods,
        }
    )


def _steps(spec, n):
    """Each method's jitted step run n times from its initial state: (states after every step, metrics)."""
    exp = build_experiment(spec)
    out = []
    for cfg in spec.methods:
        method = cfg.build(exp.model, exp.task)
        state = method.init(jax.random.fold_in(exp.train_key, 2), exp.init_params, exp.train)
        step = jax.jit(make_train_step(method, exp.train_key, spec.task.train_sequences, spec.train.batch_size))
        states, metrics = [state], []
        for k in range(n):
            state, m = step(state, exp.train, jnp.int32(k))
            states.append(state)
            metrics.append(jax.device_get(m))
        out.append((method, states, metrics))
    return exp, out


def test_node_steps_are_the_segment_ends():
    assert node_steps(10, 1).tolist() == list(range(10))  # the seed's table: a state after every step
    assert node_steps(10, 3).tolist() == [2, 5, 8, 9]  # the last segment is shorter
    assert node_steps(10, 5).tolist() == [4, 9]
    assert node_steps(10, 10).tolist() == [] and node_steps(10, 64).tolist() == []  # one segment: BPTT


@pytest.mark.parametrize("layers", [1, 2])
def test_a_single_segment_is_bptt_objective_gradient_and_trajectory(layers):
    """K >= T: no free state, every step scanned from the initial state: BPTT step for step."""
    spec = _spec([{"type": "bptt", "optimizer": ADAM}, {"type": "parallel", "segment": 64, "optimizer": ADAM}], layers)
    _, [(_, bptt, mb), (par, shoot, ms)] = _steps(spec, 8)
    assert shoot[0]["table"].shape == (8, 0, 6 * layers)
    for k in range(8):
        np.testing.assert_allclose(ms[k]["objective"], mb[k]["objective"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ms[k]["grad_norm_params"], mb[k]["grad_norm_params"], rtol=1e-5, atol=1e-6)
        assert ms[k]["consistency"] == 0.0
    for a, b in zip(jax.tree.leaves(shoot[-1]["params"]), jax.tree.leaves(bptt[-1]["params"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert par.sequential_depth(T, {}) == 2 * layers * T  # BPTT's critical path


def test_segment_1_is_the_seeds_table_and_is_recorded_as_before():
    plain = _spec([{"type": "parallel", "optimizer": ADAM}])
    explicit = _spec([{"type": "parallel", "segment": 1, "constraint": "penalty", "optimizer": ADAM}])
    assert plain == explicit
    assert "segment" not in plain.model_dump(mode="json")["methods"][0]  # old records and hashes unchanged
    _, [(_, a, _)] = _steps(plain, 3)
    _, [(_, b, _)] = _steps(explicit, 3)
    assert a[0]["table"].shape == (8, T, 6)
    for x, y in zip(jax.tree.leaves(a[-1]), jax.tree.leaves(b[-1]), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("segment", [2, 3, 5])
@pytest.mark.parametrize("layers", [1, 2])
def test_nodes_at_the_rollout_predict_the_rollout_exactly(segment, layers):
    """With the nodes set to the rollout's states at the segment ends, every segment's scan is the
    rollout and the consistency residual is zero (a stack: each layer from its own nodes)."""
    model, params = build_model("gru", 4, 6, 4, jax.random.key(0), layers=layers, residual=layers > 1, norm="rms" if layers > 1 else "none")
    x = jax.random.normal(jax.random.key(1), (3, T, 4))
    truth = rollout_states(model, params, x)
    nodes = truth[:, node_steps(T, segment)]
    pred = shooting_predictions(model, params, nodes, x, segment)
    np.testing.assert_allclose(pred, truth, atol=1e-6)
    wrong = shooting_predictions(model, params, nodes + 1.0, x, segment)
    first = node_steps(T, segment)[0] + 1  # the first segment starts at the fixed initial state, whatever the nodes
    np.testing.assert_allclose(wrong[:, :first], truth[:, :first], atol=1e-6)
    assert float(jnp.max(jnp.abs(wrong[:, first:] - truth[:, first:]))) > 1e-2


@pytest.mark.parametrize("cell", ["gru", "paragru", "paralstm"])
@pytest.mark.parametrize("jacobian", ["full", "diagonal"])
def test_multiple_shooting_newton_converges_to_the_rollout_at_the_nodes(cell, jacobian):
    """Newton on the node recurrence (each node the previous one run through a segment): exact in at
    most M iterations from any guess; on a structured cell the diagonal product is exact too."""
    segment = 3
    model, params = build_model(cell, 4, 6, 4, jax.random.key(0), layers=2, residual=True)
    x = jax.random.normal(jax.random.key(1), (3, T, 4))
    truth = rollout_states(model, params, x)[:, node_steps(T, segment)]
    guess = jax.random.normal(jax.random.key(2), truth.shape)
    nodes, stats = solve_nodes(model, params, x, guess, NewtonOptions(jacobian, max_iters=50, tol=1e-6), segment)
    np.testing.assert_allclose(nodes, truth, atol=1e-5)
    for st in stats:
        assert bool(jnp.all(st.converged)) and int(jnp.max(st.iterations)) <= truth.shape[1]
    if jacobian == "full" or model.jacobian_structure != "full":
        assert all(int(jnp.max(st.iterations)) <= 6 for st in stats)  # Newton, not sweeps


def test_refresh_and_table_init_work_on_the_nodes():
    """`table_init: rollout`, a rollout refresh, Jacobi sweeps and Newton all give the rollout's node
    states; the eval measures the refresh's distance at the nodes."""
    seg = 3
    methods = [
        {"type": "parallel", "label": "init", "segment": seg, "table_init": "rollout", "optimizer": ADAM},
        {"type": "parallel", "label": "jacobi", "segment": seg, "refresh": "jacobi", "refresh_every": 1, "sweeps": 4, "optimizer": ADAM},
        {
            "type": "parallel",
            "label": "newton",
            "segment": seg,
            "refresh": "newton",
            "refresh_every": 1,
            "iterations": 8,
            "optimizer": ADAM,
        },
    ]
    spec = _spec(methods)
    exp, runs = _steps(spec, 2)
    (init, init_states, init_metrics) = runs[0]
    truth0 = rollout_states(exp.model, exp.init_params, exp.train.x)[:, node_steps(T, seg)]
    np.testing.assert_allclose(init_states[0]["table"], truth0, atol=1e-6)
    assert init_metrics[0]["residual_max"] < 1e-5  # the table starts consistent
    for method, states, metrics in runs[1:]:
        # Refreshed before step 1 from the parameters after step 0: the rollout at the nodes, consistent.
        truth1 = rollout_states(exp.model, states[1]["params"], exp.train.x)[:, node_steps(T, seg)]
        refreshed = method.refreshed_table(states[1]["params"], states[1]["table"], exp.train.x)
        np.testing.assert_allclose(refreshed, truth1, atol=1e-5)
        assert metrics[1]["residual_max"] < 1e-4, method.cfg.label


def test_augmented_lagrangian_multipliers_follow_their_rule_and_are_logged():
    """λ starts at 0; after every `multiplier_every`-th step every node's multiplier moves by
    rate · r, its residual at the parameters and table that step produced; between those steps
    it holds; the objective holds ⟨λ, r⟩ beside the penalty."""
    options = {"segment": 3, "constraint": "augmented_lagrangian", "multiplier_rate": 0.5, "multiplier_every": 2}
    spec = _spec([{"type": "parallel", **options, "optimizer": ADAM}], batch=4)
    exp, [(method, states, metrics)] = _steps(spec, 4)
    assert states[0]["multipliers"].shape == states[0]["table"].shape == (8, 4, 6)
    np.testing.assert_array_equal(states[0]["multipliers"], 0.0)
    for k in range(4):
        after = states[k + 1]
        if (k + 1) % 2:
            np.testing.assert_array_equal(after["multipliers"], states[k]["multipliers"])
            continue
        pred = shooting_predictions(method.model, after["params"], after["table"], exp.train.x, 3)[:, node_steps(T, 3)]
        expected = states[k]["multipliers"] + 0.5 * (pred - after["table"])
        np.testing.assert_allclose(after["multipliers"], expected, atol=1e-5)
        np.testing.assert_allclose(metrics[k]["multiplier_norm"], jnp.mean(jnp.linalg.norm(expected, axis=-1)), rtol=1e-5)
    data = (exp.train.x, exp.train.y, exp.train.mask)
    objective, aux = method.loss(states[2]["params"], states[2]["table"], *data, 1.0, states[2]["multipliers"])
    penalty, _ = method.loss(states[2]["params"], states[2]["table"], *data, 1.0)
    np.testing.assert_allclose(objective - penalty, jnp.mean(jnp.sum(states[2]["multipliers"] * aux["diff"], axis=-1)), atol=1e-6)


def test_a_segmented_lagrangian_table_resumes_from_its_checkpoint_exactly(tmp_path):
    methods = [{"type": "parallel", "segment": 3, "constraint": "augmented_lagrangian", "multiplier_every": 1, "optimizer": ADAM}]
    spec = _spec(methods, layers=2, steps=4, batch=4, log_every=1, checkpoint_every=2)
    reference = tmp_path / "reference"
    assert run_experiment(spec, reference)["status"] == "completed"
    out = tmp_path / "run"
    with pytest.raises(Crash):
        run_experiment(spec, out, CrashAt("parallel", 3))
    summary = run_experiment(spec, out, resume=True)
    assert summary["resumes"][0]["from_step"] == {"parallel": 2}
    assert metric_lines(out) == metric_lines(reference)
    assert all("multiplier_norm" in ln for ln in metric_lines(out) if "consistency" in ln)  # every training and eval line
    a, b = (json.loads((d / "summary.json").read_text()) for d in (out, reference))
    assert [r["final"] for r in a["runs"]] == [r["final"] for r in b["runs"]]


def test_the_tables_memory_falls_by_k_and_the_depth_grows_by_it():
    from seqpar.train import memory

    def table_bytes(segment):
        spec = _spec([{"type": "parallel", "segment": segment, "optimizer": ADAM}])
        return memory.estimate(spec).state, spec

    full, spec = table_bytes(1)
    halves, _ = table_bytes(2)
    assert halves < full
    exp = build_experiment(spec)
    for k, m in ((1, T), (2, 5), (5, 2), (64, 0)):
        method = _spec([{"type": "parallel", "segment": k, "optimizer": ADAM}]).methods[0].build(exp.model, exp.task)
        shapes = jax.eval_shape(method.init, jax.random.key(0), exp.init_params, exp.train)
        assert shapes["table"].shape == (8, m, 6)
        assert method.sequential_depth(T, {}) == 2 * min(k, T)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"segment": 0}, "methods.0.segment"),
        ({"segment": 2, "readout_from": "table"}, "methods.0.readout_from: table reads a state after every step; with segment: 2"),
        ({"multiplier_rate": 1.0}, "methods.0.multiplier_rate: only meaningful with constraint: augmented_lagrangian"),
        ({"constraint": "lagrange"}, "methods.0.constraint"),
    ],
)
def test_bad_shooting_options_name_the_key(options, message):
    with pytest.raises(SpecError) as e:
        _spec([{"type": "parallel", "optimizer": ADAM, **options}])
    assert message in str(e.value)

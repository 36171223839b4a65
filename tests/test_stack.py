"""Stacks of L cells: every method trains one, against independent computations of the joint recurrence.

The reference everywhere is `Model.joint_step` in a Python loop over time (no scan, no layer
views): the stack's definition. Every method runs layer by layer; these tests say it is the
same function (states, gradients, truncation, the memoryless cut, Newton's solution).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import Crash, CrashAt, metric_lines
from typer.testing import CliRunner

from seqpar import testing as checks
from seqpar.cli import app
from seqpar.methods import METHODS
from seqpar.methods.tbptt import truncated_rollout_states
from seqpar.model.model import build_model
from seqpar.model.newton import NewtonOptions
from seqpar.model.newton_stack import differentiable_stack, solve_stack
from seqpar.model.rollout import readout_all, rollout_states
from seqpar.spec import validate_spec
from seqpar.tasks.delayed_recall import DelayedRecallConfig
from seqpar.train.loop import build_experiment, init_state, make_train_step, run_method
from seqpar.train.runner import run_experiment

CELL_NAMES = checks.cell_names()
METHOD_NAMES = METHODS.names()
IN, HIDDEN, OUT = 3, 4, 3
N, T = 3, 6
SGD = {"type": "sgd", "lr": 0.05}
# Method fields without a default; a method added later that needs more fails here by name.
REQUIRED_METHOD_FIELDS = {"truncated_bptt": {"window": 3}}
BLOCKS = {"plain": {}, "residual+rms": {"residual": True, "norm": "rms"}, "layer norm": {"norm": "layer"}}


def _model(cell="gru", layers=2, key=0, **block):
    return build_model(cell, IN, HIDDEN, OUT, jax.random.key(key), layers=layers, **block)


def _x(key=1, n=N, t=T):
    return jax.random.normal(jax.random.key(key), (n, t, IN))


def _joint_loop(model, params, x, cut_every=None):
    """States `(N, T, L·S)` of the joint recurrence by a Python loop; `cut_every`: stop the
    gradient of the joint state entering every `cut_every`-th step (truncated BPTT's definition)."""
    s = jnp.broadcast_to(model.initial_state(), (x.shape[0], model.state_dim))
    states = []
    for t in range(x.shape[1]):
        if cut_every and t % cut_every == 0:
            s = jax.lax.stop_gradient(s)
        s = jax.vmap(model.joint_step, in_axes=(None, 0, 0))(params, s, x[:, t])
        states.append(s)
    return jnp.stack(states, axis=1)


def _max_diff(a, b):
    return max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _spec(methods, cell="gru", layers=2, block=None, steps=3, length=8, sequences=8, batch=4, **train):
    model = {"cell": cell, "hidden": HIDDEN, "layers": layers, **({"block": block} if block else {})}
    return validate_spec(
        {
            "name": "stack",
            "seed": 0,
            "task": DelayedRecallConfig(length=length, lag=2, vocab=IN, train_sequences=sequences, test_sequences=4).model_dump(),
            "model": model,
            "train": {"steps": steps, "batch_size": batch, "eval_every": steps, **train},
            "methods": methods,
        }
    )


# ----------------------------------------------------------------------------- the model


# Every cell with the full block; the other blocks on one cell (each case compiles a few programs).
ROLLOUT_CASES = [(c, "residual+rms") for c in CELL_NAMES] + [("gru", "plain"), ("gru", "layer norm")]


@pytest.mark.parametrize("cell, block", [(c, BLOCKS[b]) for c, b in ROLLOUT_CASES], ids=[f"{c}-{b}" for c, b in ROLLOUT_CASES])
def test_layer_by_layer_rollout_and_its_gradient_are_the_joint_recurrence(cell, block):
    model, params = _model(cell, **block)
    x = _x()
    cot = jax.random.normal(jax.random.key(2), (N, T, OUT))

    @jax.jit
    def both(p):
        ours = jax.value_and_grad(lambda q: jnp.sum(readout_all(model, q, rollout_states(model, q, x)) * cot))(p)
        ref = jax.value_and_grad(lambda q: jnp.sum(readout_all(model, q, _joint_loop(model, q, x)) * cot))(p)
        return rollout_states(model, p, x), _joint_loop(model, p, x), ours, ref

    states, loop, (v, g), (v_ref, g_ref) = both(params)
    assert states.shape == (N, T, 2 * model.layer_state_dim) and model.state_dim == 2 * model.layer(0).state_dim
    np.testing.assert_allclose(states, loop, atol=1e-5)
    np.testing.assert_allclose(v, v_ref, rtol=1e-5)
    assert _max_diff(g, g_ref) < 1e-4
    assert any(float(jnp.max(jnp.abs(leaf))) > 0 for leaf in jax.tree.leaves(g["cell_1"]))
    assert float(jnp.std(model.split(states)[1][:, -1])) > 1e-3  # the upper layer moves


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_joint_diagonal_is_the_joint_jacobians_and_layer_views_select_their_cell(cell):
    model, params = _model(cell, residual=True, norm="layer")
    s = jax.random.normal(jax.random.key(3), (model.state_dim,))
    x = jax.random.normal(jax.random.key(4), (IN,))
    np.testing.assert_allclose(model.diag_jacobian(params, s, x), jnp.diagonal(model.jacobian(params, s, x)), atol=1e-6)
    upper = model.layer(1)
    assert hash(upper) == hash(model.layer(1)) and upper.state_dim == model.layer_state_dim
    u = jax.random.normal(jax.random.key(5), (HIDDEN,))
    g = jax.grad(lambda p: jnp.sum(upper.step(p, s[: upper.state_dim], u)))(params)
    assert all(float(jnp.max(jnp.abs(leaf))) == 0 for leaf in jax.tree.leaves(g["cell"]))  # only its own cell
    assert any(float(jnp.max(jnp.abs(leaf))) > 0 for leaf in jax.tree.leaves(g["cell_1"]))
    assert not model.linear_recurrence  # a stack feeds each layer's gates with the new state below


# ----------------------------------------------------------------------------- methods at L = 2


def test_truncated_stack_gradient_is_the_joint_state_cut_at_window_edges():
    model, params = _model("gru", residual=True, norm="rms")
    x, cot = _x(t=7), jax.random.normal(jax.random.key(2), (N, 7, model.state_dim))
    ours = jax.jit(jax.grad(lambda p: jnp.sum(truncated_rollout_states(model, p, x, 3) * cot)))(params)
    ref = jax.jit(jax.grad(lambda p: jnp.sum(_joint_loop(model, p, x, cut_every=3) * cot)))(params)
    full = jax.jit(jax.grad(lambda p: jnp.sum(_joint_loop(model, p, x) * cot)))(params)
    assert _max_diff(ours, ref) < 1e-5
    assert _max_diff(ours, full) > 1e-4  # the cut matters


def test_memoryless_rollout_cuts_every_layer():
    model, params = _model("gru", residual=True)
    x = _x()
    reset = jax.random.normal(jax.random.key(7), (T, model.state_dim))
    states = jax.jit(lambda x: rollout_states(model, params, x, reset=reset))(x)
    changed = jax.jit(lambda x: rollout_states(model, params, x, reset=reset))(x.at[:, :-1].add(1.0))
    np.testing.assert_array_equal(states[:, -1], changed[:, -1])  # no layer remembers anything
    step = jax.vmap(model.joint_step, in_axes=(None, 0, 0))
    np.testing.assert_allclose(states[:, 2], step(params, jnp.broadcast_to(reset[2], (N, model.state_dim)), x[:, 2]), atol=1e-6)


@pytest.mark.parametrize("jacobian", ["full", "diagonal"])
def test_deer_solves_the_stack_layer_by_layer_and_its_adjoint_is_bptts_gradient(jacobian):
    model, params = _model("gru", residual=True, norm="rms")
    x, cot = _x(), jax.random.normal(jax.random.key(2), (N, T, OUT))
    opts = NewtonOptions(jacobian, max_iters=T, tol=1e-7)

    @jax.jit
    def run(p):
        states, stats = solve_stack(model, p, x, jnp.zeros((N, T, model.state_dim)), opts)
        g = jax.grad(lambda q: jnp.sum(readout_all(model, q, differentiable_stack(model, q, x, states)) * cot))(p)
        return states, [s.converged for s in stats], g

    states, converged, g = run(params)
    truth = rollout_states(model, params, x)
    np.testing.assert_allclose(states, truth, atol=1e-5)
    assert len(converged) == 2 and all(bool(jnp.all(c)) for c in converged)
    bptt = jax.jit(jax.grad(lambda q: jnp.sum(readout_all(model, q, rollout_states(model, q, x)) * cot)))(params)
    assert _max_diff(g, bptt) < 1e-4


def test_parallel_on_the_true_tables_is_bptt_with_zero_consistency_in_every_layer():
    spec = _spec([{"type": "bptt", "optimizer": SGD}, {"type": "parallel", "optimizer": SGD}], block={"residual": True})
    exp = build_experiment(spec)
    bptt, par = (m.build(exp.model, exp.task) for m in spec.methods)
    d, params = exp.train, exp.init_params

    def metrics(p, table, truth):
        return par.eval_metrics(par.init(None, p, d) | {"table": table}, d, truth, jnp.float32(0))

    @jax.jit
    def compute(p):
        table = rollout_states(exp.model, p, d.x)
        return bptt.loss(p, d.x, d.y, d.mask), par.loss(p, table, d.x, d.y, d.mask), metrics(p, table, table)

    loss, (objective, aux), ev = compute(params)
    np.testing.assert_allclose(aux["task_loss"], loss, rtol=1e-5)
    assert float(aux["consistency"]) < 1e-10
    for i in (0, 1):
        assert float(ev[f"consistency_layer{i}"]) < 1e-10 and float(ev[f"table_rollout_dist_layer{i}"]) == 0.0
    # One table per layer, side by side: each layer's distance and residual are measured.
    zeros = jnp.zeros((d.x.shape[0], d.x.shape[1], exp.model.state_dim))
    ev0 = jax.jit(lambda p: metrics(p, zeros, rollout_states(exp.model, p, d.x)))(params)
    assert all(float(ev0[f"{k}_layer{i}"]) > 1e-4 for k in ("consistency", "residual_mean", "table_rollout_dist") for i in (0, 1))


def _method_config(name):
    return {"type": name, "optimizer": SGD, **REQUIRED_METHOD_FIELDS.get(name, {})}


@pytest.mark.parametrize("cell", CELL_NAMES)
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_method_trains_a_two_layer_stack_of_every_cell(method, cell):
    """Two steps of the loop's own jitted step: every layer's parameters (and the norm between
    them) move, and the objective is finite. (Each method's evaluation of a stack is run by the
    tests above and by the end-to-end runs below.)"""
    spec = _spec([_method_config(method)], cell=cell, steps=2, block={"residual": True, "norm": "rms"})
    exp = build_experiment(spec)
    m = spec.methods[0].build(exp.model, exp.task)
    state = init_state(exp, m)
    before = jax.tree.map(np.asarray, m.params(state))
    step = jax.jit(make_train_step(m, exp.train_key, spec.task.train_sequences, spec.train.batch_size))
    for k in range(2):
        state, metrics = step(state, exp.train, jnp.int32(k))
    assert np.isfinite(float(metrics["objective"]))
    after = m.params(state)
    for name in ("cell", "cell_1", "norm_1", "readout"):
        assert _max_diff(before[name], after[name]) > 0, (method, cell, name)


def test_deer_at_two_layers_tracks_bptt_for_50_sgd_steps():
    spec = _spec([{"type": "bptt", "optimizer": SGD}, {"type": "deer", "optimizer": SGD, "tol": 1e-6}], steps=50, log_every=1)
    exp = build_experiment(spec)
    curves, last = {}, {}
    for cfg in spec.methods:
        lines = []
        record = run_method(exp, cfg, lines.append)
        assert record["status"] == "completed", record["error"]
        curves[cfg.type] = np.array([line["train_objective"] for line in lines if "train_objective" in line])
        last[cfg.type] = lines[-1]
    assert len(curves["deer"]) == 50
    np.testing.assert_allclose(curves["deer"], curves["bptt"], rtol=1e-4)
    assert curves["bptt"][-1] < curves["bptt"][0]  # it trained
    assert {f"newton_iters_mean_layer{i}" for i in (0, 1)} <= set(last["deer"])
    assert last["deer"]["newton_rollout_dist_layer1"] < 1e-4


# ----------------------------------------------------------------------------- spec, records, resume, memory


def test_one_layer_is_recorded_as_before_and_a_stack_round_trips():
    one = _spec([_method_config("bptt")], layers=1)
    assert "layers" not in one.model_dump(mode="json")["model"] and "block" not in one.model_dump(mode="json")["model"]
    two = _spec([_method_config("bptt")], block={"norm": "layer"})
    dumped = two.model_dump(mode="json")["model"]
    assert dumped["layers"] == 2 and dumped["block"] == {"residual": False, "norm": "layer"}
    assert validate_spec(two.model_dump(mode="json")) == two


def test_a_stack_resumes_from_its_checkpoint_exactly(tmp_path):
    # The checkpoint holds every layer's table, side by side, and their per-row optimizer states.
    methods = [{"type": "parallel", "optimizer": SGD}]
    spec = _spec(methods, block={"residual": True, "norm": "rms"}, steps=4, log_every=1, checkpoint_every=2)
    reference = tmp_path / "reference"
    assert run_experiment(spec, reference)["status"] == "completed"
    out = tmp_path / "run"
    with pytest.raises(Crash):
        run_experiment(spec, out, CrashAt("parallel", 3))
    summary = run_experiment(spec, out, resume=True)
    assert summary["resumes"][0]["from_step"] == {"parallel": 2}
    assert metric_lines(out) == metric_lines(reference)
    a, b = (json.loads((d / "summary.json").read_text()) for d in (out, reference))
    assert [r["final"] for r in a["runs"]] == [r["final"] for r in b["runs"]]


def test_memory_estimate_grows_with_layers_and_covers_the_compiled_step():
    from seqpar.train import memory
    from seqpar.train.loop import compiled_memory_mb, init_state, make_train_step

    methods = [{"type": "deer", "optimizer": SGD}]
    one, two = (memory.estimate(_spec(methods, layers=layers, length=64)) for layers in (1, 2))
    assert two.params > one.params and two.state > one.state and two.activations > one.activations
    spec = _spec(methods, length=64)
    exp = build_experiment(spec)
    m = spec.methods[0].build(exp.model, exp.task)
    compiled = jax.jit(make_train_step(m, exp.train_key, 8, 4)).lower(init_state(exp, m), exp.train, jnp.int32(0)).compile()
    mb = compiled_memory_mb(compiled)
    assert mb is not None and mb * 2**20 <= two.total - two.overhead


# ----------------------------------------------------------------------------- bad input

BASE = """\
name: tiny
seed: 0
task: {type: delayed_recall, length: 8, lag: 2, vocab: 4, train_sequences: 16, test_sequences: 16}
model:
  cell: gru
  hidden: 8
  layers: 2
train: {steps: 2, batch_size: 8}
methods:
  - {type: bptt, optimizer: {type: sgd, lr: 0.1}}
"""

BAD = [
    ("zero layers", BASE.replace("layers: 2", "layers: 0"), ["model.layers", "line 7", "greater than 0"]),
    ("unknown norm", BASE.replace("layers: 2", "layers: 2\n  block: {norm: batch}"), ["model.block.norm", "line 8", "'none'"]),
    ("misspelt block key", BASE.replace("layers: 2", "layers: 2\n  block: {residul: true}"), ["model.block.residul", "residual"]),
    ("number for residual", BASE.replace("layers: 2", "layers: 2\n  block: {residual: 1}"), ["model.block.residual", "true or false"]),
    ("block on one layer", BASE.replace("layers: 2", "layers: 1\n  block: {residual: true}"), ["model.block.residual", "layers >= 2"]),
]


@pytest.mark.parametrize("text, expect", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_stack_options_are_one_line_exit_2_and_write_nothing(tmp_path, text, expect):
    spec = tmp_path / "bad.yaml"
    spec.write_text(text)
    out, root = tmp_path / "out", tmp_path / "results"
    res = CliRunner().invoke(app, ["run", str(spec), "--out", str(out), "--results-root", str(root), "--quiet"])
    assert res.exit_code == 2, res.output
    msg = res.output.strip()
    assert len(msg.splitlines()) == 1 and msg.startswith(f"error: {spec}"), msg
    for s in expect:
        assert s in msg, (s, msg)
    assert not out.exists() and not root.exists()

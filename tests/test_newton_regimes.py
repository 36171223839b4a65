"""Newton in its authors' regimes: Picard, ParaRNN's fixed budget from f(0, x) in its own block and
initialisation, and what an unconverged solve hands the optimizer.

Fixed tolerances: states 1e-5, gradients 1e-4 relative (as tests/test_newton.py).
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from seqpar import testing as checks
from seqpar.model.model import build_model
from seqpar.model.newton import NewtonOptions, differentiable_states, f0_guess, solve_states
from seqpar.model.rollout import rollout_states
from seqpar.spec import SpecError, validate_spec
from seqpar.train.loop import build_experiment, make_train_step, run_method

SGD = {"type": "sgd", "lr": 0.05}
T = 12


def _model(cell="gru", **structure):
    return build_model(cell, 3, 6, 3, jax.random.key(0), **structure)


def _x(n=3, t=T):
    return jax.random.normal(jax.random.key(1), (n, t, 3))


# ----------------------------------------------------------------------------- Picard


@pytest.mark.parametrize("cell", ["gru", "paragru", "paralstm", checks.cell_names()[-1]])
def test_picard_makes_one_more_leading_state_exact_per_iteration_and_converges_by_t(cell):
    """Picard (jacobian: none): each iteration s <- f(s_prev, x) at every step at once; after k
    iterations from any guess the first k states are the rollout's; converged in at most T."""
    model, params = _model(cell)
    layer = model.layer(0)
    x = _x()
    truth = rollout_states(model, params, x)
    guess = jax.random.normal(jax.random.key(2), truth.shape)
    for k in (1, 3, 7):
        states, stats = solve_states(layer, params, x, guess, NewtonOptions("none", max_iters=k, tol=0))
        assert int(jnp.min(stats.iterations)) == k
        np.testing.assert_allclose(states[:, :k], truth[:, :k], atol=1e-5)
    states, stats = solve_states(layer, params, x, guess, NewtonOptions("none", max_iters=T, tol=1e-6))
    assert bool(jnp.all(stats.converged)) and int(jnp.max(stats.iterations)) <= T
    np.testing.assert_allclose(states, truth, atol=1e-5)


def test_picard_trains_with_the_exact_adjoint(tiny_spec):
    """At convergence Picard's gradient is BPTT's (the adjoint is the exact one), step for step."""
    tiny_spec = copy.deepcopy(tiny_spec)
    tiny_spec["methods"] = [{"type": "bptt", "optimizer": SGD}, {"type": "deer", "jacobian": "none", "tol": 1e-6, "optimizer": SGD}]
    spec = validate_spec(tiny_spec)
    exp = build_experiment(spec)
    params = []
    for cfg in spec.methods:
        method = cfg.build(exp.model, exp.task)
        state = method.init(jax.random.fold_in(exp.train_key, 2), exp.init_params, exp.train)
        step = jax.jit(make_train_step(method, exp.train_key, 16, 8))
        for k in range(4):
            state, metrics = step(state, exp.train, jnp.int32(k))
        params.append(state["params"])
    assert checks.rel_err(params[1], params[0]) <= 1e-4


# ----------------------------------------------------------------------------- ParaRNN's regime


def test_a_fixed_budget_runs_exactly_k_iterations_from_f0_and_is_not_hitting_the_cap():
    """tol: 0 is a budget: every solve takes exactly max_iters iterations from f(0, x_t) and
    returns its last iterate; the gradient is the adjoint at that iterate (ParaRNN's)."""
    model, params = _model("paragru")
    layer = model.layer(0)
    x = _x()
    guess = f0_guess(layer, params, x)
    px = layer.project(params, x)
    expected = jax.vmap(jax.vmap(layer.step_projected, in_axes=(None, 0, 0)), in_axes=(None, 0, 0))(params, jnp.zeros_like(guess), px)
    np.testing.assert_allclose(guess, expected, atol=1e-7)  # the cell applied to a zero state, every step
    states, stats = solve_states(layer, params, x, None, NewtonOptions("full", max_iters=2, tol=0))
    assert stats.iterations.tolist() == [2, 2, 2]
    again, _ = solve_states(layer, params, x, guess, NewtonOptions("full", max_iters=2, tol=0))
    np.testing.assert_array_equal(states, again)  # None is f(0, x)
    truth = rollout_states(model, params, x)
    assert float(jnp.max(jnp.abs(states - truth))) > 1e-6  # two iterations: not the rollout yet
    cot = jax.random.normal(jax.random.key(3), truth.shape)
    at_iterate = jax.grad(lambda p: jnp.sum(differentiable_states(layer, p, x, states) * cot))(params)
    bptt = jax.grad(lambda p: jnp.sum(rollout_states(model, p, x) * cot))(params)
    assert checks.rel_err(at_iterate, bptt) > 1e-6  # biased, as ParaRNN's is, and measured below


def _deer_run(tiny_spec, **method):
    tiny_spec = copy.deepcopy(tiny_spec)
    tiny_spec["train"].update(steps=4, eval_every=2, log_every=1)
    tiny_spec["methods"] = [{"type": "deer", "optimizer": SGD, **method}]
    spec = validate_spec(tiny_spec)
    lines: list[dict] = []
    record = run_method(build_experiment(spec), spec.methods[0], lines.append)
    return record, lines


def test_a_budget_run_says_so_and_logs_its_gradient_bias(tiny_spec):
    record, lines = _deer_run(tiny_spec, tol=0, max_iters=1, warm_start="f0")
    assert record["status"] == "completed"
    train = [ln for ln in lines if "train_newton_iters_mean" in ln]
    assert all(ln["train_newton_iters_mean"] == 1 and ln["train_newton_hit_max"] == 0 for ln in train)  # a budget, not a cap
    assert all(ln["train_newton_fallback"] == 0 for ln in train)
    evals = [ln for ln in lines if "grad_cos_bptt" in ln]
    assert evals and all(0 < ln["grad_relerr_bptt"] and ln["grad_cos_bptt"] < 1 for ln in evals)


def test_a_converged_solve_hands_the_optimizer_bptts_gradient(tiny_spec):
    _, lines = _deer_run(tiny_spec, jacobian="diagonal", tol=1e-6)
    evals = [ln for ln in lines if "grad_cos_bptt" in ln]
    assert evals and all(ln["grad_cos_bptt"] > 1 - 1e-6 and ln["grad_relerr_bptt"] < 1e-3 for ln in evals)


def test_an_unconverged_solve_falls_back_to_bptts_gradient_exactly_or_is_applied_and_counted(tiny_spec):
    """One Newton iteration at a tolerance no solve meets: by default each step takes BPTT's gradient
    (the parameters follow BPTT's exactly); with unconverged: apply it takes the adjoint at the iterate."""
    tiny_spec = copy.deepcopy(tiny_spec)
    tiny_spec["methods"] = [
        {"type": "bptt", "optimizer": SGD},
        {"type": "deer", "label": "fallback", "max_iters": 1, "tol": 1e-9, "optimizer": SGD},
        {"type": "deer", "label": "apply", "max_iters": 1, "tol": 1e-9, "unconverged": "apply", "optimizer": SGD},
    ]
    spec = validate_spec(tiny_spec)
    exp = build_experiment(spec)
    finals, metrics = [], []
    for cfg in spec.methods:
        method = cfg.build(exp.model, exp.task)
        state = method.init(jax.random.fold_in(exp.train_key, 2), exp.init_params, exp.train)
        step = jax.jit(make_train_step(method, exp.train_key, 16, 8))
        for k in range(3):
            state, m = step(state, exp.train, jnp.int32(k))
        finals.append(state["params"])
        metrics.append(jax.device_get(m))
    assert checks.rel_err(finals[1], finals[0]) <= 1e-5
    assert metrics[1]["newton_fallback"] == 1 and metrics[1]["newton_fallback_total"] == 3
    assert checks.rel_err(finals[2], finals[0]) > 1e-4
    assert metrics[2]["newton_fallback_total"] == 0 and metrics[2]["newton_hit_max"] == 8


# ----------------------------------------------------------------------------- ParaRNN's block and initialisation


@pytest.mark.parametrize("cell", ["paragru", "paralstm"])
def test_the_pararnn_block_and_init_build_and_newton_solves_them(cell):
    """Every check a cell passes holds in ParaRNN's block with ParaRNN's initialisation: the scan is
    a loop, Newton converges to the rollout, its adjoint is BPTT's gradient."""
    cfg = validate_spec(
        {
            "name": "b",
            "task": {"type": "delayed_recall", "length": 8, "lag": 2, "vocab": 3, "train_sequences": 8, "test_sequences": 8},
            "model": {"cell": {"type": cell, "init": "pararnn"}, "hidden": 6, "layers": 2, "block": "pararnn"},
            "train": {"steps": 1, "batch_size": 8},
            "methods": [{"type": "bptt", "optimizer": SGD}],
        }
    ).model
    model, params = build_model(cfg.cell, 3, 6, 3, jax.random.key(0), **cfg.structure())
    assert model.block == "pararnn" and "block_1" in params and "norm_top" in params
    a = np.asarray(params["cell"]["a"][...])
    assert 0.2 * 2 / (5 * 6) ** 0.5 < a.std() < 3 * 2 / (5 * 6) ** 0.5  # normal, std 2/√(5H)
    bias = np.asarray(params["cell"]["wx"]["bias"][...])
    np.testing.assert_allclose(bias[:6], -np.linspace(0, 1, 6), atol=1e-7)  # the first gate's −linspace(0, 1, H)
    x = _x(t=8)
    truth = rollout_states(model, params, x)
    from seqpar.model.newton_stack import solve_stack

    states, stats = solve_stack(model, params, x, None, NewtonOptions("full", max_iters=50, tol=1e-6))
    assert all(bool(jnp.all(st.converged)) for st in stats)
    np.testing.assert_allclose(states, truth, atol=1e-5)


@pytest.mark.parametrize("cell", ["paragru", "paralstm"])
def test_a_recorded_pararnn_init_spec_reads_back(cell):
    """A run's spec.yaml writes every field (recurrent_init, forget_bias at their defaults): `--resume` reads it back."""
    from seqpar.spec import spec_to_yaml

    raw = {
        "name": "b",
        "task": {"type": "delayed_recall", "length": 8, "lag": 2, "vocab": 3, "train_sequences": 8, "test_sequences": 8},
        "model": {"cell": {"type": cell, "init": "pararnn"}, "hidden": 4},
        "train": {"steps": 1, "batch_size": 8},
        "methods": [{"type": "bptt", "optimizer": SGD}],
    }
    spec = validate_spec(raw)
    again = validate_spec(yaml.safe_load(spec_to_yaml(spec)))
    assert again.model.cell == spec.model.cell


def test_bad_regime_options_name_the_key():
    base = {
        "name": "b",
        "task": {"type": "delayed_recall", "length": 8, "lag": 2, "vocab": 3, "train_sequences": 8, "test_sequences": 8},
        "train": {"steps": 1, "batch_size": 8},
        "methods": [{"type": "bptt", "optimizer": SGD}],
    }
    cases = [
        ({"cell": {"type": "paragru", "init": "pararnn", "recurrent_init": 0.5}}, "model.cell.recurrent_init: only with init: uniform"),
        ({"cell": {"type": "paralstm", "init": "pararnn", "forget_bias": 2.0}}, "model.cell.forget_bias: only with init: uniform"),
        ({"cell": "gru", "layers": 2, "block": {"style": "pararnn", "residual": True}}, "model.block.residual: the pararnn block has"),
        ({"cell": "gru", "block": "transformer"}, "model.block: Input should be 'plain' or 'pararnn' (got 'transformer')"),
    ]
    for model, message in cases:
        with pytest.raises(SpecError) as e:
            validate_spec({**base, "model": model})
        assert message in str(e.value), str(e.value)

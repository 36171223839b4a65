"""Truncated BPTT: same loss value as BPTT, gradient cut at window boundaries."""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqpar.model.rollout import rollout_states
from seqpar.spec import SpecError, validate_spec
from seqpar.train.loop import build_experiment
from seqpar.train.runner import run_experiment

ADAM = {"type": "adam", "lr": 1e-2}


def _methods(tiny_spec, *configs):
    spec_dict = copy.deepcopy(tiny_spec)
    spec_dict["methods"] = [{"optimizer": ADAM, "label": f"m{i}", **c} for i, c in enumerate(configs)]
    spec = validate_spec(spec_dict)
    exp = build_experiment(spec)
    return exp, [m.build(exp.model, exp.task) for m in spec.methods]


def _max_diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _value_and_grad(method, params, d):
    return jax.jit(jax.value_and_grad(method.loss))(params, d.x, d.y, d.mask)


def test_window_equal_to_length_is_full_bptt(tiny_spec):
    exp, (bptt, tbptt) = _methods(tiny_spec, {"type": "bptt"}, {"type": "truncated_bptt", "window": 8})
    loss_b, grad_b = _value_and_grad(bptt, exp.init_params, exp.train)
    loss_t, grad_t = _value_and_grad(tbptt, exp.init_params, exp.train)
    np.testing.assert_allclose(loss_t, loss_b, atol=1e-5)
    for g, r in zip(jax.tree.leaves(grad_t), jax.tree.leaves(grad_b), strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [1, 3, 4])
def test_short_windows_keep_the_loss_value_and_cut_the_gradient(tiny_spec, window):
    """Loss equals BPTT's; gradient equals a step-by-step loop that stops the state gradient every `window` steps."""
    exp, (bptt, tbptt) = _methods(tiny_spec, {"type": "bptt"}, {"type": "truncated_bptt", "window": window})
    d, params, model = exp.train, exp.init_params, exp.model
    loss_b, grad_b = _value_and_grad(bptt, params, d)
    loss_t, grad_t = _value_and_grad(tbptt, params, d)
    np.testing.assert_allclose(loss_t, loss_b, atol=1e-5)
    assert _max_diff(grad_t, grad_b) > 1e-4  # lag 2 crosses window boundaries: gradients must differ

    @jax.jit
    @jax.grad
    def reference(p):
        s = jnp.zeros((d.x.shape[0], model.state_dim))
        states = []
        for t in range(d.x.shape[1]):  # a Python loop, no scan: the definition of the truncation
            if t % window == 0:
                s = jax.lax.stop_gradient(s)
            s = model.step_batch(p, s, d.x[:, t])
            states.append(s)
        out = jax.vmap(lambda st: model.readout_batch(p, st), in_axes=1, out_axes=1)(jnp.stack(states, 1))
        return exp.task.loss(out, d.y, d.mask)

    for g, r in zip(jax.tree.leaves(grad_t), jax.tree.leaves(reference(params)), strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


def test_window_1_gradient_is_the_parallel_task_gradient_on_the_true_rollout(tiny_spec):
    """With k=1 each step sees its incoming state as a constant: exactly embedding-parallel's task
    gradient (readout from the cell, no consistency term) with the table set to the true rollout."""
    exp, (tbptt, par) = _methods(tiny_spec, {"type": "truncated_bptt", "window": 1}, {"type": "parallel", "consistency_weight": 0.0})
    d, params = exp.train, exp.init_params
    _, grad_t = _value_and_grad(tbptt, params, d)
    table = rollout_states(exp.model, params, d.x)
    grad_p = jax.jit(jax.grad(lambda p: par.loss(p, table, d.x, d.y, d.mask)[0]))(params)
    for g, r in zip(jax.tree.leaves(grad_t), jax.tree.leaves(grad_p), strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


def test_truncated_bptt_runs_end_to_end(tiny_spec, tmp_path):
    tiny_spec["methods"] = [{"type": "truncated_bptt", "window": 3, "optimizer": ADAM}]
    summary = run_experiment(validate_spec(tiny_spec), tmp_path)
    (run,) = summary["runs"]
    assert run["status"] == "completed" and run["label"] == "truncated_bptt"
    diag = run["diagnostics"]
    # Its objective is the rollout loss itself, so the gap is the generalisation gap.
    np.testing.assert_allclose(diag["objective"], diag["rollout_loss_train"], atol=1e-5)
    assert np.isfinite(diag["gap"]) and np.isfinite(diag["train_grad_norm_params"])


def test_window_must_be_positive(tiny_spec):
    tiny_spec["methods"] = [{"type": "truncated_bptt", "window": 0, "optimizer": ADAM}]
    with pytest.raises(SpecError, match=r"methods\.0\.window: Input should be greater than 0"):
        validate_spec(tiny_spec)

"""Core correctness: gradients, method equivalence, single compilation, determinism."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqpar.methods.base import Batch
from seqpar.model.rollout import evaluate, readout_all, rollout_states
from seqpar.sharding import stratified_batch_indices
from seqpar.spec import validate_spec
from seqpar.train.loop import build_experiment, init_state, make_train_step
from seqpar.train.runner import run_experiment


def _experiment(spec_dict):
    spec = validate_spec(spec_dict)
    return spec, build_experiment(spec)


def _method(spec, exp, i):
    return spec.methods[i].build(exp.model, exp.task)


def test_bptt_gradient_matches_unrolled_loop_and_finite_differences(tiny_spec):
    """The scan-based BPTT gradient against (a) a Python-unrolled loop, (b) float64 central differences."""
    spec, exp = _experiment(tiny_spec)
    bptt = _method(spec, exp, 0)
    d = exp.train
    grad = jax.grad(bptt.loss)(exp.init_params, d.x, d.y, d.mask)

    def unrolled_loss(params):
        s = jnp.zeros((d.x.shape[0], exp.model.state_dim))
        total, count = 0.0, 0.0
        for t in range(d.x.shape[1]):  # explicit Python loop: no scan, no vmap over time
            s = jnp.stack([exp.model.step(params, s[i], d.x[i, t]) for i in range(d.x.shape[0])])
            logits = jnp.stack([exp.model.readout(params, s[i]) for i in range(d.x.shape[0])])
            logp = jax.nn.log_softmax(logits)
            nll = -jnp.take_along_axis(logp, d.y[:, t, None], axis=1)[:, 0]
            total += jnp.sum(nll * d.mask[:, t])
            count += jnp.sum(d.mask[:, t])
        return total / count

    ref = jax.grad(unrolled_loss)(exp.init_params)
    for g, r in zip(jax.tree.leaves(grad), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-7)

    # Central differences in float64 on a few coordinates of every parameter array.
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), exp.init_params)
        x64 = jnp.asarray(d.x, jnp.float64)
        loss64 = lambda p: bptt.loss(p, x64, d.y, d.mask)  # noqa: E731
        g64 = jax.grad(loss64)(p64)
        leaves, treedef = jax.tree.flatten(p64)
        rng = np.random.default_rng(0)
        eps = 1e-6
        for li, leaf in enumerate(leaves):
            for flat in rng.choice(leaf.size, size=min(3, leaf.size), replace=False):
                idx = np.unravel_index(flat, leaf.shape)

                def shifted(delta, li=li, idx=idx):
                    new = list(leaves)
                    new[li] = leaves[li].at[idx].add(delta)
                    return loss64(jax.tree.unflatten(treedef, new))

                fd = (shifted(eps) - shifted(-eps)) / (2 * eps)
                analytic = jax.tree.leaves(g64)[li][idx]
                np.testing.assert_allclose(analytic, fd, rtol=1e-4, atol=1e-8)


def test_parallel_with_rollout_table_equals_bptt(tiny_spec):
    spec, exp = _experiment(tiny_spec)
    bptt, par = _method(spec, exp, 0), _method(spec, exp, 1)
    d, params = exp.train, exp.init_params
    table = rollout_states(exp.model, params, d.x)
    objective, aux = par.loss(params, table, d.x, d.y, d.mask)
    np.testing.assert_allclose(aux["task_loss"], bptt.loss(params, d.x, d.y, d.mask), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aux["consistency"], 0.0, atol=1e-5)
    np.testing.assert_allclose(objective, aux["task_loss"], atol=1e-5)


def test_train_step_compiles_once(tiny_spec):
    spec, exp = _experiment(tiny_spec)
    for i in range(len(spec.methods)):
        method = _method(spec, exp, i)
        traces = []
        inner = method.train_step

        def counting_step(*args, inner=inner, traces=traces):
            traces.append(1)
            return inner(*args)

        method.train_step = counting_step
        step = jax.jit(make_train_step(method, exp.train_key, 16, 8), donate_argnums=0)
        state = init_state(exp, method)
        with jax.set_mesh(exp.mesh):
            for k in range(3):
                state, _ = step(state, exp.train, jnp.int32(k))
        assert len(traces) == 1, f"{spec.methods[i].type} retraced"


def test_parallel_leaves_rows_outside_the_batch_untouched(tiny_spec):
    spec, exp = _experiment(tiny_spec)
    par = _method(spec, exp, 1)
    state = par.init(jax.random.key(0), exp.init_params, exp.train)
    # Make the table non-trivial, then take one step on rows {1, 5}.
    state["table"] = jax.random.normal(jax.random.key(1), state["table"].shape)
    before = jax.tree.map(np.asarray, state)
    idx = jnp.array([1, 5])
    d = exp.train
    new, _ = par.train_step(state, d, Batch(idx, d.x[idx], d.y[idx], d.mask[idx]), jnp.int32(0), jax.random.key(2))
    others = np.setdiff1d(np.arange(16), np.asarray(idx))
    np.testing.assert_array_equal(np.asarray(new["table"])[others], before["table"][others])
    for a, b in zip(jax.tree.leaves(new["table_opt_state"]), jax.tree.leaves(before["table_opt_state"]), strict=True):
        np.testing.assert_array_equal(np.asarray(a)[others], np.asarray(b)[others])
    assert not np.allclose(np.asarray(new["table"])[np.asarray(idx)], before["table"][np.asarray(idx)])


@pytest.mark.parametrize("strata", [1, 2, 4])
def test_batch_indices_cover_each_epoch_once_and_stay_in_their_stratum(strata):
    key = jax.random.key(0)
    batches = [np.asarray(stratified_batch_indices(key, jnp.int32(s), 16, 8, strata)) for s in range(4)]
    for epoch in (batches[:2], batches[2:]):
        assert sorted(np.concatenate(epoch).tolist()) == list(range(16))
    for b in batches:  # the k-th block of b/S rows comes from the k-th stratum of n/S rows
        np.testing.assert_array_equal(b.reshape(strata, -1) // (16 // strata), np.arange(strata)[:, None].repeat(8 // strata, 1))
    assert not np.array_equal(batches[0], batches[2])  # a fresh permutation each epoch
    np.testing.assert_array_equal(stratified_batch_indices(key, jnp.int32(0), 5, 5, 1), np.arange(5))


def test_rollout_evaluator_matches_manual_loss(tiny_spec):
    spec, exp = _experiment(tiny_spec)
    d, params = exp.test, exp.init_params
    res = evaluate(exp.model, exp.task, params, d)
    logits = readout_all(exp.model, params, res.states)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), d.y[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(res.loss, jnp.sum(nll * d.mask) / jnp.sum(d.mask), rtol=1e-6)
    # The masked first `lag` steps never count, whatever the model predicts there.
    assert float(jnp.sum(d.mask[:, :2])) == 0.0


def test_same_spec_and_seed_give_identical_results(tiny_spec, tmp_path):
    spec = validate_spec(tiny_spec)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = run_experiment(spec, tmp_path / "a")
    b = run_experiment(spec, tmp_path / "b")
    assert [r["final"] for r in a["runs"]] == [r["final"] for r in b["runs"]]
    assert all(r["status"] == "completed" for r in a["runs"])


@pytest.mark.parametrize("seed", [0, 1])
def test_train_and_test_sets_differ(tiny_spec, seed):
    tiny_spec["seed"] = seed
    _, exp = _experiment(tiny_spec)
    assert not np.array_equal(np.asarray(exp.train.x), np.asarray(exp.test.x))

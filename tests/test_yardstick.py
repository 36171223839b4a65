"""The bench's yardstick: a minimal quasi-DEER that must compute what seqpar's solver computes,
and the rows `seqpar bench` adds for it (correctness only, no timing asserts)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqpar.bench import grid as B
from seqpar.bench.measure import run_bench
from seqpar.bench.yardstick import yardstick_solve
from seqpar.model.model import build_model
from seqpar.model.newton import NewtonOptions, solve_states
from seqpar.model.rollout import rollout_states


@pytest.mark.parametrize("cell", ["gru", "paragru"])
def test_yardstick_iterates_are_the_solvers_and_converge_to_the_rollout(cell):
    """Iteration for iteration the same quasi-DEER (the GRU's pass written apart from the cell code)."""
    model, params = build_model(cell, 3, 8, 3, jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2, 12, 3))
    guess = jnp.zeros((2, 12, model.state_dim))

    @jax.jit
    def both(params):
        out = {}
        for iters in (3, 12):
            solved, stats = solve_states(model, params, x, guess, NewtonOptions("diagonal", max_iters=iters, tol=0.0))
            out[iters] = (solved, stats.iterations, yardstick_solve(model, cell, params, x, iters))
        return out, rollout_states(model, params, x)

    out, truth = both(params)
    solved, taken, yard = out[3]
    np.testing.assert_array_equal(taken, 3)  # 3 of T = 12: far from a fixed point, so all of them ran
    np.testing.assert_allclose(yard, solved, atol=1e-5)
    np.testing.assert_allclose(out[12][2], truth, atol=1e-5)  # T iterations: exact


def test_bench_adds_the_solve_and_the_yardstick_beside_quasi_deer(tmp_path, monkeypatch):
    from seqpar.bench import measure

    monkeypatch.setattr(measure, "matmul_peak", lambda: {"flops_per_s": 1e9, "per_size": {}, "dtype": "float32"})  # not timed here
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "name: yard\n"
        "task: {type: delayed_recall, length: 8, lag: 2, vocab: 4}\n"
        "model: {cell: gru, hidden: 8}\n"
        "train: {steps: 1, batch_size: 1}\n"
        "methods:\n  - {type: deer, label: quasi, jacobian: diagonal, optimizer: {type: sgd, lr: 0.1}}\n"
    )
    grid = B.Grid(lengths=(8,), batches=(2,), hidden=8, unrolls=(1,), min_repeats=2, min_time_s=0, warmup=1)
    rec = run_bench(B.load_bench_spec(spec), grid)
    assert [p["label"] for p in rec["points"]] == ["bptt", "quasi"]
    solve, yard = rec["yardstick"]
    assert (solve["label"], yard["label"]) == ("quasi solve", "yardstick")
    assert yard["step_metrics"]["newton_iters_mean"] == max(1, round(rec["points"][1]["step_metrics"]["newton_iters_max"]))
    for r in (solve, yard):
        assert r["step_ms"]["n"] >= 2 and r["ms_per_iteration"] > 0 and r["speedup_vs_bptt"] > 0
    assert solve["vs_yardstick"] == pytest.approx(solve["ms_per_iteration"] / yard["ms_per_iteration"])

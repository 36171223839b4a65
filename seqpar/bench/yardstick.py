"""The yardstick row: how close seqpar's Newton solve is to the simplest correct quasi-DEER.

For every grid point with a quasi-DEER method (a `deer` method whose solve runs on
Jacobian diagonals and no damping) two more rows are timed in the same run, the same
way as the training steps (compiled apart, warm-up, `block_until_ready`, medians):

- `<label> solve`: `seqpar.model.newton.solve_states` alone (no gradient), asked for
  the iterations the method's last timed training step took (`tol` 0, so it runs them);
- `yardstick`: a minimal plain-JAX quasi-DEER of the same iterations: the input
  projection once, then per iteration one pass of the cell giving `f` and `diag J`,
  one elementwise associative scan, nothing else (no stopping rule, no residual norms,
  no best-iterate bookkeeping). For a GRU the pass is written out here from the
  parameters, independent of the cell code; other cells use their `step_and_diagonal`.

The table's `ms/it` column is each row's median over its iterations, and `÷yard` the
solve's per-iteration time over the yardstick's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seqpar.model.newton import NewtonOptions, solve_states, solve_structure

YARDSTICK = "yardstick"


def quasi_deer_method(methods: list[Any], model) -> Any | None:
    """The first method whose solve is quasi-DEER on diagonals (the yardstick's kind), or None."""
    for cfg in methods:
        if cfg.type == "deer" and cfg.damping == 0 and solve_structure(model, cfg.jacobian) == "diagonal":
            return cfg
    return None


def _gru_pass(params):
    """(s, px) -> (f, diag J) of the GRU (reset after the matmul), straight from its parameters."""
    kernel, bias = jnp.asarray(params["cell"]["wh"]["kernel"][...]), jnp.asarray(params["cell"]["wh"]["bias"][...])
    n = kernel.shape[0]
    ur, uz, un = (jnp.diagonal(kernel[:, i * n : (i + 1) * n]) for i in range(3))

    def one(s, px):
        hr, hz, hn = jnp.split(s @ kernel + bias, 3)
        xr, xz, xn = jnp.split(px, 3)
        r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
        c = jnp.tanh(xn + r * hn)
        dc = (1 - c * c) * (r * (1 - r) * ur * hn + r * un)
        return (1 - z) * c + z * s, z + (s - c) * z * (1 - z) * uz + (1 - z) * dc

    return one


def yardstick_solve(model, cell: str, params, x: jax.Array, iters: int) -> jax.Array:
    """`iters` plain quasi-DEER iterations from zeros on every row of `x: (N, T, D)`."""
    one_pass = _gru_pass(params) if cell == "gru" else (lambda s, px: model.step_and_diagonal(params, s, px))
    s0 = jnp.zeros((model.state_dim,), x.dtype)

    def compose(earlier, later):
        return later[0] * earlier[0], later[0] * earlier[1] + later[1]

    def row(xi):
        px = model.project(params, xi)

        def iteration(_, s):
            prev = jnp.concatenate([s0[None], s[:-1]])
            f, a = jax.vmap(one_pass)(prev, px)
            a = a.at[0].set(0.0)
            return jax.lax.associative_scan(compose, (a, f - a * prev))[1]

        return jax.lax.fori_loop(0, iters, iteration, jnp.zeros((xi.shape[0], model.state_dim), x.dtype))

    return jax.vmap(row)(x)


def yardstick_rows(exp, cfg, cell: str, grid, iters: int, timed: Callable) -> list[dict[str, Any]]:
    """seqpar's solve and the yardstick at this point, `iters` iterations each (see the module doc);
    `timed(fn, args, grid) -> (measurement, output)` compiles and times as the bench does."""
    model, params, x = exp.model, exp.init_params, exp.train.x
    guess = jnp.zeros((*x.shape[:2], model.state_dim), x.dtype)
    opts = NewtonOptions(cfg.jacobian, max_iters=iters, tol=0.0)
    solve, (_, stats) = timed(lambda p, x: solve_states(model, p, x, guess, opts), (params, x), grid)
    yard, _ = timed(lambda p, x: yardstick_solve(model, cell, p, x, iters), (params, x), grid)
    solve_iters = float(np.mean(np.asarray(stats.iterations)))
    rows = []
    for label, method, m, it in ((f"{cfg.display_label} solve", "newton-solve", solve, solve_iters), (YARDSTICK, YARDSTICK, yard, iters)):
        rows.append(
            {
                "method": method,
                "label": label,
                "cell": cell,
                "length": int(x.shape[1]),
                "steps_per_sequence": int(x.shape[1]),
                "batch": int(x.shape[0]),
                "hidden": grid.hidden,
                **m,
                "unroll": None,
                "unroll_candidates": None,
                "minor_faults_per_step": 0.0,
                "peak_rss_mb": None,
                "table_bytes": 0,
                "step_metrics": {"newton_iters_mean": it},
                "ms_per_iteration": m["step_ms"]["median"] / max(it, 1.0),
            }
        )
    rows[0]["vs_yardstick"] = rows[0]["ms_per_iteration"] / rows[1]["ms_per_iteration"]
    return rows

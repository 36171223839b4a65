"""`seqpar tolerance`: Newton's error against its iterations, to choose the default tolerance from measurement.

For each cell and length, the k-th Newton iterate (k = 1, 2, ...; from zeros, exactly k
iterations: `tol: 0`) is compared with the sequential rollout (`lax.scan`): its residual
max_t ‖f(s_{t-1}, x_t) − s_t‖ (what the stopping rule sees), its largest state error, and the
relative error of the adjoint gradient taken at it against BPTT's (what the optimizer would
receive). In float32 the errors stop falling at a floor set by rounding; a tolerance above the
residual at that floor stops too early (the state and gradient errors are then far above the
floor), one below it is never met (every solve runs to the cap). `choose_tolerance` reads the
rule `tol: auto` uses off these curves (docs/findings/newton.md, generated from the record).

The inputs are the shipped delayed-recall task's (one-hot tokens), the cells at their
initialisation; quasi-DEER (diagonal Jacobians) on the dense GRU, full Newton on the GRU and on
the diagonal ParaGRU.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seqpar.bench.machine import machine
from seqpar.model.model import build_model
from seqpar.model.newton import AUTO_TOL_EPS, NewtonOptions, differentiable_states, solve_states
from seqpar.model.rollout import rollout_states
from seqpar.tasks.delayed_recall import DelayedRecallConfig

CASES = (("gru", "full"), ("gru", "diagonal"), ("paragru", "full"))


@dataclass(frozen=True)
class ToleranceGrid:
    lengths: tuple[int, ...] = (256, 1024, 4096)
    hidden: int = 64
    sequences: int = 4
    iterations: int = 16  # iterates measured: 1..iterations
    seed: int = 0


def curve(cell: str, jacobian: str, length: int, grid: ToleranceGrid) -> list[dict[str, Any]]:
    """One point per iteration k: residual, scale (1 + max ‖s‖), state error and gradient error."""
    task = DelayedRecallConfig(length=length, lag=2, vocab=8).build()
    key = jax.random.key(grid.seed)
    x = task.make_data(jax.random.fold_in(key, 1), grid.sequences).x
    model, params = build_model(cell, task.input_dim, grid.hidden, task.output_dim, jax.random.fold_in(key, 2))
    layer = model.layer(0)
    truth = rollout_states(model, params, x)
    cot = jax.random.normal(jax.random.fold_in(key, 3), truth.shape)
    bptt = jax.grad(lambda p: jnp.sum(rollout_states(model, p, x) * cot))(params)
    bptt_norm = float(jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(bptt))))
    guess = jnp.zeros_like(truth)

    @functools.partial(jax.jit, static_argnums=0)
    def at(k: int, params):
        states, stats = solve_states(layer, params, x, guess, NewtonOptions(jacobian, max_iters=k, tol=0))  # type: ignore[arg-type]
        grads = jax.grad(lambda p: jnp.sum(differentiable_states(layer, p, x, states) * cot))(params)
        diff = jnp.sqrt(sum(jnp.sum(jnp.square(a - b)) for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(bptt), strict=True)))
        scale = 1.0 + jnp.max(jnp.linalg.norm(states, axis=-1))
        return jnp.max(stats.residual), scale, jnp.max(jnp.abs(states - truth)), diff

    out = []
    for k in range(1, grid.iterations + 1):
        res, scale, err, gdiff = (float(v) for v in at(k, params))
        out.append(
            {
                "cell": cell,
                "jacobian": jacobian,
                "length": length,
                "iteration": k,
                "residual": res,
                "scale": scale,
                "state_error": err,
                "grad_relerr": gdiff / bptt_norm,
            }
        )
    return out


def run_tolerance(grid: ToleranceGrid, on_point: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    points = []
    for cell, jacobian in CASES:
        for length in grid.lengths:
            for p in curve(cell, jacobian, length, grid):
                points.append(p)
                if on_point is not None:
                    on_point(p)
    return {
        "grid": asdict(grid),
        "eps": float(np.finfo(np.float32).eps),
        "auto_tol_eps": AUTO_TOL_EPS,  # the rule in force when measured: tol = this · eps · (1 + max_t ‖s_t‖)
        "date": datetime.date.today().isoformat(),
        "machine": machine()["summary"],
        "points": points,
    }

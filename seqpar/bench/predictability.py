"""`seqpar predictability`: the gain sweep of Gonzalez, Kozachkov et al. (2025, Fig. 2), reproduced.

"Predictability enables parallelization of nonlinear state space models" shows that Newton's
method over the whole sequence (DEER) needs a handful of iterations when the recurrence's
largest Lyapunov exponent (LLE) is negative and jumps towards T of them when it is positive.
Their figure sweeps the gain g of a mean-field tanh RNN,

    s_t = W tanh(s_{t-1}) + u_t,   W = g / √D · N(0, 1) with a zero diagonal,
    u_t = A ⊙ sin(ω t + φ),  A ~ U(0, 0.2), ω ~ U(0.5, 3), φ ~ U(0, 2π) per unit,  s_0 ~ U(-1, 1),

at D = 100, from a random initial guess U(-1, 1), in float64 (their `experiments/fig2.py`, read
in the public repository lindermanlab/predictability_enables_parallelization). Every draw here
(one W, one input and one s_0 per `--sequences` index, its own seed) is solved by seqpar's own
solver (`seqpar.model.newton`): DEER (full Jacobians), quasi-DEER (their diagonals, here zero:
the diagonal of W is zero, so quasi-DEER is Picard iteration on this recurrence) and ELK
(DEER damped by λ = `damping`). A non-finite entry of an iterate is reset to the guess, as
those authors' `reset` does, and the solve goes on: a solve that has not met the tolerance by
`max_iters` (default T, their cap) is reported as such, a result, never an overflow.

Each point also carries the recurrence's LLE along the sequential trajectory (the first
`burn_in` steps run but not counted; three random tangent vectors, the spread between them
reported as its error) and, for a converged solve, how the adjoint gradient at the solved
states agrees with BPTT's (`grad_cos`). The renderers (table, figure) read the JSON only
(`seqpar.analysis.findings`), so the findings can be redrawn without JAX.
"""

from __future__ import annotations

import datetime
import functools
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from seqpar.bench.machine import machine
from seqpar.model.lle import tangent_log_growth
from seqpar.model.newton import NewtonOptions, differentiable_states, solve_states

SOLVERS = ("deer", "quasi-deer", "elk")


@dataclass(frozen=True)
class PredictabilityGrid:
    gains: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
    hidden: int = 100
    lengths: tuple[int, ...] = (100, 300, 1000, 3000)
    dtype: Literal["float32", "float64"] = "float64"
    init: Literal["zeros", "random"] = "random"
    sequences: int = 3  # draws (W, inputs, s_0) per gain, each its own seed
    solvers: tuple[str, ...] = SOLVERS
    max_iters: int | None = None  # None: T, the paper's cap
    damping: float = 1.0  # ELK's λ
    tol: float | None = None  # on max_t ‖r_t‖; None: 1e-8 in float64, seqpar's auto in float32
    burn_in: int = 100  # LLE steps run but not counted (the tangent vectors' transient)
    seed: int = 0
    lle_vectors: int = 3
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MeanField:
    """The mean-field tanh RNN as a single-layer view of seqpar's Newton solver (the interface of
    `seqpar.model.model.Layer`): the state is s, the parameters W, the "projected input" u_t."""

    state_dim: int
    dtype: Any
    jacobian_structure: str = "full"
    jacobian_block: int = 1

    def initial_state(self) -> jax.Array:
        return jnp.zeros((self.state_dim,), self.dtype)

    def project(self, params: jax.Array, x: jax.Array) -> jax.Array:
        return x

    def step_projected(self, params: jax.Array, s: jax.Array, u: jax.Array) -> jax.Array:
        return params @ jnp.tanh(s) + u

    def step(self, params: jax.Array, s: jax.Array, u: jax.Array) -> jax.Array:
        return self.step_projected(params, s, u)

    def step_and_jacobian(self, params: jax.Array, s: jax.Array, u: jax.Array) -> tuple[jax.Array, jax.Array]:
        t = jnp.tanh(s)
        return params @ t + u, params * (1.0 - t * t)[None, :]

    def step_and_diagonal(self, params: jax.Array, s: jax.Array, u: jax.Array) -> tuple[jax.Array, jax.Array]:
        t = jnp.tanh(s)
        return params @ t + u, jnp.diagonal(params) * (1.0 - t * t)


def draw(key: jax.Array, gain: float, hidden: int, length: int, dtype) -> tuple[jax.Array, jax.Array]:
    """(W, u): the weights and the inputs `(T, D)` of one draw, with s_0 folded into u_1
    (s_1 = W tanh(s_0) + u_1, so the solver's fixed initial state can be zero)."""
    kw, ka, ko, kp, k0 = jax.random.split(key, 5)
    w = gain / math.sqrt(hidden) * jax.random.normal(kw, (hidden, hidden), dtype)
    w = w * (1.0 - jnp.eye(hidden, dtype=dtype))
    amp = jax.random.uniform(ka, (hidden,), dtype, 0.0, 0.2)
    omega = jax.random.uniform(ko, (hidden,), dtype, 0.5, 3.0)
    phase = jax.random.uniform(kp, (hidden,), dtype, 0.0, 2 * math.pi)
    t = jnp.arange(length, dtype=dtype)[:, None]
    u = amp * jnp.sin(omega * t + phase)
    s0 = jax.random.uniform(k0, (hidden,), dtype, -1.0, 1.0)
    return w, u.at[0].add(w @ jnp.tanh(s0))


def rollout(cell: MeanField, w: jax.Array, u: jax.Array) -> jax.Array:
    def body(s, ut):
        s = cell.step(w, s, ut)
        return s, s

    return jax.lax.scan(body, cell.initial_state(), u)[1]


def point(cell: MeanField, w: jax.Array, u: jax.Array, guess: jax.Array, *, opts: NewtonOptions, cot: jax.Array) -> dict[str, jax.Array]:
    """One solve: iterations, whether it met the tolerance, its distance from the rollout, and the
    adjoint gradient's cosine with BPTT's (on the loss Σ_t ⟨c_t, s_t⟩)."""
    states, stats = solve_states(cell, w, u[None], guess[None], opts)
    truth = rollout(cell, w, u)
    g = jax.grad(lambda p: jnp.sum(differentiable_states(cell, p, u[None], states) * cot[None]))(w)
    t = jax.grad(lambda p: jnp.sum(rollout(cell, p, u) * cot))(w)
    cos = jnp.sum(g * t) / jnp.maximum(jnp.linalg.norm(g) * jnp.linalg.norm(t), jnp.finfo(w.dtype).tiny)
    return {
        "iterations": stats.iterations[0],
        "converged": stats.converged[0],
        "residual": stats.residual[0],
        "state_error": jnp.max(jnp.abs(states[0] - truth)),
        "grad_cos": cos,
    }


def lle(cell: MeanField, w: jax.Array, u: jax.Array, *, key: jax.Array, vectors: int, burn_in: int) -> jax.Array:
    """Per-vector LLE estimates `(vectors,)` along the sequential trajectory, the first `burn_in` steps not counted."""
    v0 = jax.random.normal(key, (vectors, cell.state_dim), u.dtype)
    return tangent_log_growth(lambda s, x: cell.step(w, s, x), cell.initial_state(), u, v0, discard=min(burn_in, u.shape[0] - 1))


def run_predictability(grid: PredictabilityGrid, on_point: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every (solver, gain, draw, length) point: the JSON record `predictability.json` holds."""
    if grid.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.float64 if grid.dtype == "float64" else jnp.float32
    tol = grid.tol if grid.tol is not None else (1e-8 if grid.dtype == "float64" else "auto")
    cell = MeanField(grid.hidden, dtype)
    points = []
    for solver in grid.solvers:
        for length in grid.lengths:
            cap = grid.max_iters if grid.max_iters is not None else length
            opts = NewtonOptions(
                jacobian="diagonal" if solver == "quasi-deer" else "full",
                max_iters=cap,
                tol=tol,  # type: ignore[arg-type]
                damping=grid.damping if solver == "elk" else 0.0,
                reset=True,
            )
            solve = jax.jit(functools.partial(point, cell, opts=opts))
            exponent = jax.jit(functools.partial(lle, cell, vectors=grid.lle_vectors, burn_in=grid.burn_in))
            for gain in grid.gains:
                for i in range(grid.sequences):
                    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(grid.seed), i), int(round(gain * 1000)))
                    w, u = draw(key, gain, grid.hidden, length, dtype)
                    kg, kc, kl = jax.random.split(jax.random.fold_in(key, 1), 3)
                    guess = jax.random.uniform(kg, u.shape, dtype, -1.0, 1.0) if grid.init == "random" else jnp.zeros_like(u)
                    t0 = time.perf_counter()
                    got = jax.device_get(solve(w, u, guess, cot=jax.random.normal(kc, u.shape, dtype)))
                    seconds = time.perf_counter() - t0
                    estimates = np.asarray(exponent(w, u, key=kl))
                    p = {
                        "solver": solver,
                        "gain": gain,
                        "draw": i,
                        "length": length,
                        "iterations": int(got["iterations"]),
                        "cap": cap,
                        "converged": bool(got["converged"]),
                        "residual": float(got["residual"]),
                        "state_error": float(got["state_error"]),
                        "grad_cos": float(got["grad_cos"]) if bool(got["converged"]) else None,
                        "lle": float(estimates.mean()),
                        "lle_spread": float(estimates.max() - estimates.min()),
                        "seconds": seconds,
                    }
                    points.append(p)
                    if on_point is not None:
                        on_point(p)
    return {
        "grid": asdict(grid),
        "date": datetime.date.today().isoformat(),
        "machine": machine()["summary"],
        "points": points,
    }

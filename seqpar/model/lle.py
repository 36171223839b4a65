"""The largest Lyapunov exponent (LLE) of a recurrence along its rollout: how predictable it is.

Gonzalez, Kozachkov et al. ("Predictability enables parallelization of nonlinear state
space models", 2025) show that the sign of the LLE decides whether parallel Newton (DEER,
quasi-DEER) converges in a few iterations (LLE < 0: errors in the guess are forgotten
along time, O((log T)^2) depth) or needs nearly T of them (LLE > 0). Putting the LLE
beside every evaluation says in advance which regime a trained cell is in.

The estimator is the classical one (Benettin et al. 1980): run the recurrence
`s_t = f(s_{t-1}, x_t)` and, alongside it, K tangent vectors `v_t = J_t v_{t-1}` with
`J_t = df/ds (s_{t-1}, x_t)`; renormalise every vector every step and average the logs
of the growth factors. Every tangent vector converges to the most expanding direction,
so each one estimates the largest exponent; averaging K random starts and N sequences
lowers the variance. `J_t v` is a Jacobian-vector product (`jax.jvp`, vmapped over the K
vectors with the primal step computed once): no `S x S` matrix is ever formed.

Everything is written against a plain step function on a flat state, so the same code
serves one cell (`Model.step`) and a deep stack's joint state (`model.joint_step`).
The exponent is per step; divide by the step's time for a rate per unit time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

StepFn = Callable[[jax.Array, jax.Array], jax.Array]  # (s_prev, x_t) -> s_t, one example, flat state

# Random initial tangent vectors per sequence in the training loop's evaluation hook: enough to
# average out an unlucky start, few enough that the hook costs about 3 extra rollouts.
LLE_VECTORS = 3


def tangent_log_growth(step: StepFn, s0: jax.Array, x: jax.Array, v0: jax.Array, discard: int = 0) -> jax.Array:
    """Per-step log growth of K tangent vectors along one sequence: `(K,)` LLE estimates.

    `s0: (S,)` the state before step 1, `x: (T, D)` the inputs, `v0: (K, S)` the initial
    tangent vectors (any nonzero length). The first `discard` steps are run but not counted
    (the vectors' alignment with the most expanding direction is a transient). A vector
    squeezed to exactly zero (a saturated cell) counts as growth by the dtype's smallest
    normal number, so the estimate stays finite and very negative."""
    tiny = jnp.finfo(v0.dtype).tiny
    counted = (jnp.arange(x.shape[0]) >= discard).astype(v0.dtype)
    v0 = v0 / jnp.maximum(jnp.linalg.norm(v0, axis=-1, keepdims=True), tiny)

    def body(carry, inp):
        s, v, total = carry
        xt, count = inp
        s_next, v = jax.vmap(lambda v_: jax.jvp(lambda s_: step(s_, xt), (s,), (v_,)), out_axes=(None, 0))(v)
        norm = jnp.maximum(jnp.linalg.norm(v, axis=-1), tiny)
        return (s_next, v / norm[:, None], total + count * jnp.log(norm)), None

    init = (s0, v0, jnp.zeros(v0.shape[0], v0.dtype))
    (_, _, total), _ = jax.lax.scan(body, init, (x, counted))
    return total / max(x.shape[0] - discard, 1)


def random_tangents(key: jax.Array, sequences: int, vectors: int, state_dim: int, dtype=jnp.float32) -> jax.Array:
    """`(sequences, vectors, state_dim)` unit vectors, uniform on the sphere."""
    v = jax.random.normal(key, (sequences, vectors, state_dim), dtype)
    return v / jnp.linalg.norm(v, axis=-1, keepdims=True)


def lle_estimates(step: StepFn, s0: jax.Array, x: jax.Array, key: jax.Array, vectors: int = LLE_VECTORS, discard: int = 0) -> jax.Array:
    """`(N, vectors)` LLE estimates of `s_t = step(s_{t-1}, x_t)` from `s0: (S,)` over `x: (N, T, D)`,
    one per sequence and random initial tangent vector drawn from `key`."""
    v0 = random_tangents(key, x.shape[0], vectors, s0.shape[-1], s0.dtype)
    return jax.vmap(functools.partial(tangent_log_growth, step, s0, discard=discard))(x, v0)


def largest_lyapunov_exponent(
    step: StepFn, s0: jax.Array, x: jax.Array, key: jax.Array, vectors: int = LLE_VECTORS, discard: int = 0
) -> jax.Array:
    """The LLE per step of `s_t = step(s_{t-1}, x_t)` from `s0: (S,)` over `x: (N, T, D)`: the mean
    over the N sequences and `vectors` random initial tangent vectors drawn from `key`."""
    return jnp.mean(lle_estimates(step, s0, x, key, vectors, discard))


def burn_in(length: int, given: int | None) -> int:
    """Steps of an LLE rollout run but not counted: `given`, or a quarter of the sequence."""
    return min(given, length - 1) if given is not None else length // 4


def joint_recurrence(model: Any, params: Any) -> tuple[StepFn, jax.Array]:
    """The model's whole recurrence on one flat state, and its fixed initial state.

    A stack (`model.joint_step`, contract of the deep-stack model) advances every layer at
    once on their concatenated states; a single cell is its own joint recurrence."""
    joint_step = getattr(model, "joint_step", None)
    if joint_step is None:
        return functools.partial(model.step, params), model.initial_state()
    s0 = jnp.concatenate([model.layer(i).initial_state() for i in range(model.layers)])
    return functools.partial(joint_step, params), s0


def model_lle(model: Any, params: Any, x: jax.Array, key: jax.Array, vectors: int = LLE_VECTORS, discard: int = 0) -> jax.Array:
    """The LLE per step of the model's (joint) recurrence along its rollouts over `x: (N, T, D)`
    from the fixed initial state (jit-able; the parameters get no gradient)."""
    return jnp.mean(model_lle_estimates(model, params, x, key, vectors, discard))


def model_lle_estimates(model: Any, params: Any, x: jax.Array, key: jax.Array, vectors: int = LLE_VECTORS, discard: int = 0) -> jax.Array:
    """`(N, vectors)`: `model_lle`'s estimates, one per sequence and tangent vector."""
    step, s0 = joint_recurrence(model, jax.lax.stop_gradient(params))
    return lle_estimates(step, s0.astype(x.dtype), x, key, vectors, discard)


def mean_and_stderr(estimates: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The LLE and its standard error over the sequences (each sequence's mean over its vectors);
    NaN error from one sequence."""
    per_sequence = jnp.mean(estimates, axis=-1)
    n = per_sequence.shape[0]
    err = jnp.std(per_sequence, ddof=1) / jnp.sqrt(n) if n > 1 else jnp.full((), jnp.nan, estimates.dtype)
    return jnp.mean(per_sequence), err

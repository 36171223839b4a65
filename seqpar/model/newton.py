"""A nonlinear recurrence solved in parallel over time by Newton's method (DEER, quasi-DEER, ELK).

The states of an RNN, `s_t = f(s_{t-1}, x_t)` from a fixed `s_0`, are the root of the
residual `r_t(s) = s_t - f(s_{t-1}, x_t)` for all t at once. Newton's method on that
residual (DEER, Lim et al. 2024) linearises f around the current guess `s^k`,

    s_t = J_t s_{t-1} + (f(s^k_{t-1}, x_t) - J_t s^k_{t-1}),    J_t = df/ds (s^k_{t-1}, x_t),

and solves this *linear* recurrence for every t with a parallel associative scan
(log T depth). `J_1 = 0` because `s_0` is fixed, so iteration k makes at least the
first k states exact: at most T iterations, like Jacobi sweeps, usually a handful.
quasi-DEER (Gonzalez et al. 2024) keeps only the diagonal of `J_t`: the scan is
elementwise (T·S numbers instead of T·S²), each iteration far cheaper, more of them.

Damping (ELK, "Evaluating Levenberg-Marquardt with Kalman", same paper): with
`damping` λ > 0 the step minimises the linearised residual plus `λ Σ_t ‖s_t − s^k_t‖²`,
a trust region around the current guess. That is inference in a linear-Gaussian
state-space model (dynamics the linearisation with unit noise, observations the
current guess with variance 1/λ), done by a parallel Kalman filter
(Särkkä & García-Fernández 2021) over the same associative scan. As in the authors'
reference code, the next iterate is the *filtered* mean. The filter shrinks the
linearised dynamics where they expand, so Newton cannot overshoot to infinity on an
unstable cell; the true trajectory stays a fixed point.

Gradients never pass through the Newton loop: `implicit_states` returns the solved
states with a `jax.custom_vjp` whose backward pass is the adjoint of the recurrence,
`λ_t = g_t + J_{t+1}ᵀ λ_{t+1}`, solved by the same scan run backwards in time, then
one batched VJP of the cell over all t. At convergence this is exactly BPTT's
gradient; with the diagonal of J it is the cheap approximate adjoint.

Everything here works on one sequence (`x: (T, D)`, states `(T, S)`); callers `vmap`.
Control flow is `lax.while_loop`, so one jitted program serves any number of iterations.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from seqpar.model.model import Model, Params

Jacobian = Literal["full", "diagonal"]
StepFn = Callable[[jax.Array, jax.Array], jax.Array]  # (s_prev, x_t) -> s_t, one example


@dataclass(frozen=True)
class NewtonOptions:
    """How to solve: Jacobian structure, stopping rule, damping (0: plain Newton)."""

    jacobian: Jacobian = "full"
    max_iters: int = 100
    tol: float = 1e-5  # on max_t ‖s_t^{k+1} − s_t^k‖ (undamped) or max_t ‖residual_t‖, whichever comes first
    damping: float = 0.0


class NewtonStats(NamedTuple):
    iterations: jax.Array  # int32: linear solves taken
    residual: jax.Array  # max_t ‖f(s_{t-1}, x_t) − s_t‖ of the returned states
    converged: jax.Array  # bool: stopped by the tolerance, not by max_iters or a non-finite state


# ----------------------------------------------------------------------------- linear algebra per structure


class _Ops(NamedTuple):
    """Products of Jacobian-like blocks: matrices `(..., S, S)` or their diagonals `(..., S)`."""

    mm: Callable[[jax.Array, jax.Array], jax.Array]  # block @ block
    mv: Callable[[jax.Array, jax.Array], jax.Array]  # block @ vector
    t: Callable[[jax.Array], jax.Array]  # transpose
    inv1p: Callable[[jax.Array], jax.Array]  # (I + a)^{-1}


FULL = _Ops(
    mm=jnp.matmul,
    mv=lambda a, v: jnp.einsum("...ij,...j->...i", a, v),
    t=lambda a: jnp.swapaxes(a, -1, -2),
    inv1p=lambda a: jnp.linalg.inv(jnp.eye(a.shape[-1], dtype=a.dtype) + a),
)
DIAGONAL = _Ops(mm=jnp.multiply, mv=jnp.multiply, t=lambda a: a, inv1p=lambda a: 1.0 / (1.0 + a))


def ops(jacobian: Jacobian) -> _Ops:
    return FULL if jacobian == "full" else DIAGONAL


# ----------------------------------------------------------------------------- parallel linear solves


def linear_recurrence(a: jax.Array, b: jax.Array, jacobian: Jacobian) -> jax.Array:
    """`h_t = a_t h_{t-1} + b_t` for t = 1..T (axis 0) from `h_0 = 0`, by an associative scan.

    `a`: `(T, S, S)` matrices or `(T, S)` diagonals; `b`: `(T, S)`. A nonzero `h_0` is
    folded in by the caller as `b_1 += a_1 h_0`.
    """
    o = ops(jacobian)

    def compose(earlier, later):
        # The affine map "earlier, then later": h -> a2 (a1 h + b1) + b2.
        a1, b1 = earlier
        a2, b2 = later
        return o.mm(a2, a1), o.mv(a2, b1) + b2

    _, h = jax.lax.associative_scan(compose, (a, b))
    return h


def reverse_linear_recurrence(a: jax.Array, b: jax.Array, jacobian: Jacobian) -> jax.Array:
    """`h_t = a_t h_{t+1} + b_t` for t = T..1 from `h_{T+1} = 0` (`a_T` is unused)."""
    a = jnp.concatenate([jnp.zeros_like(a[:1]), a[::-1][1:]])  # reversed time, a_T -> the (ignored) first slot
    return linear_recurrence(a, b[::-1], jacobian)[::-1]


def kalman_filter_means(a: jax.Array, b: jax.Array, y: jax.Array, damping: float, jacobian: Jacobian) -> jax.Array:
    """Filtered means of `s_t = a_t s_{t-1} + b_t + w_t`, `y_t = s_t + v_t` (w ~ N(0, I), v ~ N(0, I/λ)).

    The parallel filter's elements (Särkkä & García-Fernández 2021, specialised to unit
    dynamics noise, identity emissions and emission variance 1/λ), composed by one
    associative scan; `a_1` must be 0 (the state before step 1 is known). With diagonal
    blocks every product is elementwise.
    """
    o = ops(jacobian)
    gain = damping / (1.0 + damping)  # Kalman gain of a unit-variance prior against variance 1/λ
    innov = y - b
    eye = jnp.ones_like(b) if jacobian == "diagonal" else jnp.broadcast_to(jnp.eye(b.shape[-1], dtype=b.dtype), a.shape)
    elems = (
        (1.0 - gain) * a,  # A: map from s_{t-1}
        b + gain * innov,  # b: mean given s_{t-1} = 0
        (1.0 - gain) * eye,  # C: covariance given s_{t-1}
        gain * o.mm(o.t(a), a),  # J: information about s_{t-1} from y_t
        gain * o.mv(o.t(a), innov),  # eta
    )

    def compose(e1, e2):
        a1, b1, c1, j1, eta1 = e1
        a2, b2, c2, j2, eta2 = e2
        m = o.inv1p(o.mm(c1, j2))  # (I + C1 J2)^{-1}; (I + J2 C1)^{-1} is its transpose (C1, J2 symmetric)
        a2m, ma1_t = o.mm(a2, m), o.t(o.mm(m, a1))  # A2 M and A1ᵀ Mᵀ
        return (
            o.mm(a2m, a1),
            o.mv(a2m, b1 + o.mv(c1, eta2)) + b2,
            o.mm(o.mm(a2m, c1), o.t(a2)) + c2,
            o.mm(ma1_t, o.mm(j2, a1)) + j1,
            o.mv(ma1_t, eta2 - o.mv(j2, b1)) + eta1,
        )

    return jax.lax.associative_scan(compose, elems)[1]


# ----------------------------------------------------------------------------- Newton


def _shifted(s0: jax.Array, states: jax.Array) -> jax.Array:
    """The state before every step: `(s_0, s_1, ..., s_{T-1})`."""
    return jnp.concatenate([s0[None], states[:-1]], axis=0)


def _max_norm(d: jax.Array) -> jax.Array:
    """max over t of the Euclidean norm over the state (NaN if any entry is)."""
    return jnp.max(jnp.sqrt(jnp.sum(jnp.square(d), axis=-1)))


def residual(step: StepFn, s0: jax.Array, x: jax.Array, states: jax.Array) -> jax.Array:
    """`max_t ‖f(s_{t-1}, x_t) − s_t‖`: zero exactly on the true rollout."""
    return _max_norm(jax.vmap(step)(_shifted(s0, states), x) - states)


def newton_solve(
    step: StepFn, jac: StepFn, s0: jax.Array, x: jax.Array, guess: jax.Array, opts: NewtonOptions
) -> tuple[jax.Array, NewtonStats]:
    """The states `(T, S)` of `s_t = step(s_{t-1}, x_t)` from `s_0`, by Newton from `guess`.

    `jac(s, x)` is `d step / d s`: an `(S, S)` matrix (`opts.jacobian == "full"`) or its
    diagonal `(S,)`. Stops when the residual is at most `tol` (then no update is
    needed: a converged guess costs no solve, and a linear cell solved exactly stops
    after one), or, without damping, when an update moves no state by more than `tol`
    (a damped step is short by design, so it says nothing there); or after `max_iters`
    solves, or when a state is not finite (its residual is NaN; the caller sees it).
    """
    evaluate = jax.vmap(step)
    f0 = evaluate(_shifted(s0, guess), x)
    inf = jnp.array(jnp.inf, f0.dtype)

    def converged(res, change):
        # A damped step is short by design, so only the residual says a damped solve is done.
        return (res <= opts.tol) | ((change <= opts.tol) & (opts.damping == 0))

    def going(carry):
        _, _, res, change, k = carry
        return (k < opts.max_iters) & ~converged(res, change) & jnp.isfinite(res)

    def update(carry):
        s, fs, _, _, k = carry
        prev = _shifted(s0, s)
        a = jax.vmap(jac)(prev, x).at[0].set(0.0)  # s_0 is fixed: no dependence before step 1
        b = fs - ops(opts.jacobian).mv(a, prev)  # fs_1 = f(s_0, x_1) exactly
        if opts.damping > 0:
            new = kalman_filter_means(a, b, s, opts.damping, opts.jacobian)
        else:
            new = linear_recurrence(a, b, opts.jacobian)
        f_new = evaluate(_shifted(s0, new), x)
        return new, f_new, _max_norm(f_new - new), _max_norm(new - s), k + 1

    carry = (guess, f0, _max_norm(f0 - guess), inf, jnp.int32(0))
    states, _, res, change, k = jax.lax.while_loop(going, update, carry)
    return states, NewtonStats(k, res, converged(res, change))


# ----------------------------------------------------------------------------- gradient by the adjoint


ParamStep = Callable[..., jax.Array]  # (params, s_prev, x_t) -> s_t


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def implicit_states(step: ParamStep, jac: ParamStep, jacobian: Jacobian, params, s0, x, states):
    """`states` (solved elsewhere, e.g. by `newton_solve`) as a differentiable function of
    `params`, `s0` and `x`: the backward pass is the adjoint recurrence (see the module doc)
    with `jac` blocks of structure `jacobian` (`full`: the exact gradient when `states` is
    the true rollout). The solver's iterations are never differentiated."""
    return states


def _implicit_fwd(step, jac, jacobian, params, s0, x, states):
    return states, (params, s0, x, states)


def _implicit_bwd(step, jac, jacobian, res, g):
    params, s0, x, states = res
    o = ops(jacobian)
    # λ_t = g_t + J_{t+1}ᵀ λ_{t+1}, with J_{t+1} = ∂f(s_t, x_{t+1})/∂s_t for t = 1..T-1.
    j_next = jax.vmap(jac, in_axes=(None, 0, 0))(params, states[:-1], x[1:])
    a = jnp.concatenate([o.t(j_next), jnp.zeros_like(j_next[:1])])  # a_T: nothing after the last step
    lam = reverse_linear_recurrence(a, g, jacobian)
    # One VJP of the cell over every step at once: Σ_t (∂f(s_{t-1}, x_t)/∂(θ, s_0, x))ᵀ λ_t.
    prev_rest = states[:-1]

    def cells(p, s0_, x_):
        return jax.vmap(step, in_axes=(None, 0, 0))(p, jnp.concatenate([s0_[None], prev_rest]), x_)

    _, vjp = jax.vjp(cells, params, s0, x)
    g_params, g_s0, g_x = vjp(lam)
    return g_params, g_s0, g_x, jnp.zeros_like(states)


implicit_states.defvjp(_implicit_fwd, _implicit_bwd)


def solve_rows(solve_one: Callable, x: jax.Array, guess: jax.Array, chunk: int | None = None):
    """`solve_one(x_i, guess_i)` for every row, `chunk` rows at a time (`lax.map`) to bound the
    Jacobian buffers when the rows are many (a whole training set), all at once otherwise."""
    if chunk is None or chunk >= x.shape[0]:
        return jax.vmap(solve_one)(x, guess)
    return jax.lax.map(lambda xg: solve_one(*xg), (x, guess), batch_size=chunk)


# ----------------------------------------------------------------------------- the model's recurrence

# Rows solved together when a whole set is solved (an evaluation, a table refresh): at most
# this many floats of Jacobian blocks per chunk, so a full-Jacobian solve of N rows holds
# one chunk's buffers, not N rows'.
CHUNK_BLOCK_FLOATS = 2**22

# Jacobian-sized buffers per (sequence, step) while a step runs, in blocks (S² floats for a full
# Jacobian, S for a diagonal): the blocks themselves, the associative scan's partial products
# and its output, forward and adjoint. Damping's Kalman elements hold three blocks per step and
# invert one per combination. Calibrated against XLA's memory analysis (tests/test_newton.py).
BLOCKS_PER_TRANSITION = 4
DAMPED_BLOCKS_PER_TRANSITION = 8


def block_floats(jacobian: Jacobian, state_dim: int) -> int:
    """Floats of one step's Jacobian block: S² (full) or S (diagonal)."""
    return state_dim * state_dim if jacobian == "full" else state_dim


def rows_per_chunk(jacobian: Jacobian, length: int, state_dim: int) -> int:
    return max(1, CHUNK_BLOCK_FLOATS // (length * block_floats(jacobian, state_dim)))


def _jacobian_fn(model: Model, jacobian: Jacobian) -> ParamStep:
    return model.jacobian if jacobian == "full" else model.diag_jacobian


def solve_states(
    model: Model, params: Params, x: jax.Array, guess: jax.Array, opts: NewtonOptions, chunk: int | None = None
) -> tuple[jax.Array, NewtonStats]:
    """Newton-solved states `(N, T, S)` of the model's rollout over `x: (N, T, D)` from the fixed
    initial state, each row from its `guess`; per-row `NewtonStats`. No gradient flows
    (see `differentiable_states`)."""
    params = jax.lax.stop_gradient(params)
    s0 = model.initial_state().astype(x.dtype)
    jac = _jacobian_fn(model, opts.jacobian)

    def one(xi, gi):
        return newton_solve(lambda s, xt: model.step(params, s, xt), lambda s, xt: jac(params, s, xt), s0, xi, gi, opts)

    return solve_rows(one, x, jax.lax.stop_gradient(guess), chunk)


def differentiable_states(model: Model, params: Params, x: jax.Array, states: jax.Array, gradient: Jacobian = "full") -> jax.Array:
    """`states (N, T, S)` (solved by `solve_states`) with the adjoint gradient attached
    (`gradient: full` exact at convergence, `diagonal` the approximate adjoint)."""
    s0 = model.initial_state().astype(x.dtype)
    attach = functools.partial(implicit_states, model.step, _jacobian_fn(model, gradient), gradient)
    return jax.vmap(attach, in_axes=(None, None, 0, 0))(params, s0, x, states)

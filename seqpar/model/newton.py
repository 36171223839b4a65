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

The scan's structure follows the cell's exact Jacobian (`Cell.jacobian_structure`):
a `full` cell (dense recurrent weights) is solved with S×S blocks (`jacobian: full`)
or their diagonals (`diagonal`, quasi-DEER); a `diagonal` cell (per-unit recurrences:
mingru, paragru) or a `block` cell (k×k per unit: paralstm) is always solved with its
exact structure, whatever `jacobian` says: there quasi-DEER *is* full Newton, and no
S×S matrix is ever built.

One pass of the cell per iteration: `step_and_jacobian` (or `step_and_diagonal`) gives
`f(s^k)` and `J` from one evaluation of the gates; the residual that decides whether
to stop is taken from the same evaluation, and the input projection (`Cell.project`)
is computed once per solve for all T steps. With `tol: auto` the solve stops when
`max_t ‖r_t‖ <= 10 · eps · (1 + max_t ‖s_t‖)` (eps of the states' dtype: 1.2e-6 × the scale
in float32). Chosen from measurement (`seqpar tolerance`, docs/findings/newton.md#tolerance):
float32 Newton's residual stops falling at a floor of about 3 eps (states 2e-7 from the
rollout, gradients 3e-7 to 1e-6 from BPTT's, at T = 256 to 4096), so a tolerance 10 eps times
the states' scale is met by every converging solve and stops it within about one iteration of
the floor; the former rule, sqrt(eps) · (1 + scale), stopped quasi-DEER five iterations early
with its states 1e-3 off. A solve that stops at `max_iters` unconverged returns its best
iterate (lowest residual); the caller counts it (`NewtonStats.converged`).

Picard (Jacobi) iteration is the member of the family with a zero Jacobian (`jacobian:
none`): each iteration is `s_t <- f(s_{t-1}, x_t)` for every t at once, no linear solve; it
makes at least one more leading state exact per iteration, so it converges in at most T, on
any cell, and each iteration is one pass of the cell (Gonzalez et al. 2025 unify it with
Newton and quasi-Newton; ParaDiGMS runs it on diffusion samplers).

`tol: 0` makes `max_iters` a budget rather than a cap, as ParaRNN runs Newton (a fixed three
iterations, no tolerance): every solve takes exactly `max_iters` iterations and returns the
last iterate, converged or not; such a solve is not "hitting the cap". `f0_guess` is
ParaRNN's starting guess `s_t = f(0, x_t)` for every t.

Damping (ELK, same paper): with `damping` λ > 0 the step minimises the linearised
residual plus `λ Σ_t ‖s_t − s^k_t‖²`, a trust region around the current guess: inference
in a linear-Gaussian state-space model done by a parallel Kalman filter (Särkkä &
García-Fernández 2021); as in the authors' code, the next iterate is the filtered mean.

Gradients never pass through the Newton loop: `implicit_states` returns the solved
states with a `jax.custom_vjp` whose backward pass is the adjoint of the recurrence,
`λ_t = g_t + J_{t+1}ᵀ λ_{t+1}`, then one batched VJP of the cell over all t. The adjoint
is solved `sequential`ly (a reverse `lax.scan` of per-step VJPs: O(T·S²) work, no
Jacobian stored, BPTT's cost) or in `parallel` (the associative scan over S×S blocks:
O(log T) depth, O(T·S³) work, for accelerators); on a structured cell it is the
elementwise / k×k-block scan, exact and cheap. At convergence this is BPTT's gradient;
with the diagonals of a `full` cell's J it is the cheap approximate adjoint.

Everything here works on one sequence (`x: (T, D)`, states `(T, S)`); callers `vmap`.
Control flow is `lax.while_loop`, so one jitted program serves any number of iterations.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp

from seqpar.model.cells.base import JacobianStructure
from seqpar.model.model import Params

Jacobian = Literal["full", "diagonal", "none"]  # what a method asks for; a structured cell answers exactly (none: Picard)
Structure = JacobianStructure | Literal["none"]  # what a solve runs with: the cell's structure, or no Jacobian at all
Adjoint = Literal["sequential", "parallel", "auto"]
Layer = Any  # a single-layer model view: `Model` (see the module doc for what it must offer)
StepFn = Callable[[jax.Array, jax.Array], jax.Array]  # (s_prev, x_t) -> s_t, one example
StepJacFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]  # (s_prev, px_t) -> (s_t, J_t)


@dataclass(frozen=True)
class NewtonOptions:
    """How to solve: Jacobian, stopping rule (`"auto"`: from the dtype, see the module doc), damping."""

    jacobian: Jacobian = "full"
    max_iters: int = 100
    tol: float | Literal["auto"] = 1e-5  # on max_t ‖residual_t‖ or, undamped, max_t ‖s_t^{k+1} − s_t^k‖; 0: a fixed budget
    damping: float = 0.0
    reset: bool = False  # a non-finite entry of an iterate is reset to the guess's and the solve goes on (the predictability authors')

    @property
    def budget(self) -> bool:
        """`tol: 0`: every solve runs exactly `max_iters` iterations (ParaRNN's fixed budget)."""
        return self.tol == 0


class NewtonStats(NamedTuple):
    iterations: jax.Array  # int32: linear solves taken
    residual: jax.Array  # max_t ‖f(s_{t-1}, x_t) − s_t‖ of the returned states
    converged: jax.Array  # bool: stopped by the tolerance, not by max_iters or a non-finite state


# ----------------------------------------------------------------------------- linear algebra per structure


class _Ops(NamedTuple):
    """Products of matrices `(..., S, S)`, diagonals `(..., S)` or unit blocks `(..., n, k, k)` (on k chunks of n)."""

    mm: Callable[[jax.Array, jax.Array], jax.Array]  # block @ block
    mv: Callable[[jax.Array, jax.Array], jax.Array]  # block @ vector
    t: Callable[[jax.Array], jax.Array]  # transpose
    inv1p: Callable[[jax.Array], jax.Array]  # (I + a)^{-1}


def _inv1p(a: jax.Array) -> jax.Array:
    return jnp.linalg.inv(jnp.eye(a.shape[-1], dtype=a.dtype) + a)


FULL = _Ops(
    mm=jnp.matmul,
    mv=lambda a, v: jnp.einsum("...ij,...j->...i", a, v),
    t=lambda a: jnp.swapaxes(a, -1, -2),
    inv1p=_inv1p,
)
DIAGONAL = _Ops(mm=jnp.multiply, mv=jnp.multiply, t=lambda a: a, inv1p=lambda a: 1.0 / (1.0 + a))


def _block_mv(a: jax.Array, v: jax.Array) -> jax.Array:
    """Unit blocks `(..., n, k, k)` times `(..., S)`, written out per component. State entry
    `c·n + j` is component c of unit j (paralstm: h then c), so component i of every unit is
    `Σ_m a[..., i, m] · v[m·n : (m+1)·n]`: contiguous slices, no transpose."""
    k, n = a.shape[-1], a.shape[-3]
    comp = [v[..., c * n : (c + 1) * n] for c in range(k)]
    return jnp.concatenate([sum(a[..., i, m] * comp[m] for m in range(k)) for i in range(k)], axis=-1)


# k is 2 or so: broadcast products vectorise where a batched k×k matmul would not.
BLOCK = _Ops(
    mm=lambda a, b: jnp.sum(a[..., :, :, None] * b[..., None, :, :], axis=-2),
    mv=_block_mv,
    t=lambda a: jnp.swapaxes(a, -1, -2),
    inv1p=_inv1p,
)


# Picard: the Jacobian is zero (one 0 per step, broadcast); the linear "solve" returns its right-hand side.
NONE = _Ops(mm=jnp.multiply, mv=lambda a, v: a * v, t=lambda a: a, inv1p=lambda a: 1.0 / (1.0 + a))


def ops(structure: Structure) -> _Ops:
    return {"full": FULL, "diagonal": DIAGONAL, "block": BLOCK, "none": NONE}[structure]


# ----------------------------------------------------------------------------- parallel linear solves


def linear_recurrence(a: jax.Array, b: jax.Array, jacobian: Structure) -> jax.Array:
    """`h_t = a_t h_{t-1} + b_t` for t = 1..T (axis 0) from `h_0 = 0`, by an associative scan.

    `a`: `(T, S, S)` matrices, `(T, S)` diagonals or `(T, S // k, k, k)` unit blocks;
    `b`: `(T, S)`. A nonzero `h_0` is folded in by the caller as `b_1 += a_1 h_0`. With no
    Jacobian (`none`, Picard) `a` is zero and `h = b`.
    """
    if jacobian == "none":
        return b
    if jacobian == "block":
        return _block_linear_recurrence(a, b)
    o = ops(jacobian)

    def compose(earlier, later):
        # The affine map "earlier, then later": h -> a2 (a1 h + b1) + b2.
        a1, b1 = earlier
        a2, b2 = later
        return o.mm(a2, a1), o.mv(a2, b1) + b2

    _, h = jax.lax.associative_scan(compose, (a, b))
    return h


def _block_linear_recurrence(a: jax.Array, b: jax.Array) -> jax.Array:
    """`linear_recurrence` on unit blocks `(T, n, k, k)`, with the k×k products written out over
    one packed `(T, k² + k, n)` array (every block entry, then every state component, each a row
    of n units). On a CPU this is 20x faster than scanning the `(T, n, k, k)` array with
    broadcast products, whose innermost axes of size k leave nothing to vectorise, and 5x faster
    than scanning the k² + k rows as separate arrays (paralstm, T = 32, 64 rows, n = 32, one
    core: 0.92 against 20.4 and 4.6 ms per scan; a diagonal scan of the same 6n floats: 0.46)."""
    k, n = a.shape[-1], a.shape[-3]
    packed = jnp.concatenate([jnp.moveaxis(a, -3, -1).reshape(*a.shape[:-3], k * k, n), b.reshape(*b.shape[:-1], k, n)], axis=-2)

    def compose(earlier, later):
        e1 = [earlier[..., r, :] for r in range(k * k + k)]
        e2 = [later[..., r, :] for r in range(k * k + k)]
        mm = [sum(e2[i * k + m] * e1[m * k + j] for m in range(k)) for i in range(k) for j in range(k)]
        mv = [sum(e2[i * k + m] * e1[k * k + m] for m in range(k)) + e2[k * k + i] for i in range(k)]
        return jnp.stack(mm + mv, axis=-2)

    out = jax.lax.associative_scan(compose, packed)
    return out[..., k * k :, :].reshape(b.shape)


def reverse_linear_recurrence(a: jax.Array, b: jax.Array, jacobian: JacobianStructure) -> jax.Array:
    """`h_t = a_t h_{t+1} + b_t` for t = T..1 from `h_{T+1} = 0` (`a_T` is unused)."""
    a = jnp.concatenate([jnp.zeros_like(a[:1]), a[::-1][1:]])  # reversed time, a_T -> the (ignored) first slot
    return linear_recurrence(a, b[::-1], jacobian)[::-1]


def kalman_filter_means(a: jax.Array, b: jax.Array, y: jax.Array, damping: float, jacobian: Structure) -> jax.Array:
    """Filtered means of `s_t = a_t s_{t-1} + b_t + w_t`, `y_t = s_t + v_t` (w ~ N(0, I), v ~ N(0, I/λ)).

    The parallel filter's elements (Särkkä & García-Fernández 2021, specialised to unit
    dynamics noise, identity emissions and emission variance 1/λ), composed by one
    associative scan; `a_1` must be 0 (the state before step 1 is known). With diagonal
    or unit blocks every product stays in that structure.
    """
    o = ops(jacobian)
    gain = damping / (1.0 + damping)  # Kalman gain of a unit-variance prior against variance 1/λ
    innov = y - b
    eye = jnp.ones_like(b) if jacobian == "diagonal" else jnp.broadcast_to(jnp.eye(a.shape[-1], dtype=b.dtype), a.shape)
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


AUTO_TOL_EPS = 10.0  # `tol: auto` in units of eps · (1 + max_t ‖s_t‖): chosen from `seqpar tolerance` (the module doc)
AUTO_TOL_DOC = "10 · eps of the states' dtype · (1 + max_t ‖s_t‖), e.g. 1.2e-6 · (1 + scale) in float32 (chosen from measurement)"


def auto_tol(states: jax.Array) -> jax.Array:
    """`tol: auto`: `AUTO_TOL_EPS · eps · (1 + max_t ‖s_t‖)` for the states' dtype (see the module doc)."""
    return AUTO_TOL_EPS * jnp.finfo(states.dtype).eps * (1.0 + _max_norm(states))


def residual(step: StepFn, s0: jax.Array, x: jax.Array, states: jax.Array) -> jax.Array:
    """`max_t ‖f(s_{t-1}, x_t) − s_t‖`: zero exactly on the true rollout."""
    return _max_norm(jax.vmap(step)(_shifted(s0, states), x) - states)


def newton_solve(
    step_jac: StepJacFn, s0: jax.Array, px: Any, guess: jax.Array, opts: NewtonOptions, structure: Structure
) -> tuple[jax.Array, NewtonStats]:
    """The states `(T, S)` of `s_t = f(s_{t-1}, px_t)` from `s_0`, by Newton from `guess`;
    `step_jac(s, px_t)` is `(f, d f / d s)` from one pass, the Jacobian in `structure`; `px` is
    any pytree whose leaves lead with the T steps (a projected input, or a segment's inputs).

    Stops when the residual is at most `tol` (a converged guess costs no solve), or, undamped,
    when no state moves by more than `tol` (a damped step is short by design); after `max_iters`
    solves (returning the iterate of lowest residual); or at a non-finite state (returned as is).
    """
    o = ops(structure)
    evaluate = jax.vmap(step_jac)

    def linearise(s):
        f, jac = evaluate(_shifted(s0, s), px)
        return f, jac.at[0].set(0.0)  # s_0 is fixed: no dependence before step 1

    def tol(s):
        return auto_tol(s) if opts.tol == "auto" else opts.tol

    def converged(s, res, change):
        # A damped step is short by design, so only the residual says a damped solve is done; a
        # non-finite residual (an overflowed state) is never converged, whatever the change says.
        return ((res <= tol(s)) | ((change <= tol(s)) & (opts.damping == 0))) & jnp.isfinite(res)

    def going(carry):
        s, _, _, res, change, k, _, _ = carry
        finite = jnp.isfinite(res) | opts.reset  # with resets a non-finite residual is one more iteration, not the end
        if opts.budget:  # a fixed number of iterations, whatever the residual (ParaRNN's)
            return (k < opts.max_iters) & finite
        return (k < opts.max_iters) & ~converged(s, res, change) & finite

    def update(carry):
        s, fs, jac, _, _, k, best, best_res = carry
        b = fs - o.mv(jac, _shifted(s0, s))  # fs_1 = f(s_0, x_1) exactly
        if opts.damping > 0:
            new = kalman_filter_means(jac, b, s, opts.damping, structure)
        else:
            new = linear_recurrence(jac, b, structure)
        if opts.reset:  # Newton still makes one more leading state exact per iteration, so the solve still ends
            new = jnp.where(jnp.isfinite(new), new, guess)
        f_new, jac_new = linearise(new)
        res = _max_norm(f_new - new)
        better = res < best_res
        best, best_res = jnp.where(better, new, best), jnp.where(better, res, best_res)
        return new, f_new, jac_new, res, _max_norm(new - s), k + 1, best, best_res

    f0, j0 = linearise(guess)
    res0 = _max_norm(f0 - guess)
    carry = (guess, f0, j0, res0, jnp.array(jnp.inf, f0.dtype), jnp.int32(0), guess, res0)
    states, _, _, res, change, k, best, best_res = jax.lax.while_loop(going, update, carry)
    done = converged(states, res, change)
    if opts.budget:  # the budget's last iterate, as ParaRNN differentiates it
        return states, NewtonStats(k, res, done)
    use_best = ~done & jnp.isfinite(res)  # stopped at max_iters: the best iterate, never a worse later one
    states = jnp.where(use_best, best, states)
    return states, NewtonStats(k, jnp.where(use_best, best_res, res), done)


def solve_structure(layer: Layer, jacobian: Jacobian) -> Structure:
    """The structure Newton runs with: none for Picard (any cell); the cell's own when it is
    structured (exact and cheap); else the method's choice (`full` S×S, or the `diagonal`
    approximation)."""
    if jacobian == "none":
        return "none"
    return layer.jacobian_structure if layer.jacobian_structure != "full" else jacobian


def _linearisation(layer: Layer, structure: Structure) -> Callable:
    """`(params, s, px) -> (s', J)` from one pass, J in `structure` (Picard: a zero per step, no derivative)."""
    if structure == "none":
        return lambda params, s, px: (layer.step_projected(params, s, px), jnp.zeros((1,), s.dtype))
    if layer.jacobian_structure == "full" and structure == "diagonal":
        return layer.step_and_diagonal
    return layer.step_and_jacobian


# ----------------------------------------------------------------------------- gradient by the adjoint


def adjoint_plan(layer: Layer, gradient: Jacobian, adjoint: Adjoint) -> str:
    """How the backward pass solves the adjoint: `structured` (the cell's exact elementwise or
    block scan), `diagonal` (the approximate adjoint), `sequential` or `parallel` (exact, S×S)."""
    if layer.jacobian_structure != "full":
        return "structured"
    if gradient == "diagonal":
        return "diagonal"
    if adjoint == "auto":
        return "sequential" if jax.default_backend() == "cpu" else "parallel"
    return adjoint


# Steps per loop iteration of the sequential adjoint (a CPU loop iteration costs about a small step): tuned BPTT's.
ADJOINT_UNROLL = 8


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def implicit_states(layer: Layer, plan: str, params, s0, x, states):
    """`states` (solved elsewhere, e.g. by `newton_solve`) as a differentiable function of
    `params`, `s0` and `x`: the backward pass is the adjoint recurrence (see the module doc)
    solved as `plan` says (`adjoint_plan`). The solver's iterations are never differentiated."""
    return states


def _implicit_fwd(layer, plan, params, s0, x, states):
    return states, (params, s0, x, states)


def _adjoint(layer, plan, params, px, states, g):
    """λ_t = g_t + J_{t+1}ᵀ λ_{t+1}, J_{t+1} = ∂f(s_t, x_{t+1})/∂s_t for t = 1..T-1; λ_T = g_T."""
    if plan == "sequential":

        def back(lam_next, inputs):
            s_t, px_next, g_t = inputs
            _, vjp = jax.vjp(lambda s: layer.step_projected(params, s, px_next), s_t)
            lam = g_t + vjp(lam_next)[0]
            return lam, lam

        _, lam = jax.lax.scan(back, g[-1], (states[:-1], px[1:], g[:-1]), reverse=True, unroll=ADJOINT_UNROLL)
        return jnp.concatenate([lam, g[-1:]])
    structure = layer.jacobian_structure if plan == "structured" else ("diagonal" if plan == "diagonal" else "full")
    linearise = _linearisation(layer, structure)
    _, j_next = jax.vmap(linearise, in_axes=(None, 0, 0))(params, states[:-1], px[1:])
    o = ops(structure)
    a = jnp.concatenate([o.t(j_next), jnp.zeros_like(j_next[:1])])  # a_T: nothing after the last step
    return reverse_linear_recurrence(a, g, structure)


def _implicit_bwd(layer, plan, res, g):
    params, s0, x, states = res
    lam = _adjoint(layer, plan, params, layer.project(params, x), states, g)

    # One VJP of the cell over every step at once: Σ_t (∂f(s_{t-1}, x_t)/∂(θ, s_0, x))ᵀ λ_t.
    def cells(p, s0_, x_):
        prev = jnp.concatenate([s0_[None], states[:-1]])
        return jax.vmap(layer.step_projected, in_axes=(None, 0, 0))(p, prev, layer.project(p, x_))

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
# this many floats of Jacobian blocks per chunk (one chunk's buffers, not N rows').
CHUNK_BLOCK_FLOATS = 2**22

# Jacobian-sized buffers per (sequence, step) while a step runs, in blocks (S² floats for a full
# Jacobian, S for a diagonal, k·S for unit blocks): the blocks themselves, the associative scan's
# partial products and its output, forward and adjoint. Damping's Kalman elements hold three
# blocks per step and invert one per combination. Calibrated against XLA's memory analysis
# (tests/test_newton.py).
BLOCKS_PER_TRANSITION = 4
DAMPED_BLOCKS_PER_TRANSITION = 8


def block_floats(jacobian: Structure, state_dim: int, block: int = 1) -> int:
    """Floats of one step's Jacobian block: S² (full), S (diagonal) or k·S (k×k unit blocks); a
    Picard solve holds no Jacobian, only the states (S)."""
    return {"full": state_dim * state_dim, "diagonal": state_dim, "block": block * state_dim, "none": state_dim}[jacobian]


def rows_per_chunk(jacobian: Structure, length: int, state_dim: int, block: int = 1) -> int:
    return max(1, CHUNK_BLOCK_FLOATS // (length * block_floats(jacobian, state_dim, block)))


def f0_guess(layer: Layer, params: Params, x: jax.Array) -> jax.Array:
    """ParaRNN's starting guess: `s_t = f(0, x_t)` for every row and step, `(N, T, S)` (one batched pass)."""
    px = layer.project(params, x)
    zeros = jnp.zeros((*x.shape[:-1], layer.state_dim), x.dtype)
    return jax.vmap(jax.vmap(layer.step_projected, in_axes=(None, 0, 0)), in_axes=(None, 0, 0))(params, zeros, px)


def solve_states(
    layer: Layer, params: Params, x: jax.Array, guess: jax.Array | None, opts: NewtonOptions, chunk: int | None = None
) -> tuple[jax.Array, NewtonStats]:
    """Newton-solved states `(N, T, S)` of the layer's rollout over `x: (N, T, D)` from the fixed
    initial state, each row from its `guess` (None: `f0_guess`); per-row `NewtonStats`. No
    gradient flows (see `differentiable_states`)."""
    params = jax.lax.stop_gradient(params)
    if guess is None:
        guess = f0_guess(layer, params, x)
    s0 = layer.initial_state().astype(x.dtype)
    structure = solve_structure(layer, opts.jacobian)
    linearise = _linearisation(layer, structure)

    def one(xi, gi):
        px = layer.project(params, xi)  # every step's input projection, once per solve
        return newton_solve(lambda s, p: linearise(params, s, p), s0, px, gi, opts, structure)

    return solve_rows(one, x, jax.lax.stop_gradient(guess), chunk)


def differentiable_states(
    layer: Layer, params: Params, x: jax.Array, states: jax.Array, gradient: Jacobian = "full", adjoint: Adjoint = "auto"
) -> jax.Array:
    """`states (N, T, S)` (solved by `solve_states`) with the adjoint gradient attached
    (`gradient: full` exact at convergence, solved as `adjoint` says; `diagonal` the
    approximate adjoint; a structured cell's adjoint is always its exact structured scan)."""
    s0 = layer.initial_state().astype(x.dtype)
    attach = functools.partial(implicit_states, layer, adjoint_plan(layer, gradient, adjoint))
    return jax.vmap(attach, in_axes=(None, None, 0, 0))(params, s0, x, states)

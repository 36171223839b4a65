"""The LLE estimator against published and exact numbers, and against an explicit-Jacobian product."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqpar.model.cells.elman import ElmanConfig
from seqpar.model.lle import joint_recurrence, largest_lyapunov_exponent, model_lle, random_tangents, tangent_log_growth
from seqpar.model.model import build_model
from seqpar.tasks.dynamics import BETA, RHO, SIGMA


def lorenz_rk4(h: float):
    """One RK4 step of Lorenz-63 with the `dynamics` task's constants (the task keeps its integrator
    private, so the 6 lines are written again here; the system is the same)."""

    def f(s):
        x, y, z = s[0], s[1], s[2]
        return jnp.stack([SIGMA * (y - x), x * (RHO - z) - y, x * y - BETA * z])

    def step(s, _):
        k1 = f(s)
        k2 = f(s + 0.5 * h * k1)
        k3 = f(s + 0.5 * h * k2)
        k4 = f(s + h * k3)
        return s + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)

    return step


def test_lorenz63_matches_the_published_exponent():
    # Largest exponent of Lorenz-63 at sigma 10, rho 28, beta 8/3: 0.9056 per unit time (Sprott,
    # "Chaos and Time-Series Analysis", 2003). Tolerance: 32 trajectories of 100 time units each
    # (10^4 RK4 steps of 0.01, after 500 discarded for the vector's alignment). One trajectory's
    # finite-time estimate has std 0.023 at this length (measured over 64), so the mean's standard
    # error is 0.004; float32 biases it by about -0.004 (0.898 here vs 0.902 in float64 on the
    # same trajectories). 0.02 is 4 standard errors plus that bias.
    h, n, counted, discard = 0.01, 32, 10_000, 500
    step = lorenz_rk4(h)
    start = jnp.array([1.0, 1.0, 20.0]) + jax.random.normal(jax.random.key(0), (n, 3))
    on_attractor = jax.vmap(lambda s: jax.lax.fori_loop(0, 1000, lambda _, s: step(s, None), s))(start)
    x = jnp.zeros((n, counted + discard, 0))
    v0 = random_tangents(jax.random.key(1), n, 3, 3)
    per_step = jax.jit(jax.vmap(lambda s0, x, v: tangent_log_growth(step, s0, x, v, discard=discard)))(on_attractor, x, v0)
    assert float(jnp.mean(per_step)) / h == pytest.approx(0.9056, abs=0.02)


@pytest.mark.parametrize("a", [[0.5, -0.9, 0.3, 0.2], [1.1, -0.7, 0.95, 0.1]])
def test_linear_diagonal_recurrence_is_max_log_abs_a(a):
    # s' = a * s + x: every tangent vector is multiplied by diag(a). After 200 discarded steps the
    # other directions are (0.9/1.1)^200 < 1e-17 of the largest, so the estimate is exact up to
    # float32 rounding of 1000 summed logs (about 1e-6 relative); 1e-5 leaves room for it.
    a = jnp.array(a)
    x = jax.random.normal(jax.random.key(0), (4, 1200, 4))
    est = largest_lyapunov_exponent(lambda s, xt: a * s + xt, jnp.zeros(4), x, jax.random.key(1), discard=200)
    assert float(est) == pytest.approx(math.log(float(jnp.max(jnp.abs(a)))), abs=1e-5)


def elman(scale: float, hidden: int = 8):
    return build_model(ElmanConfig.model_validate({"recurrent_scale": scale}), 1, hidden, 1, jax.random.key(3))


def test_contracting_elman_is_negative_and_expanding_positive():
    x = jax.random.normal(jax.random.key(0), (4, 1000, 1))
    small = float(model_lle(*elman(0.3, hidden=16), x, jax.random.key(1)))
    large = float(model_lle(*elman(3.0, hidden=16), x, jax.random.key(1)))
    # Exact bounds: |J| <= recurrent_scale (orthogonal U times tanh' <= 1), so LLE <= log(scale).
    assert small <= math.log(0.3) + 1e-5
    assert large <= math.log(3.0) + 1e-5
    # Chaos at gain 3 under unit inputs needs a wide enough cell: at hidden 16 the estimate was
    # 0.09-0.16 per step over 5 initialisation seeds (at hidden 8 some seeds are periodic, LLE < 0);
    # 0.03 is below all of them by more than the per-sequence spread (about 0.02 at T = 1000).
    assert large > 0.03


def test_tangent_growth_matches_explicit_jacobian_products():
    # An independent computation: form every J_t with jacfwd and multiply in float64 NumPy.
    model, params = elman(1.5, hidden=5)
    x = jax.random.normal(jax.random.key(0), (60, 1))
    v0 = random_tangents(jax.random.key(1), 1, 2, 5)[0]
    est = np.asarray(tangent_log_growth(lambda s, xt: model.step(params, s, xt), model.initial_state(), x, v0, discard=10))
    s = model.initial_state()
    v, logs = np.asarray(v0, np.float64), np.zeros(2)
    for t in range(60):
        jac = np.asarray(model.jacobian(params, s, x[t]), np.float64)
        s = model.step(params, s, x[t])
        v = v @ jac.T
        norm = np.linalg.norm(v, axis=-1)
        logs += np.log(norm) * (t >= 10)
        v /= norm[:, None]
    np.testing.assert_allclose(est, logs / 50, atol=1e-5)  # float32 vs float64 over 60 steps


def test_a_saturated_recurrence_stays_finite():
    est = largest_lyapunov_exponent(lambda s, xt: 0.0 * s, jnp.zeros(3), jnp.zeros((2, 5, 1)), jax.random.key(0))
    assert np.isfinite(float(est)) and float(est) < -80  # log of float32's smallest normal: -87.3


class _Layer:
    def __init__(self, dim: int):
        self.state_dim = dim

    def initial_state(self):
        return jnp.zeros((self.state_dim,))


class _TwoLayerStack:
    """The stack interface of the deep-stack contract: `layers`, `layer(l)`, `joint_step` on the
    concatenated state. Layer 1 is driven by layer 0's state; the joint LLE is the larger rate."""

    layers = 2

    def layer(self, i):
        return _Layer(2)

    def joint_step(self, params, s, x):
        low = params[0] * s[:2] + x
        return jnp.concatenate([low, params[1] * s[2:] + low])


def test_a_stack_is_measured_on_its_joint_state():
    stack = _TwoLayerStack()
    params = (jnp.array([0.5, 0.4]), jnp.array([0.8, 0.7]))
    step, s0 = joint_recurrence(stack, params)
    assert s0.shape == (4,)
    x = jax.random.normal(jax.random.key(0), (2, 600, 2))
    assert float(model_lle(stack, params, x, jax.random.key(1), discard=100)) == pytest.approx(math.log(0.8), abs=1e-5)

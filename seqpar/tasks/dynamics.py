"""Next-step regression on one observed coordinate of the Lorenz-63 system (RK4).

dx/dt = 10 (y - x),  dy/dt = x (28 - z) - y,  dz/dt = x y - (8/3) z  (chaotic).

Each sequence starts from a random point of the box [-15, 15] x [-20, 20] x [5, 40],
runs `burn_in` observations to settle on the attractor, then records
`length + 1` states `dt` apart (each `substeps` RK4 steps). Only the coordinate
`observe` (default x) is seen, standardised with fixed attractor statistics (mean
(0, 0, 23.5), std (7.9, 9.0, 8.6), measured once on long runs) and, optionally, with
Gaussian noise of std `noise`. Input at t is observation t, target is observation
t + 1 (noise included: the task is forecasting the observed series); every step is
scored.

Why one coordinate: with the full state observed, the next state is a deterministic
function of the current one (one RK4 step from x_t alone scores an MSE of about 1e-14),
so the task needed no memory at all. With x alone, the hidden y and z must be
inferred from the past (a delay embedding, Takens), which is what a recurrence is for.

Memoryless baseline: the best predictor of observation t + 1 from observation t alone
(the position t adds nothing on the attractor) is the conditional mean E[o(t+1) | o(t)];
its loss is E[Var(o(t+1) | o(t))]. It has no closed form, so it is measured once per
config: the conditional mean is fitted as the mean of the target in each of 256
equal-mass bins of the input, on a reference sample of about 2^18 steps, and scored on
a second one (both with their own fixed keys, not the run's seed).
"""

from __future__ import annotations

import functools
from typing import Literal, get_args

import jax
import jax.numpy as jnp
import numpy as np
from pydantic import Field

from seqpar.tasks.base import Dataset, RegressionTask, TaskConfig
from seqpar.tasks.registry import TASKS

SIGMA, RHO, BETA = 10.0, 28.0, 8.0 / 3.0
# numpy, not jnp: importing seqpar must not start a JAX backend.
_MEAN = np.array([0.0, 0.0, 23.5], np.float32)
_STD = np.array([7.9, 9.0, 8.6], np.float32)
_BOX_LO = np.array([-15.0, -20.0, 5.0], np.float32)
_BOX_HI = np.array([15.0, 20.0, 40.0], np.float32)
BASELINE_STEPS = 2**18  # size of each reference sample that measures the baseline
BASELINE_BINS = 256  # equal-mass bins of the input for the conditional mean
Coordinate = Literal["x", "y", "z"]


@TASKS.register("dynamics")
class DynamicsConfig(TaskConfig):
    """Forecast the next observation of a chaotic Lorenz-63 trajectory."""

    type: Literal["dynamics"] = "dynamics"
    length: int = Field(64, gt=0, description="observations per sequence")
    dt: float = Field(0.05, gt=0, le=1, allow_inf_nan=False, description="time between observations")
    substeps: int = Field(5, ge=1, le=1000, description="RK4 steps per observation (step size dt / substeps)")
    burn_in: int = Field(100, ge=0, description="observations discarded before each sequence, to reach the attractor")
    noise: float = Field(0.0, ge=0, allow_inf_nan=False, description="std of Gaussian observation noise (standardised units)")
    observe: Coordinate = Field("x", description="the one coordinate observed (the other two must be inferred from the past)")

    def build(self) -> Dynamics:
        return Dynamics(self)


def _lorenz(s: jax.Array) -> jax.Array:
    x, y, z = s[..., 0], s[..., 1], s[..., 2]
    return jnp.stack([SIGMA * (y - x), x * (RHO - z) - y, x * y - BETA * z], axis=-1)


def _rk4(s: jax.Array, h: float) -> jax.Array:
    k1 = _lorenz(s)
    k2 = _lorenz(s + 0.5 * h * k1)
    k3 = _lorenz(s + 0.5 * h * k2)
    k4 = _lorenz(s + h * k3)
    return s + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


@functools.partial(jax.jit, static_argnames=("num_sequences", "steps", "burn_in", "substeps", "dt"))
def trajectories(key: jax.Array, num_sequences: int, steps: int, burn_in: int, substeps: int, dt: float) -> jax.Array:
    """`steps` raw (unstandardised) states `dt` apart after `burn_in` discarded ones: `(N, steps, 3)`."""
    s0 = jax.random.uniform(key, (num_sequences, 3), minval=_BOX_LO, maxval=_BOX_HI)
    h = dt / substeps

    def observe(s, _):
        s = jax.lax.fori_loop(0, substeps, lambda _, s: _rk4(s, h), s)
        return s, s

    s = jax.lax.fori_loop(0, burn_in, lambda _, s: observe(s, None)[0], s0)
    _, obs = jax.lax.scan(observe, s, None, length=steps - 1)
    return jnp.concatenate([s[:, None], jnp.swapaxes(obs, 0, 1)], axis=1)


def conditional_mean_fit(x: np.ndarray, y: np.ndarray, bins: int = BASELINE_BINS) -> tuple[np.ndarray, np.ndarray]:
    """A binned estimate of E[y | x]: (inner bin edges at quantiles of `x`, mean of `y` per bin)."""
    edges = np.quantile(x, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    b = np.searchsorted(edges, x)
    return edges, np.bincount(b, y, minlength=bins) / np.maximum(np.bincount(b, minlength=bins), 1)


def conditional_mean_predict(fit: tuple[np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    edges, means = fit
    return means[np.searchsorted(edges, x)]


class Dynamics(RegressionTask):
    baseline_formula = "E[Var(o[t+1] | o[t])]: binned conditional mean, fitted on one reference sample, scored on another"

    def __init__(self, cfg: DynamicsConfig):
        self.cfg = cfg
        self.coordinate = get_args(Coordinate).index(cfg.observe)
        self.input_dim = self.output_dim = 1
        self.seq_len = cfg.length

    def reference_samples(self):
        """The two fixed samples (fit, score) of about `BASELINE_STEPS` steps each that measure the baseline."""
        n = max(64, -(-BASELINE_STEPS // self.cfg.length))
        return self.make_data(jax.random.key(20240917), n), self.make_data(jax.random.key(20240918), n)

    @functools.cached_property
    def baseline_loss(self) -> float:
        fit, ref = self.reference_samples()

        def flat(a) -> np.ndarray:
            return np.asarray(a, np.float64).ravel()

        pred = conditional_mean_predict(conditional_mean_fit(flat(fit.x), flat(fit.y)), flat(ref.x))
        return float(np.mean(np.square(flat(ref.y) - pred)))  # every step is scored

    def make_data(self, key, num_sequences, split="train"):
        c = self.cfg
        k_traj, k_noise = jax.random.split(key)
        raw = trajectories(k_traj, num_sequences, c.length + 1, c.burn_in, c.substeps, c.dt)
        i = slice(self.coordinate, self.coordinate + 1)
        obs = (raw[..., i] - _MEAN[i]) / _STD[i]
        if c.noise > 0:
            obs = obs + c.noise * jax.random.normal(k_noise, obs.shape)
        return Dataset(
            x=obs[:, :-1].astype(jnp.float32),
            y=obs[:, 1:].astype(jnp.float32),
            mask=jnp.ones((num_sequences, c.length), jnp.float32),
        )

"""Next-step regression on the Lorenz-63 system, integrated here with RK4.

dx/dt = 10 (y - x),  dy/dt = x (28 - z) - y,  dz/dt = x y - (8/3) z  (chaotic).

Each sequence starts from a random point of the box [-15, 15] x [-20, 20] x [5, 40],
runs `burn_in` observations to settle on the attractor, then records
`length + 1` observations `dt` apart (each `substeps` RK4 steps). Observations are
standardised with fixed attractor statistics (mean (0, 0, 23.5), std (7.9, 9.0,
8.6), measured once on long runs) and, optionally, get Gaussian noise of std
`noise`. Input at t is observation t, target is observation t + 1 (noise
included: the task is forecasting the observed series); every step is scored.

Memoryless baseline: persistence, predicting the next observation equal to the
current one. It has no closed form, so it is measured once per config on a fixed
reference sample of about 2^18 steps (its own key, not the run's seed), whose
relative standard error is below 0.5% (measured over keys).
"""

from __future__ import annotations

import functools
from typing import Literal

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
BASELINE_STEPS = 2**18  # size of the reference sample that measures the baseline


@TASKS.register("dynamics")
class DynamicsConfig(TaskConfig):
    """Forecast the next observation of a chaotic Lorenz-63 trajectory."""

    type: Literal["dynamics"] = "dynamics"
    length: int = Field(64, gt=0, description="observations per sequence")
    dt: float = Field(0.05, gt=0, le=1, allow_inf_nan=False, description="time between observations")
    substeps: int = Field(5, ge=1, le=1000, description="RK4 steps per observation (step size dt / substeps)")
    burn_in: int = Field(100, ge=0, description="observations discarded before each sequence, to reach the attractor")
    noise: float = Field(0.0, ge=0, allow_inf_nan=False, description="std of Gaussian observation noise (standardised units)")

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


class Dynamics(RegressionTask):
    baseline_formula = "mean (x[t+1] − x[t])² (persistence), measured on a reference sample"

    def __init__(self, cfg: DynamicsConfig):
        self.cfg = cfg
        self.input_dim = self.output_dim = 3
        self.seq_len = cfg.length

    @functools.cached_property
    def baseline_loss(self) -> float:
        n = max(64, -(-BASELINE_STEPS // self.cfg.length))
        ref = self.make_data(jax.random.key(20240917), n)
        return float(self.loss(ref.x, ref.y, ref.mask))  # the readout `out = x`: predict next = current

    def make_data(self, key, num_sequences, split="train"):
        c = self.cfg
        k_traj, k_noise = jax.random.split(key)
        raw = trajectories(k_traj, num_sequences, c.length + 1, c.burn_in, c.substeps, c.dt)
        obs = (raw - _MEAN) / _STD
        if c.noise > 0:
            obs = obs + c.noise * jax.random.normal(k_noise, obs.shape)
        return Dataset(
            x=obs[:, :-1].astype(jnp.float32),
            y=obs[:, 1:].astype(jnp.float32),
            mask=jnp.ones((num_sequences, c.length), jnp.float32),
        )

"""An example seqpar plugin: two cells written as plain JAX functions, and a task of its own.

Importing this module registers them (the `seqpar.plugins` entry point in pyproject.toml makes
every seqpar process import it). Nothing here subclasses a seqpar class except the task, whose
protocol is a config (its options, validated) and a runtime object (data, loss, baseline).
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from pydantic import Field

import seqpar
from seqpar.tasks import Dataset, TaskConfig
from seqpar.tasks.base import RegressionTask

# ----------------------------------------------------------------------------- cells


def init(key, input_size, hidden_size):
    """A GRU's parameters: input and recurrent weights of the three gates, a bias."""
    kx, kh = jax.random.split(key)
    return {
        "wx": jax.random.normal(kx, (input_size, 3 * hidden_size)) / jnp.sqrt(input_size),
        "wh": jax.random.normal(kh, (hidden_size, 3 * hidden_size)) / jnp.sqrt(hidden_size),
        "b": jnp.zeros(3 * hidden_size),
    }


def step(params, h, x):
    """A GRU step whose candidate is squashed by softsign instead of tanh (dense recurrence)."""
    xr, xz, xn = jnp.split(x @ params["wx"] + params["b"], 3)
    hr, hz, hn = jnp.split(h @ params["wh"], 3)
    r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
    return (1 - z) * jax.nn.soft_sign(xn + r * hn) + z * h


def init_diagonal(key, input_size, hidden_size):
    """ParaRNN-style: per-unit recurrent weights `a` (one per gate), dense input weights."""
    kx, ka = jax.random.split(key)
    return {
        "wx": jax.random.normal(kx, (input_size, 3 * hidden_size)) / jnp.sqrt(input_size),
        "a": jax.random.uniform(ka, (3, hidden_size), minval=-1.0, maxval=1.0),
        "b": jnp.zeros(3 * hidden_size),
    }


def step_diagonal(params, h, x):
    """The softsign GRU with diagonal recurrences: unit j's new value reads only h[j], so Newton
    solves it with elementwise scans (declared `structure="diagonal"` below; seqpar checks it)."""
    xr, xz, xn = jnp.split(x @ params["wx"] + params["b"], 3)
    ar, az, an = params["a"]
    r, z = jax.nn.sigmoid(xr + ar * h), jax.nn.sigmoid(xz + az * h)
    return (1 - z) * jax.nn.soft_sign(xn + an * r * h) + z * h


seqpar.register_cell("softgru", init=init, step=step)
seqpar.register_cell("softparagru", init=init_diagonal, step=step_diagonal, structure="diagonal")

# ----------------------------------------------------------------------------- a task


class RunningMeanConfig(TaskConfig):
    """Output the mean of the last `window` inputs (standard normal, one per step); MSE."""

    type: Literal["running_mean"] = "running_mean"
    length: int = Field(32, ge=2, description="steps per sequence")
    window: int = Field(4, ge=2, description="inputs averaged (those before step 0 are zero)")

    def build(self) -> RunningMean:
        return RunningMean(self)


class RunningMean(RegressionTask):
    """y_t = (x_t + ... + x_{t-k+1}) / k. Seeing only x_t (and t), the best prediction is x_t / k,
    whose error is the variance of the other min(t, k - 1) terms: min(t, k - 1) / k²."""

    baseline_formula = "mean over t of min(t, k - 1) / k^2 (predict x_t / k)"

    def __init__(self, cfg: RunningMeanConfig):
        self.cfg = cfg
        self.input_dim, self.output_dim, self.seq_len = 1, 1, cfg.length

    @property
    def baseline_loss(self) -> float:
        k, t = self.cfg.window, self.cfg.length
        return sum(min(i, k - 1) for i in range(t)) / (k * k * t)

    def make_data(self, key, num_sequences, split="train"):
        x = jax.random.normal(key, (num_sequences, self.cfg.length))
        padded = jnp.pad(x, ((0, 0), (self.cfg.window - 1, 0)))
        y = jnp.mean(jnp.stack([padded[:, i : i + self.cfg.length] for i in range(self.cfg.window)]), axis=0)
        return Dataset(x=x[..., None], y=y[..., None], mask=jnp.ones_like(x))


seqpar.register_task("running_mean", RunningMeanConfig)

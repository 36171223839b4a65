"""The one sequential evaluator every method is judged by.

`rollout_states` runs the cell with `lax.scan` from the fixed initial state; the
BPTT loss, the truncated-BPTT loss, the embedding-parallel diagnostics and the
held-out evaluation all call it, so "rollout loss" means the same thing for
every method: the task loss of the trained cell run sequentially, with no
trainable state anywhere but its parameters.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from seqpar.model.model import Model, Params
from seqpar.tasks.base import Dataset, Task, masked_mean


def rollout_states(
    model: Model, params: Params, x: jax.Array, s0: jax.Array | None = None, unroll: int = 1, reset: jax.Array | None = None
) -> jax.Array:
    """States after every step, `(N, T, state_dim)`, from `s0` (default: the fixed initial state).

    With `reset: (T, state_dim)` the rollout is memoryless: the state entering step t is
    `reset[t]` whatever came before, so step t sees only `x[t]` (and, through `reset`, t).
    That is the memoryless baseline's model: the same cell, its recurrence cut."""
    if reset is not None:
        s = jnp.broadcast_to(reset.astype(x.dtype), (x.shape[0], *reset.shape))
        return jax.vmap(jax.vmap(model.step, in_axes=(None, 0, 0)), in_axes=(None, 0, 0))(params, s, x)
    if s0 is None:
        s0 = jnp.broadcast_to(model.initial_state().astype(x.dtype), (x.shape[0], model.state_dim))

    def body(s, xt):
        s = model.step_batch(params, s, xt)
        return s, s

    _, states = jax.lax.scan(body, s0, jnp.swapaxes(x, 0, 1), unroll=unroll)
    return jnp.swapaxes(states, 0, 1)


def readout_all(model: Model, params: Params, states: jax.Array) -> jax.Array:
    """Apply the readout to states of any leading shape `(..., state_dim)`."""
    lead = states.shape[:-1]
    out = model.readout_batch(params, states.reshape(-1, states.shape[-1]))
    return out.reshape(*lead, out.shape[-1])


class RolloutResult(NamedTuple):
    loss: jax.Array
    acc: jax.Array  # NaN where the task has no accuracy
    states: jax.Array


def evaluate(model: Model, task: Task, params: Params, data: Dataset, reset: jax.Array | None = None) -> RolloutResult:
    """Task loss and accuracy of a sequential rollout over `data` (jit-able); `reset` as in `rollout_states`."""
    states = rollout_states(model, params, data.x, reset=reset)
    out = readout_all(model, params, states)
    loss = task.loss(out, data.y, data.mask)
    correct = task.step_correct(out, data.y)
    acc = masked_mean(correct, data.mask) if correct is not None else jnp.float32(jnp.nan)
    return RolloutResult(loss, acc, states)

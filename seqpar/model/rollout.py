"""The one sequential evaluator every method is judged by.

`rollout_states` runs the model with `lax.scan` from the fixed initial state; the
BPTT loss, the truncated-BPTT loss, the embedding-parallel diagnostics and the
held-out evaluation all call it, so "rollout loss" means the same thing for
every method: the task loss of the trained model run sequentially, with no
trainable state anywhere but its parameters.

A stack is run layer by layer over whole sequences (`Model.over_layers`): the
same states as scanning the joint state, since a layer reads only the layers
below it at the same step. The scans keep each layer's input projection inside the
step (`scan_layer` says why); the Newton solvers compute it once per solve.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from seqpar.model.model import Layer, Model, Params
from seqpar.tasks.base import Dataset, Task, masked_mean


def scan_layer(layer: Layer, params: Params, u: jax.Array, s0: jax.Array, unroll: int = 1) -> jax.Array:
    """One layer's states `(N, T, S)` from `s0: (N, S)` over its inputs `u: (N, T, D)`.

    The input projection stays inside the step. Hoisting it out of the scan (one `(N·T, D)`
    matmul first, then a scan over projected inputs, cuDNN-style) was measured slower on a
    2-core CPU at the shipped tasks' narrow one-hot inputs (GRU 64, T = 4096, batch 1: a BPTT
    step 22 ms hoisted against 18 ms not; the embedding-parallel step 12 ms against 8.7 ms),
    since the scan then carries 3H floats per step instead of D; the Newton solvers, which
    re-read the inputs every iteration, do hoist it (`seqpar.model.newton`)."""
    step = jax.vmap(layer.step, in_axes=(None, 0, 0))

    def body(s, ut):
        s = step(params, s, ut)
        return s, s

    _, states = jax.lax.scan(body, s0, jnp.swapaxes(u, 0, 1), unroll=unroll)
    return jnp.swapaxes(states, 0, 1)


def memoryless_layer(layer: Layer, params: Params, px: jax.Array, reset: jax.Array) -> jax.Array:
    """One layer's states `(N, T, S)` when the state entering step t is `reset[t]: (T, S)` whatever came before."""
    s = jnp.broadcast_to(reset.astype(px.dtype), (px.shape[0], *reset.shape))
    return jax.vmap(jax.vmap(layer.step_projected, in_axes=(None, 0, 0)), in_axes=(None, 0, 0))(params, s, px)


def initial_states(model: Model, n: int, dtype) -> jax.Array:
    """The fixed initial joint state for `n` rows, `(n, state_dim)`."""
    return jnp.broadcast_to(model.initial_state().astype(dtype), (n, model.state_dim))


def rollout_states(
    model: Model, params: Params, x: jax.Array, s0: jax.Array | None = None, unroll: int = 1, reset: jax.Array | None = None
) -> jax.Array:
    """Joint states after every step, `(N, T, state_dim)` (`model.split` gives each layer's), from
    `s0: (N, state_dim)` (default: the fixed initial state).

    With `reset: (T, state_dim)` the rollout is memoryless: the state entering step t is
    `reset[t]` whatever came before, in every layer, so step t sees only `x[t]` (and, through
    `reset`, t). That is the memoryless baseline's model: the same model, its recurrence cut."""
    if s0 is None:
        s0 = initial_states(model, x.shape[0], x.dtype)
    starts = model.split(s0)
    resets = model.split(reset) if reset is not None else None

    def one_layer(layer: Layer, u: jax.Array) -> jax.Array:
        if resets is not None:
            return memoryless_layer(layer, params, layer.project(params, u), resets[layer.index])
        return scan_layer(layer, params, u, starts[layer.index], unroll)

    return model.over_layers(params, x, one_layer)


def readout_all(model: Model, params: Params, states: jax.Array) -> jax.Array:
    """Apply the readout to joint states of any leading shape `(..., state_dim)`."""
    lead = states.shape[:-1]
    out = model.readout_batch(params, states.reshape(-1, states.shape[-1]))
    return out.reshape(*lead, out.shape[-1])


class RolloutResult(NamedTuple):
    loss: jax.Array
    acc: jax.Array  # NaN where the task has no accuracy
    states: jax.Array  # joint states (N, T, state_dim); `model.split(states)` gives each layer's


def evaluate(model: Model, task: Task, params: Params, data: Dataset, reset: jax.Array | None = None) -> RolloutResult:
    """Task loss and accuracy of a sequential rollout over `data` (jit-able); `reset` as in `rollout_states`."""
    states = rollout_states(model, params, data.x, reset=reset)
    out = readout_all(model, params, states)
    loss = task.loss(out, data.y, data.mask)
    correct = task.step_correct(out, data.y)
    acc = masked_mean(correct, data.mask) if correct is not None else jnp.float32(jnp.nan)
    return RolloutResult(loss, acc, states)

"""Truncated BPTT: the rollout run window by window, no gradient across window boundaries.

The sequence is cut into windows of `window` steps (the last one shorter when the
length is not a multiple). Each window is a plain `seqpar.model.rollout.scan_layer`
scan that starts from the previous window's last state, so the forward pass, the
states and the loss value are exactly full BPTT's; only the gradient differs: the
state entering a window is a constant (`stop_gradient`), so a loss at step t
credits only the inputs of its own window. A dependency longer than the distance
to the window start cannot be learned through the gradient.

There is one optimizer step per minibatch of whole sequences (the gradient of
the whole sequence's loss, truncated), not one per window as in online TBPTT, so
it sees the same batches and step count as every other method. `window >= length`
is full BPTT.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from pydantic import Field

from seqpar.methods.base import METHODS, MethodConfig
from seqpar.methods.bptt import ScanMethod
from seqpar.model.model import Layer, Model, Params
from seqpar.model.rollout import initial_states, scan_layer


@METHODS.register("truncated_bptt")
class TruncatedBPTTConfig(MethodConfig):
    type: Literal["truncated_bptt"] = "truncated_bptt"
    window: int = Field(gt=0, description="k: steps per window; gradients stop at window boundaries (>= length: full BPTT)")
    unroll: int = Field(1, ge=1, description="lax.scan unroll factor (a speed knob; results are identical)")

    def build(self, model, task):
        return TruncatedBPTT(self, model, task)


def truncated_layer(layer: Layer, params: Params, u: jax.Array, s0: jax.Array, window: int, unroll: int = 1) -> jax.Array:
    """One layer's states `(N, T, S)` over its inputs `(N, T, D)`, the gradient cut every `window` steps."""
    n, t = u.shape[:2]
    k = min(window, t)
    full, rest = divmod(t, k)

    def one_window(s, uw):
        states = scan_layer(layer, params, uw, jax.lax.stop_gradient(s), unroll)
        return states[:, -1], states

    # Windows become the leading (scanned) axis: (W, N, k, D).
    us = jnp.swapaxes(u[:, : full * k].reshape(n, full, k, u.shape[-1]), 0, 1)
    s, states = jax.lax.scan(one_window, s0, us)
    states = jnp.swapaxes(states, 0, 1).reshape(n, full * k, -1)
    if rest:  # the shorter last window
        _, tail = one_window(s, u[:, full * k :])
        states = jnp.concatenate([states, tail], axis=1)
    return states


def truncated_rollout_states(model: Model, params: Params, x: jax.Array, window: int, unroll: int = 1) -> jax.Array:
    """The rollout's joint states `(N, T, state_dim)` (same values), with the gradient cut every
    `window` steps. Layer by layer (each as `scan_layer`, projection inside the step): cutting
    every layer's state at a window edge is cutting the joint state there."""
    starts = model.split(initial_states(model, x.shape[0], x.dtype))

    def one_layer(layer: Layer, u: jax.Array) -> jax.Array:
        return truncated_layer(layer, params, u, starts[layer.index], window, unroll)

    return model.over_layers(params, x, one_layer)


class TruncatedBPTT(ScanMethod):
    cfg: TruncatedBPTTConfig

    def states(self, params, x):
        # The states (and so the loss value) are BPTT's; only the gradient stops at window edges.
        return truncated_rollout_states(self.model, params, x, self.cfg.window, self.cfg.unroll)

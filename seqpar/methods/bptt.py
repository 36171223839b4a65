"""Backpropagation through time: `lax.scan` over the sequence, gradient of the rollout loss."""

from __future__ import annotations

from typing import Literal

import jax
import optax
from pydantic import Field

from seqpar.methods.base import METHODS, Method, MethodConfig
from seqpar.model.rollout import readout_all, rollout_states


@METHODS.register("bptt")
class BPTTConfig(MethodConfig):
    type: Literal["bptt"] = "bptt"
    unroll: int = Field(1, ge=1, description="lax.scan unroll factor (a speed knob; results are identical)")

    def build(self, model, task):
        return BPTT(self, model, task)


class ScanMethod(Method):
    """Abstract: methods whose loss is the task loss of a sequential `lax.scan` rollout.

    Subclasses only say how the states are computed (and so which gradients flow); the
    loss *value* is always the rollout loss, so their objective is the rollout loss too.
    """

    def states(self, params, x):  # pragma: no cover - interface
        raise NotImplementedError

    def init(self, key, params, train):
        return {"params": params, "opt_state": self.tx.init(params)}

    def loss(self, params, x, y, mask):
        return self.task.loss(readout_all(self.model, params, self.states(params, x)), y, mask)

    def train_step(self, state, train, batch, step, key):
        loss, grads = jax.value_and_grad(self.loss)(state["params"], batch.x, batch.y, batch.mask)
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {"objective": loss, "task_loss": loss, "grad_norm_params": optax.tree.norm(grads)}
        return {"params": params, "opt_state": opt_state}, metrics

    def params(self, state):
        return state["params"]

    def eval_metrics(self, state, train, rollout_train_states, rollout_train_loss):
        # The objective is the rollout loss itself: there is nothing else to optimise.
        return {"objective": rollout_train_loss}

    def sequential_depth(self, length, metrics):
        # The forward scan, then its transpose backwards: T cell steps each way. Truncation cuts
        # gradients, not the chain: windows start from the previous window's last state. A stack
        # is scanned layer by layer over the whole sequence (see `scan_layer`).
        return 2 * self.model.layers * length


class BPTT(ScanMethod):
    cfg: BPTTConfig

    def states(self, params, x):
        return rollout_states(self.model, params, x, unroll=self.cfg.unroll)

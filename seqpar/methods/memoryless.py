"""The empirical memoryless baseline: the same cell and readout, trained with the recurrence cut.

"Memoryless baseline" means the best held-out loss of a predictor that sees the current
input `x_t` and the position `t` but nothing earlier. Each task states it as a formula;
this method measures it by training: the state entering step t is `reset[t]`, a
trainable per-position state (initialised to the fixed initial state), never the state
the previous step produced. So the model is a feedforward net on `(x_t, t)` built from
the very cell, readout, rollout and loss every other method uses; the rollout evaluator
applies the same reset (`Method.rollout_reset`), so its held-out loss is that of a
predictor without memory. Any method whose rollout loss is not below this one's has not
shown that it uses its memory.

The runner trains it under the label `baseline_trained` when `train.baseline_trained` is
on (see `seqpar.train.runner`); it can also be listed as an ordinary method.
"""

from __future__ import annotations

from typing import Any, Literal, cast

import jax
import jax.numpy as jnp
import optax

from seqpar.methods.base import METHODS, Method, MethodConfig
from seqpar.model.rollout import readout_all, rollout_states

BASELINE_LABEL = "baseline_trained"  # the label the runner gives it; reserved in specs


@METHODS.register("memoryless")
class MemorylessConfig(MethodConfig):
    type: Literal["memoryless"] = "memoryless"

    def build(self, model, task):
        return Memoryless(self, model, task)


class Memoryless(Method):
    cfg: MemorylessConfig

    def init(self, key, params, train):
        reset = jnp.broadcast_to(self.model.initial_state(), (train.x.shape[1], self.model.state_dim))
        trainable = {"params": params, "reset": reset}
        return {**trainable, "opt_state": self.tx.init(trainable)}

    def loss(self, trainable, x, y, mask):
        states = rollout_states(self.model, trainable["params"], x, reset=trainable["reset"])
        return self.task.loss(readout_all(self.model, trainable["params"], states), y, mask)

    def train_step(self, state, train, batch, step, key):
        trainable = {"params": state["params"], "reset": state["reset"]}
        loss, grads = jax.value_and_grad(self.loss)(trainable, batch.x, batch.y, batch.mask)
        updates, opt_state = self.tx.update(grads, state["opt_state"], trainable)
        new = cast(dict[str, Any], optax.apply_updates(trainable, updates))
        metrics = {"objective": loss, "task_loss": loss, "grad_norm_params": optax.tree.norm(grads["params"])}
        return {"params": new["params"], "reset": new["reset"], "opt_state": opt_state}, metrics

    def params(self, state):
        return state["params"]

    def rollout_reset(self, state):
        return state["reset"]

    def eval_metrics(self, state, train, rollout_train_states, rollout_train_loss):
        # The objective is the (memoryless) rollout loss itself.
        return {"objective": rollout_train_loss}

    def sequential_depth(self, length, metrics):
        # No step waits for another (each starts from its reset state): one pass forward, one back,
        # per layer (a layer reads the one below).
        return 2 * self.model.layers

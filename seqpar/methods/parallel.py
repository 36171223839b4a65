"""Embedding-parallel training ("transition representations").

Every transition (sequence i, step t) owns a trainable state embedding
`E[i, t]`: the state *after* step t. The state before step 0 is the fixed
initial state (zeros, not trainable), the same one every rollout starts from.
The cell is applied to all pairs `(E[i, t-1], x[i, t])` at once with `vmap`
(no scan anywhere in the loss), and trained on

    task_loss(readout(cell(E[t-1], x[t])), y[t])  +  w * mean_t ||cell(E[t-1], x[t]) - E[t]||^2

Gradients update the cell, the readout and the table.

Readout choice (`readout_from`, default `cell`): the readout reads the cell's
prediction `cell(E[t-1], x[t])`, not the stored `E[t]`. A rollout only ever reads
states the cell produced, so the task gradient must pass through a cell
application; reading the table instead lets the free per-transition parameters
encode the answers directly (task loss -> 0 with an untrained cell), leaving the
consistency term as the only link to the rollout. `table` is offered to measure
exactly that failure. With `E` equal to the true rollout states both choices give
the BPTT loss.

Minibatches gather their rows of `E` and of its optimizer state; the table's
optimizer runs per row (`vmap` over sequences, each row with its own step count)
and only the batch's rows are written back, so rows outside the batch are never
touched: no moment decay, no bias-correction drift.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import optax
from pydantic import Field

from seqpar.methods.base import METHODS, Method, MethodConfig
from seqpar.rollout import readout_all


@METHODS.register("parallel")
class ParallelConfig(MethodConfig):
    type: Literal["parallel"] = "parallel"
    consistency_weight: float = Field(1.0, ge=0, allow_inf_nan=False, description="w in task + w * consistency")
    readout_from: Literal["cell", "table"] = Field("cell", description="readout reads cell(E[t-1], x[t]) or E[t]")

    def build(self, model, task):
        return EmbeddingParallel(self, model, task)


def _take_rows(tree, idx):
    return jax.tree.map(lambda a: a[idx], tree)


def _put_rows(tree, idx, rows):
    return jax.tree.map(lambda a, r: a.at[idx].set(r), tree, rows)


class EmbeddingParallel(Method):
    cfg: ParallelConfig

    def __init__(self, cfg, model, task):
        super().__init__(cfg, model, task)
        self.table_tx = cfg.optimizer.build()

    def init(self, key, params, train):
        n, t = train.x.shape[:2]
        table = jnp.zeros((n, t, self.model.state_dim), jnp.float32)
        return {
            "params": params,
            "opt_state": self.tx.init(params),
            "table": table,
            # One optimizer state per sequence row, so rows update independently.
            "table_opt_state": jax.vmap(self.table_tx.init)(table),
        }

    def predictions(self, params, rows, x):
        """`cell(E[t-1], x[t])` for every transition of `rows: (B, T, S)`, in one batched call."""
        b, t, s = rows.shape
        s0 = jnp.broadcast_to(self.model.initial_state(), (b, 1, s))
        prev = jnp.concatenate([s0, rows[:, :-1]], axis=1)
        pred = self.model.step_batch(params, prev.reshape(b * t, s), x.reshape(b * t, -1))
        return pred.reshape(b, t, s)

    def loss(self, params, rows, x, y, mask):
        pred = self.predictions(params, rows, x)
        read = pred if self.cfg.readout_from == "cell" else rows
        task_loss = self.task.loss(readout_all(self.model, params, read), y, mask)
        sq_residual = jnp.sum(jnp.square(pred - rows), axis=-1)  # (B, T)
        consistency = jnp.mean(sq_residual)
        objective = task_loss + self.cfg.consistency_weight * consistency
        return objective, {"task_loss": task_loss, "consistency": consistency, "sq_residual": sq_residual}

    def train_step(self, state, train, batch, step, key):
        rows = state["table"][batch.idx]
        rows_opt = _take_rows(state["table_opt_state"], batch.idx)
        grad_fn = jax.value_and_grad(self.loss, argnums=(0, 1), has_aux=True)
        (objective, aux), (g_params, g_rows) = grad_fn(state["params"], rows, batch.x, batch.y, batch.mask)

        updates, opt_state = self.tx.update(g_params, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        row_updates, rows_opt = jax.vmap(self.table_tx.update)(g_rows, rows_opt, rows)
        rows = optax.apply_updates(rows, row_updates)

        new_state = {
            "params": params,
            "opt_state": opt_state,
            "table": state["table"].at[batch.idx].set(rows),
            "table_opt_state": _put_rows(state["table_opt_state"], batch.idx, rows_opt),
        }
        metrics = {
            "objective": objective,
            "task_loss": aux["task_loss"],
            "consistency": aux["consistency"],
            "grad_norm_params": optax.global_norm(g_params),
            "grad_norm_table": optax.global_norm(g_rows),
        }
        return new_state, metrics

    def params(self, state):
        return state["params"]

    def eval_metrics(self, state, train, rollout_train_states, rollout_train_loss):
        table = state["table"]
        objective, aux = self.loss(state["params"], table, train.x, train.y, train.mask)
        residual = jnp.sqrt(aux["sq_residual"])
        dist = jnp.linalg.norm(table - rollout_train_states, axis=-1)  # (N, T)
        out = {
            "objective": objective,
            "task_loss": aux["task_loss"],
            "consistency": aux["consistency"],
            "residual_mean": jnp.mean(residual),
            "residual_max": jnp.max(residual),
            "table_rollout_dist": jnp.mean(dist),
        }
        # Distance to the true rollout by quarter of the sequence: does agreement spread from t=0?
        for q, part in enumerate(jnp.array_split(dist, 4, axis=1), start=1):
            out[f"table_rollout_dist_q{q}"] = jnp.mean(part)
        return out

    def state_table_bytes(self, state):
        return int(state["table"].nbytes)

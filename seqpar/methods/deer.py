"""DEER and quasi-DEER: the states of every sequence solved in parallel over time by Newton's method.

Each step solves the batch's rollout states by Newton iterations over the whole
sequence at once (`seqpar.model.newton`: linearise the cell at the current guess,
solve the linear recurrence with an associative scan, repeat), then trains on the
task loss of those states. The gradient is the adjoint of the recurrence, solved by
the same scan backwards in time; the Newton loop is never differentiated. At
convergence the states are the rollout's and the gradient (`gradient: exact`) is
BPTT's, so DEER is BPTT computed in log T depth per iteration instead of T steps.

- `jacobian: full` (DEER, Lim et al. 2024): `J_t` by forward-mode autodiff, S×S per
  step; few iterations, each O(T·S³) work. `diagonal` (quasi-DEER, Gonzalez et al.
  2024): the cell's analytic diagonal; elementwise scans, more iterations. For a cell
  whose recurrence is linear and diagonal in the state (mingru) the diagonal is the
  whole Jacobian: one iteration, the minGRU paper's parallel scan.
- `gradient: diagonal` (only with `jacobian: diagonal`): the adjoint with the diagonal
  Jacobians too, an approximate gradient that never builds an S×S block.
- `damping` λ > 0: ELK's Levenberg–Marquardt step (a parallel Kalman filter), for
  cells whose linearisation expands and would overflow plain Newton.
- `warm_start: previous` keeps each training sequence's last solution as a per-row
  state (sharded like the embedding table) and starts its next solve there (the DEER
  paper's training trick); `zeros` starts every solve from zeros.

Newton stops at `tol` or after `max_iters`; a row that hits `max_iters` unconverged is
counted (never silent): `newton_hit_max` in the step, `newton_hit_max_total` over the
run so far. A non-finite state makes the loss non-finite, so the loop marks the run
`diverged`.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import optax
from pydantic import Field, model_validator

from seqpar.config import KeyedError
from seqpar.methods.base import METHODS, Method, MethodConfig
from seqpar.model.newton import (
    BLOCKS_PER_TRANSITION,
    DAMPED_BLOCKS_PER_TRANSITION,
    Jacobian,
    NewtonOptions,
    NewtonStats,
    block_floats,
    differentiable_states,
    rows_per_chunk,
    solve_states,
)
from seqpar.model.rollout import readout_all
from seqpar.sharding import put_rows, take_rows


@METHODS.register("deer")
class DEERConfig(MethodConfig):
    type: Literal["deer"] = "deer"
    jacobian: Literal["full", "diagonal"] = Field(
        "full", description="full: DEER (S×S Jacobians by jacfwd); diagonal: quasi-DEER (the cell's analytic diagonal)"
    )
    max_iters: int = Field(100, ge=1, description="Newton iterations at most per solve (T always suffices without damping)")
    tol: float = Field(
        1e-5, gt=0, allow_inf_nan=False, description="stop when max_t ‖residual‖ (or, undamped, max_t ‖state change‖) is at most this"
    )
    damping: float = Field(0.0, ge=0, allow_inf_nan=False, description="λ of ELK's damped (Levenberg–Marquardt) step; 0: plain Newton")
    warm_start: Literal["zeros", "previous"] = Field(
        "zeros", description="start each solve from zeros or from the sequence's last solution"
    )
    gradient: Literal["exact", "diagonal"] = Field(
        "exact", description="adjoint with full Jacobians (BPTT's gradient) or their diagonals (approximate; jacobian: diagonal only)"
    )

    resume_settable = ("damping", "max_iters", "tol")  # a diverged solve may be retried from its last checkpoint

    @model_validator(mode="after")
    def _gradient_fits(self):
        if self.gradient == "diagonal" and self.jacobian != "diagonal":
            raise KeyedError("gradient", "diagonal is offered with jacobian: diagonal only (a full Jacobian gives the exact adjoint)")
        return self

    @property
    def newton(self) -> NewtonOptions:
        return NewtonOptions(self.jacobian, self.max_iters, self.tol, self.damping)

    def build(self, model, task):
        return DEER(self, model, task)


def newton_metrics(stats: NewtonStats, max_iters: int) -> dict[str, jax.Array]:
    """Per-row solver statistics as scalar metrics (floats, so they flow through every record)."""
    iters = stats.iterations.astype(jnp.float32)
    hit_max = (~stats.converged) & (stats.iterations >= max_iters)
    return {
        "newton_iters_mean": jnp.mean(iters),
        "newton_iters_max": jnp.max(iters),
        "newton_residual": jnp.max(stats.residual),
        "newton_hit_max": jnp.sum(hit_max).astype(jnp.float32),
    }


class DEER(Method):
    cfg: DEERConfig
    row_state_keys = ("guess",)

    def __init__(self, cfg, model, task):
        super().__init__(cfg, model, task)
        self.opts = self.cfg.newton
        self.gradient: Jacobian = "full" if self.cfg.gradient == "exact" else "diagonal"

    def init(self, key, params, train):
        # Rows that ended a solve at max_iters unconverged, summed over every step so far.
        state = {"params": params, "opt_state": self.tx.init(params), "hit_max_total": jnp.float32(0)}
        if self.cfg.warm_start == "previous":
            n, t = train.x.shape[:2]
            state["guess"] = jnp.zeros((n, t, self.model.state_dim), jnp.float32)
        return state

    def guess(self, state, idx, x):
        if self.cfg.warm_start == "previous":
            return take_rows(state["guess"], idx)
        return jnp.zeros((*x.shape[:2], self.model.state_dim), x.dtype)

    def loss(self, params, states, x, y, mask):
        """Task loss on the solved `states`, differentiable in `params` through the adjoint."""
        states = differentiable_states(self.model, params, x, states, self.gradient)
        return self.task.loss(readout_all(self.model, params, states), y, mask)

    def train_step(self, state, train, batch, step, key):
        params = state["params"]
        states, stats = solve_states(self.model, params, batch.x, self.guess(state, batch.idx, batch.x), self.opts)
        loss, grads = jax.value_and_grad(self.loss)(params, states, batch.x, batch.y, batch.mask)
        updates, opt_state = self.tx.update(grads, state["opt_state"], params)
        newton = newton_metrics(stats, self.cfg.max_iters)
        hit_max_total = state["hit_max_total"] + newton["newton_hit_max"]
        new_state = {"params": optax.apply_updates(params, updates), "opt_state": opt_state, "hit_max_total": hit_max_total}
        if self.cfg.warm_start == "previous":
            new_state["guess"] = put_rows(state["guess"], batch.idx, states.astype(jnp.float32))
        metrics = {
            "objective": loss,
            "task_loss": loss,
            "grad_norm_params": optax.tree.norm(grads),
            **newton,
            "newton_hit_max_total": hit_max_total,
        }
        return new_state, metrics

    def params(self, state):
        return state["params"]

    def eval_metrics(self, state, train, rollout_train_states, rollout_train_loss):
        # The whole training set, solved as training solves it (same warm start), a chunk of
        # rows at a time: the objective is the loss on Newton's states, which equals the
        # rollout loss only if Newton converged.
        params = state["params"]
        x = train.x
        chunk = rows_per_chunk(self.cfg.jacobian, x.shape[1], self.model.state_dim)
        states, stats = solve_states(self.model, params, x, self.guess(state, None, x), self.opts, chunk)
        objective = self.task.loss(readout_all(self.model, params, states), train.y, train.mask)
        dist = jnp.linalg.norm(states - rollout_train_states, axis=-1)
        return {
            "objective": objective,
            "task_loss": objective,
            "newton_rollout_dist": jnp.mean(dist),
            "newton_rollout_dist_max": jnp.max(dist),
            **newton_metrics(stats, self.cfg.max_iters),
        }

    def extra_activation_bytes(self, batch, length, sequences):
        per_block = DAMPED_BLOCKS_PER_TRANSITION if self.cfg.damping > 0 else BLOCKS_PER_TRANSITION
        s = self.model.state_dim
        forward = per_block * block_floats(self.cfg.jacobian, s)
        adjoint = BLOCKS_PER_TRANSITION * block_floats("full" if self.gradient == "full" else "diagonal", s)
        step = batch * length * max(forward, adjoint)
        evaluation = min(rows_per_chunk(self.cfg.jacobian, length, s), sequences) * length * forward
        return 4 * max(step, evaluation)

"""DEER and quasi-DEER: the states of every sequence solved in parallel over time by Newton's method.

Each step solves the batch's rollout states by Newton iterations over the whole
sequence at once (`seqpar.model.newton`: linearise the cell at the current guess,
solve the linear recurrence with an associative scan, repeat), then trains on the
task loss of those states. The gradient is the adjoint of the recurrence, solved by
the same scan backwards in time; the Newton loop is never differentiated. At
convergence the states are the rollout's and the gradient (`gradient: exact`) is
BPTT's, so DEER is BPTT computed in log T depth per iteration instead of T steps.

- `jacobian: full` (DEER, Lim et al. 2024): the cell's analytic S×S Jacobian per step;
  few iterations, each O(T·S³) work. `diagonal` (quasi-DEER, Gonzalez et al. 2024): its
  diagonal; elementwise scans, more iterations. On a cell whose exact Jacobian is
  structured (`Cell.jacobian_structure`: diagonal for mingru and paragru, 2×2 blocks per
  unit for paralstm) both settings are full Newton in that structure, never an S×S
  matrix; for mingru (linear and diagonal in the state) one iteration, the minGRU
  paper's parallel scan.
- `gradient: exact`: BPTT's gradient by the adjoint; `adjoint` says how a `full` cell's is
  solved: `sequential` (reverse scan of per-step VJPs, BPTT's cost), `parallel` (S×S
  associative scan, log T depth, for accelerators), `auto` (sequential on CPU, parallel
  elsewhere). A structured cell's exact adjoint is its elementwise/block scan.
- `gradient: diagonal` (only with `jacobian: diagonal`): the adjoint with the diagonal
  Jacobians too, an approximate gradient that never builds an S×S block (exact on a
  structured cell).
- `tol: auto` (the default): stop at `10 · eps · (1 + max_t ‖s_t‖)` for the states'
  dtype (`seqpar.model.newton`), just above float32 Newton's floor (measured); `tol: 0` runs
  a fixed budget of `max_iters` iterations (ParaRNN's); `jacobian: none` is Picard iteration;
  `warm_start: f0` starts from ParaRNN's guess `f(0, x_t)`.
- `unconverged: bptt` (the default): a step in which a solve stopped unconverged (or went
  non-finite) takes BPTT's gradient instead of the adjoint at the wrong iterate, counted
  (`newton_fallback`); `apply` applies it anyway, counted (`newton_unconverged`). Every
  evaluation compares the gradient the method would apply with BPTT's on a fixed batch
  (`grad_cos_bptt`, `grad_relerr_bptt`).
- `damping` λ > 0: ELK's Levenberg–Marquardt step (a parallel Kalman filter), for
  cells whose linearisation expands and would overflow plain Newton.
- `warm_start: previous` keeps each training sequence's last solution as a per-row
  state (sharded like the embedding table) and starts its next solve there (the DEER
  paper's training trick); `zeros` starts every solve from zeros.

Newton stops at `tol` or after `max_iters`; a row that hits `max_iters` unconverged keeps
its best iterate (lowest residual) and is counted (never silent): `newton_hit_max` in the step, `newton_hit_max_total` over the
run so far. A non-finite state makes the loss non-finite, so the loop marks the run
`diverged`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import jax
import jax.numpy as jnp
import optax
from pydantic import Field, model_validator

from seqpar.config import KeyedError
from seqpar.methods.base import METHODS, Method, MethodConfig, scan_depth
from seqpar.model.cells.base import JacobianStructure
from seqpar.model.model import Model
from seqpar.model.newton import (
    AUTO_TOL_DOC,
    BLOCKS_PER_TRANSITION,
    DAMPED_BLOCKS_PER_TRANSITION,
    Jacobian,
    NewtonOptions,
    NewtonStats,
    adjoint_plan,
    block_floats,
    rows_per_chunk,
    solve_structure,
)
from seqpar.model.newton_stack import differentiable_stack, solve_stack
from seqpar.model.rollout import readout_all, rollout_states
from seqpar.sharding import put_rows, take_rows


@METHODS.register("deer")
class DEERConfig(MethodConfig):
    type: Literal["deer"] = "deer"
    jacobian: Literal["full", "diagonal", "none"] = Field(
        "full",
        description="full: DEER (the cell's S×S Jacobians); diagonal: quasi-DEER (their diagonals); none: Picard (Jacobi) "
        "iteration, s_t <- f(s_{t-1}, x_t) for all t at once, at most T iterations on any cell. On a cell whose exact "
        "Jacobian is structured (diagonal: mingru, paragru; k×k blocks per unit: paralstm) full and diagonal both mean full "
        "Newton with that exact structure: elementwise or block scans, never an S×S matrix",
    )
    max_iters: int = Field(
        100, ge=1, description="Newton iterations at most per solve (T always suffices without damping); with tol: 0, exactly this many"
    )
    tol: Annotated[float, Field(ge=0, allow_inf_nan=False)] | Literal["auto"] = Field(
        "auto",
        description="stop when max_t ‖residual‖ (or, undamped, max_t ‖state change‖) is at most this; "
        f"auto: {AUTO_TOL_DOC}; 0: a fixed budget, every solve runs exactly max_iters iterations and the gradient is taken "
        "at its last iterate (ParaRNN's regime: max_iters: 3)",
    )
    damping: float = Field(0.0, ge=0, allow_inf_nan=False, description="λ of ELK's damped (Levenberg–Marquardt) step; 0: plain Newton")
    warm_start: Literal["zeros", "previous", "f0"] = Field(
        "zeros",
        description="start each solve from zeros, from the sequence's last solution, or from f(0, x_t) at every step "
        "(ParaRNN's guess: the cell applied to a zero state)",
    )
    unconverged: Literal["bptt", "apply"] = Field(
        "bptt",
        description="a step in which a solve stopped unconverged (at max_iters above the tolerance, or non-finite): bptt "
        "takes BPTT's gradient for that step instead (a sequential scan; counted, newton_fallback), apply applies the "
        "adjoint gradient at the unconverged iterate anyway (counted, newton_unconverged). A fixed budget (tol: 0) always applies",
    )
    gradient: Literal["exact", "diagonal"] = Field(
        "exact",
        description="adjoint with exact Jacobians (BPTT's gradient) or their diagonals (approximate; jacobian: diagonal only); "
        "on a structured cell both are the exact structured adjoint",
    )
    adjoint: Literal["sequential", "parallel", "auto"] = Field(
        "auto",
        description="how the exact adjoint of a full-Jacobian cell is solved: sequential (reverse scan of per-step VJPs, "
        "O(T·S²), BPTT's cost), parallel (associative scan of S×S blocks, O(log T) depth, O(T·S³) work: for accelerators), "
        "auto (sequential on CPU, parallel on accelerators). Structured cells always use their exact elementwise/block scan",
    )

    resume_settable = ("damping", "max_iters", "tol", "unconverged")  # a diverged solve may be retried from its last checkpoint
    omit_defaults = ("unconverged",)  # added after records existed

    @model_validator(mode="after")
    def _gradient_fits(self):
        if self.gradient == "diagonal" and self.jacobian != "diagonal":
            raise KeyedError("gradient", "diagonal is offered with jacobian: diagonal only (a full Jacobian gives the exact adjoint)")
        if "adjoint" in self.model_fields_set and self.gradient == "diagonal":
            raise KeyedError("adjoint", "only meaningful with gradient: exact (the diagonal adjoint is always an elementwise scan)")
        if self.jacobian == "none" and self.damping > 0:
            raise KeyedError("damping", "Picard iteration (jacobian: none) has no linearisation to damp; damping needs full or diagonal")
        if "unconverged" in self.model_fields_set and self.tol == 0:
            raise KeyedError("unconverged", "a fixed budget (tol: 0) is never unconverged: its last iterate is always used")
        return self

    @property
    def newton(self) -> NewtonOptions:
        return NewtonOptions(self.jacobian, self.max_iters, self.tol, self.damping)

    def build(self, model, task):
        return DEER(self, model, task)


def newton_metrics(stats: NewtonStats, opts: NewtonOptions) -> dict[str, jax.Array]:
    """Per-row solver statistics as scalar metrics (floats, so they flow through every record).

    `newton_residual` is the largest finite residual; a solve whose state went non-finite is
    counted apart (`newton_nonfinite`), so an overflowing solve is told from a diverging
    optimizer. Under a fixed budget (`tol: 0`) no solve is "at the cap": `newton_hit_max` is 0."""
    iters = stats.iterations.astype(jnp.float32)
    finite = jnp.isfinite(stats.residual)
    hit_max = (~stats.converged) & (stats.iterations >= opts.max_iters) & finite & (not opts.budget)
    return {
        "newton_iters_mean": jnp.mean(iters),
        "newton_iters_max": jnp.max(iters),
        "newton_residual": jnp.max(jnp.where(finite, stats.residual, 0.0)),
        "newton_hit_max": jnp.sum(hit_max).astype(jnp.float32),
        "newton_nonfinite": jnp.sum(~finite).astype(jnp.float32),
    }


def stack_metrics(stats: list[NewtonStats], opts: NewtonOptions) -> dict[str, jax.Array]:
    """`newton_metrics` over every (row, layer) solve; a stack adds each layer's as `..._layer{l}`."""
    if len(stats) == 1:
        return newton_metrics(stats[0], opts)
    out = newton_metrics(NewtonStats(*(jnp.stack(f) for f in zip(*stats, strict=True))), opts)
    for i, st in enumerate(stats):
        out.update({f"{k}_layer{i}": v for k, v in newton_metrics(st, opts).items()})
    return out


def unconverged(stats: list[NewtonStats], opts: NewtonOptions) -> jax.Array:
    """True when some solve of the batch stopped short of the tolerance (or went non-finite): its
    iterate is known to be wrong. Never under a fixed budget, whose last iterate is the answer."""
    if opts.budget:
        return jnp.bool_(False)
    return jnp.any(jnp.stack([jnp.any(~st.converged) for st in stats]))


def layer_distances(model: Model, prefix: str, states: jax.Array, truth: jax.Array) -> dict[str, jax.Array]:
    """Mean and max over (row, step) of `‖states − truth‖`, the joint state's and, in a stack, each layer's."""
    out = {}
    pairs = [("", states, truth)]
    if model.layers > 1:
        pairs += [(f"_layer{i}", s, t) for i, (s, t) in enumerate(zip(model.split(states), model.split(truth), strict=True))]
    for suffix, s, t in pairs:
        dist = jnp.linalg.norm(s - t, axis=-1)
        out[f"{prefix}{suffix}"] = jnp.mean(dist)
        out[f"{prefix}_max{suffix}"] = jnp.max(dist)
    return out


# Rows of the fixed batch on which every evaluation compares the method's gradient with BPTT's.
GRADIENT_CHECK_ROWS = 64


class DEER(Method):
    cfg: DEERConfig
    row_state_keys = ("guess",)

    def __init__(self, cfg, model, task):
        super().__init__(cfg, model, task)
        self.opts = self.cfg.newton
        self.gradient: Jacobian = "full" if self.cfg.gradient == "exact" else "diagonal"

    def init(self, key, params, train):
        # Rows that ended a solve at max_iters unconverged, and steps that took BPTT's gradient
        # instead of an unconverged adjoint, summed over every step so far.
        state = {"params": params, "opt_state": self.tx.init(params), "hit_max_total": jnp.float32(0), "fallback_total": jnp.float32(0)}
        if self.cfg.warm_start == "previous":
            n, t = train.x.shape[:2]
            state["guess"] = jnp.zeros((n, t, self.model.state_dim), jnp.float32)
        return state

    def guess(self, state, idx, x):
        """Each solve's starting states; None for ParaRNN's `f(0, x_t)`, made per layer by the solver."""
        if self.cfg.warm_start == "previous":
            return take_rows(state["guess"], idx)
        if self.cfg.warm_start == "f0":
            return None
        return jnp.zeros((*x.shape[:2], self.model.state_dim), x.dtype)

    def loss(self, params, states, x, y, mask):
        """Task loss on the solved `states`, differentiable in `params` through the adjoint."""
        states = differentiable_stack(self.model, params, x, states, self.gradient, self.cfg.adjoint)
        return self.task.loss(readout_all(self.model, params, states), y, mask)

    def bptt_loss(self, params, x, y, mask):
        """The rollout's task loss by a sequential scan: BPTT's value and gradient."""
        return self.task.loss(readout_all(self.model, params, rollout_states(self.model, params, x)), y, mask)

    def gradient_of(self, params, x, y, mask, guess) -> tuple[jax.Array, Any, list[NewtonStats], jax.Array, jax.Array]:
        """(loss, gradient, solve stats, solved states, fell back) on one batch: the adjoint at
        Newton's states, or, where a solve stopped unconverged and `unconverged: bptt`, BPTT's."""
        states, stats = solve_stack(self.model, params, x, guess, self.opts)
        newton = lambda: jax.value_and_grad(self.loss)(params, states, x, y, mask)  # noqa: E731
        if self.cfg.unconverged == "apply":
            return *newton(), stats, states, jnp.bool_(False)
        fall_back = unconverged(stats, self.opts)
        loss, grads = jax.lax.cond(fall_back, lambda: jax.value_and_grad(self.bptt_loss)(params, x, y, mask), newton)
        return loss, grads, stats, states, fall_back

    def train_step(self, state, train, batch, step, key):
        params = state["params"]
        loss, grads, stats, states, fell_back = self.gradient_of(
            params, batch.x, batch.y, batch.mask, self.guess(state, batch.idx, batch.x)
        )
        updates, opt_state = self.tx.update(grads, state["opt_state"], params)
        newton = stack_metrics(stats, self.opts)
        hit_max_total = state["hit_max_total"] + newton["newton_hit_max"]
        fallback_total = state["fallback_total"] + fell_back.astype(jnp.float32)
        new_state = {
            "params": optax.apply_updates(params, updates),
            "opt_state": opt_state,
            "hit_max_total": hit_max_total,
            "fallback_total": fallback_total,
        }
        if self.cfg.warm_start == "previous":
            # A non-finite solve is not kept as the next guess (it would poison every later solve of the row).
            kept = jnp.where(jnp.isfinite(states), states, take_rows(state["guess"], batch.idx))
            new_state["guess"] = put_rows(state["guess"], batch.idx, kept.astype(jnp.float32))
        metrics = {
            "objective": loss,
            "task_loss": loss,
            "grad_norm_params": optax.tree.norm(grads),
            **newton,
            "newton_hit_max_total": hit_max_total,
            "newton_fallback": fell_back.astype(jnp.float32),
            "newton_fallback_total": fallback_total,
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
        layer = self.model.layer(0)  # every layer has the same cell, so the same structure and size
        chunk = rows_per_chunk(solve_structure(layer, self.cfg.jacobian), x.shape[1], layer.state_dim, layer.jacobian_block)
        states, stats = solve_stack(self.model, params, x, self.guess(state, None, x), self.opts, chunk)
        objective = self.task.loss(readout_all(self.model, params, states), train.y, train.mask)
        return {
            "objective": objective,
            "task_loss": objective,
            **layer_distances(self.model, "newton_rollout_dist", states, rollout_train_states),
            **stack_metrics(stats, self.opts),
            **self.gradient_agreement(state, train),
        }

    def gradient_agreement(self, state, train) -> dict[str, jax.Array]:
        """What the solver hands the optimizer, against BPTT's gradient at the same parameters and
        on the same batch (the first `GRADIENT_CHECK_ROWS` training sequences, the same at every
        evaluation): their cosine and the relative error ‖g − g_BPTT‖ / ‖g_BPTT‖. The method's
        gradient is the one its step would apply, from the step's own starting guess (a warm
        start's stored solutions included), fallback included."""
        params, rows = state["params"], min(GRADIENT_CHECK_ROWS, train.x.shape[0])
        x, y, mask = train.x[:rows], train.y[:rows], train.mask[:rows]
        _, grads, *_ = self.gradient_of(params, x, y, mask, self.guess(state, jnp.arange(rows), x))
        _, truth = jax.value_and_grad(self.bptt_loss)(params, x, y, mask)
        g, t = (jnp.concatenate([jnp.ravel(a) for a in jax.tree.leaves(tree)]) for tree in (grads, truth))
        tn = jnp.linalg.norm(t)
        return {
            "grad_cos_bptt": jnp.dot(g, t) / jnp.maximum(jnp.linalg.norm(g) * tn, 1e-30),
            "grad_relerr_bptt": jnp.linalg.norm(g - t) / jnp.maximum(tn, 1e-30),
        }

    def sequential_depth(self, length, metrics):
        # Each iteration: one pass linearising the cell at every position, then the associative
        # scan of the linear recurrence (ELK's Kalman filter is one such scan too); Picard
        # (jacobian: none) is the pass alone. All rows of a batch run as one while_loop, so the
        # step's iterations are its slowest row's; without a logged count, the cap. The adjoint
        # as this run solves it: a sequential one is a reverse scan of T steps, a parallel or
        # structured one the same associative scan backwards; then one batched VJP of the cell.
        # The layers of a stack are solved (and their adjoints taken) one after another.
        iterations = metrics.get("newton_iters_max", self.cfg.max_iters)
        per_iteration = 1 if self.cfg.jacobian == "none" else scan_depth(length) + 1
        plan = adjoint_plan(self.model.layer(0), self.gradient, self.cfg.adjoint)
        adjoint = (length if plan == "sequential" else scan_depth(length)) + 1
        return self.model.layers * (iterations * per_iteration + adjoint)

    def extra_activation_bytes(self, batch, length, sequences):
        # Layers are solved one after another: the Jacobian buffers are one layer's at a time.
        per_block = DAMPED_BLOCKS_PER_TRANSITION if self.cfg.damping > 0 else BLOCKS_PER_TRANSITION
        layer = self.model.layer(0)  # every layer has the same cell
        s, k = layer.state_dim, layer.jacobian_block
        structure = solve_structure(layer, self.cfg.jacobian)
        forward = per_block * block_floats(structure, s, k)
        plan = adjoint_plan(layer, self.gradient, self.cfg.adjoint)
        # The sequential adjoint stores no Jacobian (λ and the states only: diagonal-sized).
        adjoint_structure: JacobianStructure = (
            "full" if plan == "parallel" else layer.jacobian_structure if plan == "structured" else "diagonal"
        )
        adjoint = BLOCKS_PER_TRANSITION * block_floats(adjoint_structure, s, k)
        step = batch * length * max(forward, adjoint)
        evaluation = min(rows_per_chunk(structure, length, s, k), sequences) * length * forward
        return 4 * max(step, evaluation)

"""Embedding-parallel training ("transition representations"), with its stabilizers.

Every transition (sequence i, step t) owns a trainable state embedding
`E[i, t]`: the state *after* step t. The state before step 0 is the fixed
initial state (zeros, not trainable), the same one every rollout starts from.
The cell is applied to all pairs `(E[i, t-1], x[i, t])` at once with `vmap`
(no scan anywhere in the loss), and trained on

    task_loss(readout(cell(E[t-1], x[t])), y[t])  +  w(step) * mean_t ||cell(E[t-1], x[t]) - E[t]||^2

Gradients update the cell, the readout and the table.

A stack of L layers keeps one table per layer, held side by side as the joint state
`E: (N, T, L·S)` (`Model.split` gives each layer's): layer l's prediction reads its own
table's previous entry and, as its input, the stream of the layer below (from its
predictions, or its table with `readout_from: table`), computed for all steps at once.
The consistency term is summed over layers (each layer's residual is in the objective);
each layer's is also reported (`consistency_layer{l}`, `residual_mean_layer{l}`,
`table_rollout_dist_layer{l}`, ...).

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
touched: no moment decay, no bias-correction drift. `take_rows`/`put_rows`
(`seqpar.sharding`) are the only places rows are gathered and scattered: plain
indexing on one device, a local gather/scatter per device under a mesh.

Multiple shooting (`segment: K`, default 1): the table holds a free state only at the end of
every K-step segment (`seqpar.model.shooting`); each segment is scanned from the node before
it, and the consistency term compares each segment's last prediction with its node. K = 1 is
the table above; K >= T leaves no node and is BPTT. `constraint: augmented_lagrangian` adds
⟨λ, r⟩ with a multiplier per node (a row state like the table, checkpointed with it), updated
λ <- λ + rate·r for every node after every `multiplier_every`-th step (default 250; default
rate 2w, the method of multipliers' step for the penalty w·‖r‖²). Every stabilizer below
acts on the nodes.

Stabilizers (all off by default, so the defaults are the plain method):

- `freeze_every: K`, `accumulate: sum|mean` -- the table is held fixed for K
  steps (inputs and targets stationary, like a DQN target network) while its
  gradients are added into a full-size buffer; after every K-th step the buffer
  goes through the table's optimizer once and is cleared. `mean` divides each
  row's sum by the number of steps that row was in the minibatch (with full
  batches: the mean of the K gradients). Only rows that received a gradient in
  the window take that optimizer step (their Adam count advances by one per
  application, not per accumulated gradient); other rows and their optimizer
  state stay bit-identical, as in the plain method. K = 1 is the plain method
  (no buffer is allocated).
- `consistency_schedule` -- w(step) = consistency_weight * multiplier(step), the
  multiplier constant, or a linear / cosine ramp from `start` to `end` over
  `steps` steps (then held at `end`).
- `consistency_stop_gradient` -- `target` stops the gradient into E[t] (only the
  prediction side, i.e. the cell and E[t-1], is pulled), `prediction` stops it
  into cell(E[t-1], x[t]) (only E[t] is pulled toward the cell), `none` both.
- `table_optimizer` -- the table's own optimizer (default: same as `optimizer`).
- `table_init` -- zeros, random normal (`table_init_scale`), or the rollout
  states of the freshly initialised model.
- `refresh: rollout|jacobi|newton`, `refresh_every: K` -- before steps K, 2K, ...
  the whole table is overwritten (no gradient) inside the jitted step (`lax.cond`,
  so its cost is in the step time): `rollout` with the current model's true
  rollout states (a forward scan), `jacobi` with `sweeps` parallel sweeps
  `E[t] <- cell(E[t-1], x[t])` for all t at once (each sweep makes one more
  leading step exact), `newton` with at most `iterations` Newton (DEER) iterations
  started from the current table (`seqpar.model.newton`; `newton_jacobian: full`
  or `diagonal`): the table is exactly a warm start for Newton, so this is the
  bridge between a table trained by gradient and a table solved by Newton. The
  table's optimizer state is kept across a refresh.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from pydantic import Field, model_validator

from seqpar.config import Config, KeyedError
from seqpar.config.registry import Registry, tagged_union
from seqpar.methods.agreement import agreement_metrics
from seqpar.methods.base import METHODS, Method, MethodConfig, OptimizerSpec, scan_depth
from seqpar.model.model import Model, Params
from seqpar.model.newton import BLOCKS_PER_TRANSITION, NewtonOptions, block_floats, rows_per_chunk, solve_structure
from seqpar.model.newton_stack import solve_stack
from seqpar.model.rollout import readout_all, rollout_states
from seqpar.model.shooting import node_steps, shooting_predictions, solve_nodes
from seqpar.sharding import put_rows, take_rows
from seqpar.tasks.base import Task

# ----------------------------------------------------------------------------- consistency schedules

SCHEDULES: Registry[type] = Registry("consistency schedule")


class ScheduleConfig(Config):
    """A multiplier of `consistency_weight` as a function of the (traced) step index."""

    def build(self) -> Callable[[jax.Array], jax.Array]:  # pragma: no cover - interface
        raise NotImplementedError


@SCHEDULES.register("constant")
class ConstantSchedule(ScheduleConfig):
    """The multiplier is 1 at every step: the plain consistency weight."""

    type: Literal["constant"] = "constant"

    def build(self):
        return lambda step: jnp.float32(1.0)


class RampSchedule(ScheduleConfig):
    """Moves the multiplier from `start` to `end` over `steps` steps, then holds `end`."""

    steps: int = Field(gt=0, description="steps over which the multiplier moves from start to end")
    start: float = Field(0.0, ge=0, allow_inf_nan=False, description="multiplier of consistency_weight at step 0")
    end: float = Field(1.0, ge=0, allow_inf_nan=False, description="multiplier from step `steps` on")

    def build(self):
        def multiplier(step):
            frac = jnp.clip(jnp.asarray(step, jnp.float32) / self.steps, 0.0, 1.0)
            return jnp.float32(self.start) + jnp.float32(self.end - self.start) * self.shape(frac)

        return multiplier

    def shape(self, frac: jax.Array) -> jax.Array:  # pragma: no cover - interface
        raise NotImplementedError


@SCHEDULES.register("linear")
class LinearSchedule(RampSchedule):
    """Moves the multiplier from `start` to `end` linearly over `steps` steps, then holds `end`."""

    type: Literal["linear"] = "linear"

    def shape(self, frac):
        return frac


@SCHEDULES.register("cosine")
class CosineSchedule(RampSchedule):
    """Moves the multiplier from `start` to `end` along a half cosine over `steps` steps, then holds `end`."""

    type: Literal["cosine"] = "cosine"

    def shape(self, frac):
        return 0.5 * (1.0 - jnp.cos(jnp.pi * frac))


if TYPE_CHECKING:  # a union built at import time from a registry: opaque to the type checker
    ScheduleSpec = Any
else:
    ScheduleSpec = tagged_union(SCHEDULES)

# ----------------------------------------------------------------------------- config

DEFAULT_INIT_SCALE = 0.1
MULTIPLIER_EVERY = 250  # augmented Lagrangian: steps between multiplier updates (see `EmbeddingParallel.multiplier_update`)


@METHODS.register("parallel")
class ParallelConfig(MethodConfig):
    type: Literal["parallel"] = "parallel"
    consistency_weight: float = Field(1.0, ge=0, allow_inf_nan=False, description="w in task + w * consistency")
    consistency_schedule: ScheduleSpec = Field(
        ConstantSchedule(), description="multiplier of consistency_weight over steps: constant, or linear/cosine ramp {steps, start, end}"
    )
    consistency_stop_gradient: Literal["none", "target", "prediction"] = Field(
        "none", description="consistency side that gets no gradient: target (E[t] held), prediction (cell(E[t-1], x[t]) held), none"
    )
    readout_from: Literal["cell", "table"] = Field("cell", description="readout reads cell(E[t-1], x[t]) or E[t]")
    table_optimizer: OptimizerSpec | None = Field(None, description="optimizer of the table (default: same as optimizer)")
    table_init: Literal["zeros", "random", "rollout"] = Field(
        "zeros", description="initial table: zeros, normal(0, table_init_scale), or the initial model's rollout states"
    )
    table_init_scale: float | None = Field(
        None, gt=0, allow_inf_nan=False, description=f"standard deviation of table_init: random (default {DEFAULT_INIT_SCALE})"
    )
    freeze_every: int = Field(1, ge=1, description="hold the table fixed K steps, then apply its accumulated gradient (1: plain)")
    accumulate: Literal["sum", "mean"] = Field("sum", description="freeze_every buffer: sum, or mean per row over the steps it was batched")
    refresh: Literal["none", "rollout", "jacobi", "newton"] = Field(
        "none", description="periodically overwrite the table: true rollout states, Jacobi sweeps or Newton iterations from the table"
    )
    refresh_every: int | None = Field(None, ge=1, description="refresh before steps K, 2K, ... (required with refresh)")
    sweeps: int | None = Field(None, ge=1, description="parallel sweeps per Jacobi refresh (required with refresh: jacobi)")
    iterations: int | None = Field(None, ge=1, description="Newton iterations at most per refresh (required with refresh: newton)")
    newton_jacobian: Literal["full", "diagonal"] | None = Field(
        None, description="refresh: newton: full Jacobians (DEER, default) or their diagonals (quasi-DEER)"
    )
    segment: int = Field(
        1,
        ge=1,
        description="K: free states only at the end of every K-step segment, the cell run sequentially inside each segment "
        "(multiple shooting; 1: a state after every step, the seed's table; >= the length: no free state, BPTT)",
    )
    constraint: Literal["penalty", "augmented_lagrangian"] = Field(
        "penalty",
        description="consistency at the segment ends: the quadratic penalty w·‖r‖², or an augmented Lagrangian that adds "
        "⟨λ, r⟩ with a multiplier λ per node, updated λ <- λ + rate·r",
    )
    multiplier_rate: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="augmented_lagrangian: the multipliers' step (default 2 × the scheduled consistency weight, the "
        "method of multipliers' step for the penalty w·‖r‖²)",
    )
    multiplier_every: int | None = Field(
        None,
        ge=1,
        description=f"augmented_lagrangian: update every node's multiplier after every N-th step (default {MULTIPLIER_EVERY}), "
        "from the residuals at that step's parameters and table",
    )

    # Added after records existed: a spec that does not use them is recorded (and hashed) as before.
    omit_defaults = ("segment", "constraint", "multiplier_rate", "multiplier_every")

    @model_validator(mode="after")
    def _options_fit(self):
        if self.refresh == "none":
            for key in ("refresh_every", "sweeps", "iterations", "newton_jacobian"):
                if getattr(self, key) is not None:
                    raise KeyedError(key, "only meaningful with refresh: rollout, jacobi or newton (refresh is none)")
        elif self.refresh_every is None:
            raise KeyedError("refresh_every", f"required with refresh: {self.refresh}")
        if self.refresh == "jacobi" and self.sweeps is None:
            raise KeyedError("sweeps", "required with refresh: jacobi")
        if self.refresh in ("rollout", "newton") and self.sweeps is not None:
            raise KeyedError("sweeps", f"only meaningful with refresh: jacobi (got refresh: {self.refresh})")
        if self.refresh == "newton" and self.iterations is None:
            raise KeyedError("iterations", "required with refresh: newton")
        if self.refresh in ("rollout", "jacobi"):
            for key in ("iterations", "newton_jacobian"):
                if getattr(self, key) is not None:
                    raise KeyedError(key, f"only meaningful with refresh: newton (got refresh: {self.refresh})")
        if self.segment > 1 and self.readout_from == "table":
            raise KeyedError(
                "readout_from", f"table reads a state after every step; with segment: {self.segment} the table holds one per segment"
            )
        if self.constraint != "augmented_lagrangian":
            for key in ("multiplier_rate", "multiplier_every"):
                if getattr(self, key) is not None:
                    raise KeyedError(key, f"only meaningful with constraint: augmented_lagrangian (got constraint: {self.constraint})")
        if self.table_init_scale is not None and self.table_init != "random":
            raise KeyedError("table_init_scale", f"only meaningful with table_init: random (got table_init: {self.table_init})")
        # A refresh must land right after an accumulated update, or the buffer would
        # apply gradients taken at a table that no longer exists.
        if self.freeze_every > 1 and self.refresh_every is not None and self.refresh_every % self.freeze_every:
            raise KeyedError("refresh_every", f"must be a multiple of freeze_every={self.freeze_every} (got {self.refresh_every})")
        return self

    def build(self, model, task):
        return EmbeddingParallel(self, model, task)


# ----------------------------------------------------------------------------- pure helpers


def _where_rows(mask, new, old):
    """Per-row select over pytrees whose leaves lead with the row axis."""
    return jax.tree.map(lambda n, o: jnp.where(mask.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new, old)


PassUp = Literal["cell", "table"]  # what a stack's layer passes up: its predictions or its table


def cell_predictions(model: Model, params: Params, rows: jax.Array, x: jax.Array, pass_up: PassUp = "cell") -> jax.Array:
    """`cell(E[t-1], x[t])` for every transition of the joint `rows: (B, T, state_dim)`, no scan:
    per layer one batched call over all (row, step) pairs.
    A layer's input is the stream of the layer below read from its predictions (`pass_up: cell`)
    or from its table (`table`), as the readout reads the top layer (`readout_from`)."""
    b, t = rows.shape[:2]
    tables = model.split(rows)
    z, preds = x, []
    for i in range(model.layers):
        layer, table = model.layer(i), tables[i]
        s0 = jnp.broadcast_to(layer.initial_state().astype(rows.dtype), (b, 1, layer.state_dim))
        prev = jnp.concatenate([s0, table[:, :-1]], axis=1)
        u = model.cell_input(params, i, z)
        pred = layer.step_batch(params, prev.reshape(b * t, layer.state_dim), u.reshape(b * t, -1)).reshape(b, t, layer.state_dim)
        preds.append(pred)
        z = model.pass_up(params, i, z, pred if pass_up == "cell" else table)
    return model.join(preds)


def jacobi_sweeps(model: Model, params: Params, table: jax.Array, x: jax.Array, sweeps: int, pass_up: PassUp = "cell") -> jax.Array:
    """`sweeps` parallel updates `E[t] <- cell(E[t-1], x[t])`; after m sweeps steps 0..m-1 are exact
    (in every layer of a stack with `pass_up: cell`; reading the table below, layer l lags l sweeps)."""
    return jax.lax.fori_loop(0, sweeps, lambda _, e: cell_predictions(model, params, e, x, pass_up), table)


def _per_layer(model: Model, name: str, value: jax.Array, reduce: Callable[[jax.Array], jax.Array]) -> dict[str, jax.Array]:
    """`{name}_layer{l}`: `reduce` of layer l's part of `value: (..., L·S)`; nothing for one layer."""
    if model.layers == 1:
        return {}
    return {f"{name}_layer{i}": reduce(part) for i, part in enumerate(model.split(value))}


def _mean(x: jax.Array) -> jax.Array:
    """The mean, 0 over no entries (a table of one segment has no node: nothing disagrees)."""
    return jnp.mean(x) if x.size else jnp.zeros((), x.dtype)


def _mean_norm(d: jax.Array) -> jax.Array:
    return _mean(jnp.linalg.norm(d, axis=-1))


def _by_quartile(prefix: str, dist: jax.Array) -> dict[str, jax.Array]:
    """Mean of `dist: (N, M)` per quarter of the table's entries along time: does agreement spread from t=0?"""
    return {f"{prefix}_q{q}": _mean(part) for q, part in enumerate(jnp.array_split(dist, 4, axis=1), start=1)}


# ----------------------------------------------------------------------------- method


class EmbeddingParallel(Method):
    cfg: ParallelConfig
    row_state_keys = ("table", "table_opt_state", "grad_sum", "grad_count", "multipliers")

    def __init__(self, cfg: ParallelConfig, model: Model, task: Task):
        super().__init__(cfg, model, task)
        self.table_tx = (cfg.table_optimizer or cfg.optimizer).build()
        self.weight_multiplier = cfg.consistency_schedule.build()

    @property
    def lagrangian(self) -> bool:
        return self.cfg.constraint == "augmented_lagrangian"

    def segment(self, length: int) -> int:
        """K for sequences of `length` steps: one segment is the whole sequence, whatever K says."""
        return min(self.cfg.segment, length)

    def steps(self, length: int) -> np.ndarray:
        """The step each table entry is the state after (`seqpar.model.shooting.node_steps`)."""
        return node_steps(length, self.segment(length))

    def at_nodes(self, states: jax.Array) -> jax.Array:
        """Per-step states `(N, T, S)` at the table's entries `(N, M, S)` (all of them when K = 1)."""
        t = states.shape[1]
        return states if self.segment(t) == 1 else states[:, self.steps(t)]

    def initial_table(self, key, params, x):
        n, t = x.shape[:2]
        shape = (n, len(self.steps(t)), self.model.state_dim)
        if self.cfg.table_init == "random":
            scale = DEFAULT_INIT_SCALE if self.cfg.table_init_scale is None else self.cfg.table_init_scale
            return scale * jax.random.normal(key, shape, jnp.float32)
        if self.cfg.table_init == "rollout":
            return self.at_nodes(rollout_states(self.model, params, x)).astype(jnp.float32)
        return jnp.zeros(shape, jnp.float32)

    def init(self, key, params, train):
        table = self.initial_table(key, params, train.x)
        state = {
            "params": params,
            "opt_state": self.tx.init(params),
            "table": table,
            # One optimizer state per sequence row, so rows update independently.
            "table_opt_state": jax.vmap(self.table_tx.init)(table),
            # Steps taken so far: the eval-time objective uses the same scheduled weight.
            "steps_done": jnp.int32(0),
        }
        if self.cfg.freeze_every > 1:
            state["grad_sum"] = jnp.zeros_like(table)
            state["grad_count"] = jnp.zeros(table.shape[0], jnp.int32)
        if self.lagrangian:
            state["multipliers"] = jnp.zeros_like(table)  # λ, one per node: checkpointed and sharded with the table
        return state

    def consistency_weight(self, step):
        return self.cfg.consistency_weight * self.weight_multiplier(step)

    def predictions(self, params, rows, x):
        """Every step's predicted state from the table: the cell at every transition at once (K = 1),
        or each segment scanned from the node before it (K > 1)."""
        k = self.segment(x.shape[1])
        if k == 1:
            return cell_predictions(self.model, params, rows, x, self.cfg.readout_from)
        return shooting_predictions(self.model, params, rows, x, k)

    def loss(self, params, rows, x, y, mask, weight=None, multipliers=None):
        """Objective and its parts; `weight` is the scheduled consistency weight (default: unscheduled),
        `multipliers` the rows' λ (augmented Lagrangian)."""
        weight = self.cfg.consistency_weight if weight is None else weight
        pred = self.predictions(params, rows, x)
        read = pred if self.cfg.readout_from == "cell" else rows
        task_loss = self.task.loss(readout_all(self.model, params, read), y, mask)
        # Stop-gradient only inside the consistency term; the task term is untouched.
        sg = self.cfg.consistency_stop_gradient
        at_nodes = self.at_nodes(pred)  # each segment's last prediction, against its node
        p = jax.lax.stop_gradient(at_nodes) if sg == "prediction" else at_nodes
        target = jax.lax.stop_gradient(rows) if sg == "target" else rows
        # Summed over the joint state: the objective holds every layer's consistency term, each
        # weighted as a one-layer model's (each layer's: `layer_metrics`).
        sq_residual = jnp.sum(jnp.square(p - target), axis=-1)  # (B, M)
        consistency = _mean(sq_residual)
        objective = task_loss + weight * consistency
        if multipliers is not None:  # the method of multipliers: ⟨λ, r⟩ beside the penalty, same normalisation
            objective = objective + _mean(jnp.sum(multipliers * (p - target), axis=-1))
        aux = {"task_loss": task_loss, "consistency": consistency, "sq_residual": sq_residual, "diff": p - target}
        return objective, aux

    def layer_metrics(self, diff):
        """Each layer's consistency and residual norms (a stack only), from `prediction − table`."""
        m = self.model
        sq = lambda d: jnp.sum(jnp.square(d), axis=-1)  # noqa: E731
        return {
            **_per_layer(m, "consistency", diff, lambda d: _mean(sq(d))),
            **_per_layer(m, "residual_mean", diff, lambda d: _mean(jnp.sqrt(sq(d)))),
            **_per_layer(m, "residual_max", diff, lambda d: jnp.max(jnp.sqrt(sq(d)), initial=0.0)),
        }

    @property
    def newton_options(self) -> NewtonOptions:
        return NewtonOptions(jacobian=self.cfg.newton_jacobian or "full", max_iters=self.cfg.iterations or 1)

    def newton_refresh(self, params, table, x):
        """At most `iterations` Newton iterations from the table, a chunk of rows at a time: on every
        step's state (K = 1), or multiple-shooting Newton on the nodes (K > 1)."""
        opts = self.newton_options
        layer = self.model.layer(0)
        chunk = rows_per_chunk(solve_structure(layer, opts.jacobian), max(table.shape[1], 1), layer.state_dim, layer.jacobian_block)
        k = self.segment(x.shape[1])
        if k == 1:
            return solve_stack(self.model, params, x, table, opts, chunk)[0].astype(table.dtype)
        return solve_nodes(self.model, params, x, table, opts, k, chunk)[0].astype(table.dtype)

    def sweep(self, params, table, x, sweeps):
        """`sweeps` parallel (Jacobi) updates of the table from its own predictions: each makes one
        more leading step (K = 1) or segment exact."""
        if self.segment(x.shape[1]) == 1:
            return jacobi_sweeps(self.model, params, table, x, sweeps, self.cfg.readout_from)
        return jax.lax.fori_loop(0, sweeps, lambda _, e: self.at_nodes(self.predictions(params, e, x)), table)

    def refreshed_table(self, params, table, x):
        if table.shape[1] == 0:  # a single segment: no node to refresh
            return table
        if self.cfg.refresh == "rollout":
            return self.at_nodes(rollout_states(self.model, params, x)).astype(table.dtype)
        if self.cfg.refresh == "newton":
            return self.newton_refresh(params, table, x)
        return self.sweep(params, table, x, self.cfg.sweeps)

    def train_step(self, state, train, batch, step, key):
        cfg, params, table = self.cfg, state["params"], state["table"]
        if cfg.refresh != "none":
            due = (step > 0) & (step % cfg.refresh_every == 0)
            table = jax.lax.cond(due, lambda t: self.refreshed_table(params, t, train.x), lambda t: t, table)
        rows = take_rows(table, batch.idx)
        weight = self.consistency_weight(step)
        lam = take_rows(state["multipliers"], batch.idx) if self.lagrangian else None
        grad_fn = jax.value_and_grad(self.loss, argnums=(0, 1), has_aux=True)
        (objective, aux), (g_params, g_rows) = grad_fn(params, rows, batch.x, batch.y, batch.mask, weight, lam)

        updates, opt_state = self.tx.update(g_params, state["opt_state"], params)
        new_state = {"params": optax.apply_updates(params, updates), "opt_state": opt_state, "steps_done": step + 1}
        if cfg.freeze_every == 1:
            rows_opt = take_rows(state["table_opt_state"], batch.idx)
            row_updates, rows_opt = jax.vmap(self.table_tx.update)(g_rows, rows_opt, rows)
            new_state["table"] = put_rows(table, batch.idx, optax.apply_updates(rows, row_updates))
            new_state["table_opt_state"] = put_rows(state["table_opt_state"], batch.idx, rows_opt)
        else:
            new_state.update(self._accumulate(state, table, batch.idx, g_rows, step))

        residual = jnp.sqrt(aux["sq_residual"])
        metrics = {
            "objective": objective,
            "task_loss": aux["task_loss"],
            "consistency": aux["consistency"],
            "consistency_weight": weight,
            "residual_mean": _mean(residual),
            "residual_max": jnp.max(residual, initial=0.0),
            "grad_norm_params": optax.tree.norm(g_params),
            "grad_norm_table": optax.tree.norm(g_rows),
            **self.layer_metrics(aux["diff"]),
        }
        if lam is not None:
            new_state["multipliers"] = self.multiplier_update(state["multipliers"], new_state, train, step, weight)
            metrics["multiplier_norm"] = _mean(jnp.linalg.norm(new_state["multipliers"], axis=-1))
        return new_state, metrics

    def multiplier_update(self, lam, new_state, train, step, weight):
        """After every `multiplier_every`-th step: λ <- λ + rate·r for every node of the training set,
        r each segment's residual at the parameters and table this step produced. The method of
        multipliers moves λ once the primal variables have had steps to respond to it. Measured on
        delayed recall (T = 256, lag 8, K = 16, batches of 32 of 256 sequences, Adam 3e-3, 1500
        steps): moving the batch's multipliers after every step at the classic rate 2w let them
        grow without bound; every node's after every 50th step locked λ to the first steps'
        residuals (mean node residual 0.38 at the end, the penalty's 0.019); after every 250th
        the residual fell to 0.059 and λ shrank, as did rate 0.2w every 50 steps."""
        rate = 2.0 * weight if self.cfg.multiplier_rate is None else self.cfg.multiplier_rate
        due = (step + 1) % (self.cfg.multiplier_every or MULTIPLIER_EVERY) == 0

        def update(lam):
            pred = self.at_nodes(self.predictions(new_state["params"], new_state["table"], train.x))
            return lam + rate * jax.lax.stop_gradient(pred - new_state["table"])

        return jax.lax.cond(due, update, lambda lam: lam, lam)

    def _accumulate(self, state, table, idx, g_rows, step):
        """freeze_every > 1: add this step's row gradients; after every K-th step apply and clear."""
        grad_sum = put_rows(state["grad_sum"], idx, take_rows(state["grad_sum"], idx) + g_rows)
        grad_count = put_rows(state["grad_count"], idx, take_rows(state["grad_count"], idx) + 1)

        def apply(operand):
            table, opt, gsum, gcount = operand
            if self.cfg.accumulate == "mean":
                gsum = gsum / jnp.maximum(gcount, 1).astype(gsum.dtype)[:, None, None]
            upd, new_opt = jax.vmap(self.table_tx.update)(gsum, opt, table)
            # Only rows batched during the window take an optimizer step; the rest stay bit-identical.
            touched = gcount > 0
            new_table = _where_rows(touched, optax.apply_updates(table, upd), table)
            return new_table, _where_rows(touched, new_opt, opt), jnp.zeros_like(gsum), jnp.zeros_like(gcount)

        due = (step + 1) % self.cfg.freeze_every == 0
        operand = (table, state["table_opt_state"], grad_sum, grad_count)
        table, opt, grad_sum, grad_count = jax.lax.cond(due, apply, lambda o: o, operand)
        return {"table": table, "table_opt_state": opt, "grad_sum": grad_sum, "grad_count": grad_count}

    def params(self, state):
        return state["params"]

    def eval_metrics(self, state, train, rollout_train_states, rollout_train_loss):
        params, table = state["params"], state["table"]
        weight = self.consistency_weight(state["steps_done"])
        lam = state["multipliers"] if self.lagrangian else None
        objective, aux = self.loss(params, table, train.x, train.y, train.mask, weight, lam)
        residual = jnp.sqrt(aux["sq_residual"])
        truth = self.at_nodes(rollout_train_states)  # the true rollout where the table holds states
        dist = jnp.linalg.norm(table - truth, axis=-1)  # (N, M)
        out = {
            "objective": objective,
            "task_loss": aux["task_loss"],
            "consistency": aux["consistency"],
            "consistency_weight": weight,
            "residual_mean": _mean(residual),
            "residual_max": jnp.max(residual, initial=0.0),
            "table_rollout_dist": _mean(dist),
            **_by_quartile("table_rollout_dist", dist),
            **agreement_metrics(table, truth, steps=self.steps(train.x.shape[1]), length=train.x.shape[1]),
            **self.layer_metrics(aux["diff"]),
            **_per_layer(self.model, "table_rollout_dist", table - truth, _mean_norm),
        }
        if lam is not None:
            out["multiplier_norm"] = _mean(jnp.linalg.norm(lam, axis=-1))
        if self.cfg.refresh in ("jacobi", "newton"):
            # How close a refresh taken now (current cell, current table) gets to the true rollout:
            # `sweeps` Jacobi sweeps or `iterations` Newton iterations from this table; measured
            # here, outside the timed step, because it needs a rollout.
            name = f"{self.cfg.refresh}_rollout_dist"
            rdiff = self.refreshed_table(params, table, train.x) - truth
            rdist = jnp.linalg.norm(rdiff, axis=-1)
            out[name] = _mean(rdist)
            out.update(_by_quartile(name, rdist))
            out.update(_per_layer(self.model, name, rdiff, _mean_norm))
        return out

    def sequential_depth(self, length, metrics):
        # Each segment's K steps in sequence, forward and backward, all segments at once: 2K per
        # layer (a layer reads the predictions of the one below), whatever the length; K = 1 is
        # the cell at every transition at once, and K = T the whole rollout: BPTT's 2T. A refresh
        # adds its own chain once every refresh_every steps, counted per step on average: a
        # rollout T steps, Jacobi a segment per sweep, Newton up to `iterations` iterations of
        # (linearise a segment: K steps; the associative scan over the M nodes), as in DEER;
        # each of them layer after layer.
        cfg = self.cfg
        k = self.segment(length)
        nodes = len(self.steps(length))
        refresh = {
            "none": 0,
            "rollout": length,
            "jacobi": (cfg.sweeps or 0) * k,
            "newton": (cfg.iterations or 0) * (scan_depth(nodes) + k),
        }[cfg.refresh]
        return self.model.layers * (2 * k + refresh / (cfg.refresh_every or 1))

    def extra_activation_bytes(self, batch, length, sequences):
        if self.cfg.refresh != "newton":
            return 0
        # A Newton refresh solves the whole table (its M nodes) a chunk of rows at a time (see `seqpar.methods.deer`).
        opts = self.newton_options
        layer = self.model.layer(0)
        s, k = layer.state_dim, layer.jacobian_block  # layers are solved one after another
        structure = solve_structure(layer, opts.jacobian)
        nodes = max(len(self.steps(length)), 1)
        rows = min(rows_per_chunk(structure, nodes, s, k), sequences)
        return 4 * BLOCKS_PER_TRANSITION * rows * nodes * block_floats(structure, s, k)

    def state_table_bytes(self, state):
        # The node table, and the augmented Lagrangian's multipliers (one per node, the same size);
        # each an array, or its shape (the memory estimate).
        return sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for k in ("table", "multipliers") if (a := state.get(k)) is not None)

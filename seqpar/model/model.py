"""The one model every method trains: a registered cell plus a linear readout.

The Flax NNX module is split once (`nnx.split`) into a static graph definition
and a parameter pytree; everything downstream is a plain function of that pytree,
so `jax.jit`, `lax.scan` and `vmap` see ordinary arrays (the Flax performance
guide's advice for small models inside scan).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from seqpar.model.cells import CELLS, Cell, CellConfig
from seqpar.model.cells.base import JacobianStructure

Params = Any


def as_cell_config(cell: CellConfig | str) -> CellConfig:
    """A cell's config from itself or its bare registered name (`"gru"`)."""
    return CELLS.get(cell)() if isinstance(cell, str) else cell


class RNN(nnx.Module):
    def __init__(self, cell: CellConfig | str, input_dim: int, hidden: int, output_dim: int, *, rngs: nnx.Rngs):
        self.cell: Cell = as_cell_config(cell).build(input_dim, hidden, rngs=rngs)
        self.readout = nnx.Linear(hidden, output_dim, rngs=rngs)


@dataclass(frozen=True)
class Model:
    """Pure view of an `RNN`: `graphdef` is static, params travel as a pytree.

    All functions take a single example (`s: (state_dim,)`, `x: (input_dim,)`);
    callers batch them with `jax.vmap`.
    """

    graphdef: Any
    state_dim: int
    hidden: int
    linear_recurrence: bool = False  # the cell's new state is affine in the old one (see `Cell`)
    jacobian_structure: JacobianStructure = "full"  # the cell's exact d step / d s structure (see `Cell`)
    jacobian_block: int = 1  # k of a "block" structure

    def step(self, params: Params, s: jax.Array, x: jax.Array) -> jax.Array:
        return nnx.merge(self.graphdef, params).cell(s, x)

    def diag_jacobian(self, params: Params, s: jax.Array, x: jax.Array) -> jax.Array:
        """`diag(d step / d s)`, `(state_dim,)`: the cell's analytic form (quasi-DEER's Jacobian)."""
        return nnx.merge(self.graphdef, params).cell.diag_jacobian(s, x)

    def jacobian(self, params: Params, s: jax.Array, x: jax.Array) -> jax.Array:
        """`d step / d s`, `(state_dim, state_dim)`, by forward mode (DEER's Jacobian)."""
        return jax.jacfwd(self.step, argnums=1)(params, s, x)

    def project(self, params: Params, x: jax.Array) -> jax.Array:
        """The cell's input-only part, `(..., D) -> (..., P)`: computed once per sequence or solve."""
        return nnx.merge(self.graphdef, params).cell.project(x)

    def step_projected(self, params: Params, s: jax.Array, px: jax.Array) -> jax.Array:
        return nnx.merge(self.graphdef, params).cell.step_projected(s, px)

    def step_and_jacobian(self, params: Params, s: jax.Array, px: jax.Array) -> tuple[jax.Array, jax.Array]:
        """`(s', J)` from one evaluation of the gates, `J` in `jacobian_structure`."""
        return nnx.merge(self.graphdef, params).cell.step_and_jacobian(s, px)

    def step_and_diagonal(self, params: Params, s: jax.Array, px: jax.Array) -> tuple[jax.Array, jax.Array]:
        """`(s', diag J)` from one evaluation of the gates (quasi-DEER on a `full` cell)."""
        return nnx.merge(self.graphdef, params).cell.step_and_diagonal(s, px)

    def readout(self, params: Params, s: jax.Array) -> jax.Array:
        m = nnx.merge(self.graphdef, params)
        return m.readout(m.cell.output(s))

    def initial_state(self) -> jax.Array:
        """The fixed, untrained state before step 0 (zeros) shared by all methods."""
        return jnp.zeros((self.state_dim,), jnp.float32)

    # Batched conveniences, used by methods and the rollout evaluator.
    def step_batch(self, params: Params, s: jax.Array, x: jax.Array) -> jax.Array:
        return jax.vmap(self.step, in_axes=(None, 0, 0))(params, s, x)

    def readout_batch(self, params: Params, s: jax.Array) -> jax.Array:
        return jax.vmap(self.readout, in_axes=(None, 0))(params, s)


def _view(graphdef: Any, cell: Cell, hidden: int) -> Model:
    if cell.state_dim % cell.jacobian_block:  # a cell's own declaration, checked once: no user input sets it
        raise ValueError(f"{type(cell).__name__}: jacobian_block={cell.jacobian_block} must divide state_dim={cell.state_dim}")
    return Model(graphdef, cell.state_dim, hidden, cell.linear_recurrence, cell.jacobian_structure, cell.jacobian_block)


def build_model(cell: CellConfig | str, input_dim: int, hidden: int, output_dim: int, key: jax.Array) -> tuple[Model, Params]:
    module = RNN(cell, input_dim, hidden, output_dim, rngs=nnx.Rngs(params=key))
    graphdef, params = nnx.split(module, nnx.Param)
    return _view(graphdef, module.cell, hidden), params


def abstract_model(cell: CellConfig | str, input_dim: int, hidden: int, output_dim: int) -> tuple[Model, Params]:
    """`build_model`'s result as shapes only (nothing allocated), for memory estimates."""
    module = nnx.eval_shape(lambda: RNN(cell, input_dim, hidden, output_dim, rngs=nnx.Rngs(params=0)))
    graphdef, params = nnx.split(module, nnx.Param)
    return _view(graphdef, module.cell, hidden), params

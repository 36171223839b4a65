"""Elman (vanilla) RNN cell: h' = tanh(W x + U h + b)."""

from __future__ import annotations

from typing import Literal

import jax.numpy as jnp
from flax import nnx
from pydantic import Field

from seqpar.model.cells.base import CELLS, Cell, CellConfig, block_diagonals, linear, recurrent_blocks


@CELLS.register("elman")
class ElmanConfig(CellConfig):
    type: Literal["elman"] = "elman"
    # > 1 makes the linearised dynamics expand (an unstable cell): the case Newton's
    # damping exists for.
    recurrent_scale: float = Field(1.0, gt=0, allow_inf_nan=False, description="multiplier of the orthogonal initial recurrent weights")

    def build(self, input_dim, hidden, *, rngs):
        return Elman(input_dim, hidden, rngs=rngs, recurrent_scale=self.recurrent_scale)


class Elman(Cell):
    """h' = tanh(W x + U h + b)."""

    def __init__(self, input_dim: int, hidden: int, *, rngs: nnx.Rngs, recurrent_scale: float = 1.0):
        self.hidden = self.state_dim = hidden
        self.wx = linear(input_dim, hidden, rngs)
        self.wh = linear(hidden, hidden, rngs, recurrent=True, bias=False)
        if recurrent_scale != 1.0:
            self.wh.kernel[...] = recurrent_scale * self.wh.kernel[...]

    def project(self, x):
        return self.wx(x)

    def step_projected(self, s, px):
        return jnp.tanh(px + self.wh(s))

    def step_and_jacobian(self, s, px):
        h = self.step_projected(s, px)
        return h, (1.0 - h * h)[:, None] * recurrent_blocks(self.wh, 1)[0]

    def step_and_diagonal(self, s, px):
        h = self.step_projected(s, px)
        return h, (1.0 - h * h) * block_diagonals(self.wh, 1)[0]

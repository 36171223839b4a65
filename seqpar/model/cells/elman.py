"""Elman (vanilla) RNN cell: h' = tanh(W x + U h + b)."""

from __future__ import annotations

from typing import Literal

import jax.numpy as jnp
from flax import nnx

from seqpar.model.cells.base import CELLS, Cell, CellConfig, linear


@CELLS.register("elman")
class ElmanConfig(CellConfig):
    type: Literal["elman"] = "elman"

    def build(self, input_dim, hidden, *, rngs):
        return Elman(input_dim, hidden, rngs=rngs)


class Elman(Cell):
    """h' = tanh(W x + U h + b)."""

    def __init__(self, input_dim: int, hidden: int, *, rngs: nnx.Rngs):
        self.hidden = self.state_dim = hidden
        self.wx = linear(input_dim, hidden, rngs)
        self.wh = linear(hidden, hidden, rngs, recurrent=True, bias=False)

    def __call__(self, s, x):
        return jnp.tanh(self.wx(x) + self.wh(s))

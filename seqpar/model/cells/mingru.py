"""minGRU (Feng et al. 2024): gates depend on the input only, so h' is affine in h."""

from __future__ import annotations

from typing import Literal

import jax
from flax import nnx

from seqpar.model.cells.base import CELLS, Cell, CellConfig, linear


@CELLS.register("mingru")
class MinGRUConfig(CellConfig):
    type: Literal["mingru"] = "mingru"

    def build(self, input_dim, hidden, *, rngs):
        return MinGRU(input_dim, hidden, rngs=rngs)


class MinGRU(Cell):
    """h' = (1 - z) h + z c(x), z = sigmoid(W_z x): affine in h."""

    linear_recurrence = True

    def __init__(self, input_dim: int, hidden: int, *, rngs: nnx.Rngs):
        self.hidden = self.state_dim = hidden
        self.wz = linear(input_dim, hidden, rngs)
        self.wc = linear(input_dim, hidden, rngs)

    def __call__(self, s, x):
        z = jax.nn.sigmoid(self.wz(x))
        return (1.0 - z) * s + z * self.wc(x)

    def diag_jacobian(self, s, x):
        # The whole Jacobian is this diagonal: quasi-DEER is exact and solves in one iteration.
        return 1.0 - jax.nn.sigmoid(self.wz(x))

"""minGRU (Feng et al. 2024): gates depend on the input only, so h' is affine in h."""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from seqpar.model.cells.base import CELLS, Cell, CellConfig, linear


@CELLS.register("mingru")
class MinGRUConfig(CellConfig):
    type: Literal["mingru"] = "mingru"

    def build(self, input_dim, hidden, *, rngs):
        return MinGRU(input_dim, hidden, rngs=rngs)


class MinGRU(Cell):
    """h' = (1 - z) h + z c(x), z = sigmoid(W_z x): affine in h, and diagonal in it."""

    linear_recurrence = True
    # The whole Jacobian is its diagonal: Newton is exact and solves in one iteration.
    jacobian_structure = "diagonal"

    def __init__(self, input_dim: int, hidden: int, *, rngs: nnx.Rngs):
        self.hidden = self.state_dim = hidden
        self.wz = linear(input_dim, hidden, rngs)
        self.wc = linear(input_dim, hidden, rngs)

    def project(self, x):
        return jnp.concatenate([self.wz(x), self.wc(x)], axis=-1)

    def step_and_jacobian(self, s, px):
        pz, c = jnp.split(px, 2, axis=-1)
        z = jax.nn.sigmoid(pz)
        return (1.0 - z) * s + z * c, 1.0 - z

    def step_projected(self, s, px):
        return self.step_and_jacobian(s, px)[0]

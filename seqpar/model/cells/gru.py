"""Gated recurrent unit (Cho et al. 2014)."""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from seqpar.model.cells.base import CELLS, Cell, CellConfig, block_diagonals, linear


@CELLS.register("gru")
class GRUConfig(CellConfig):
    type: Literal["gru"] = "gru"

    def build(self, input_dim, hidden, *, rngs):
        return GRU(input_dim, hidden, rngs=rngs)


class GRU(Cell):
    """Gated recurrent unit, reset gate applied after the matmul."""

    def __init__(self, input_dim: int, hidden: int, *, rngs: nnx.Rngs):
        self.hidden = self.state_dim = hidden
        self.wx = linear(input_dim, 3 * hidden, rngs)
        self.wh = linear(hidden, 3 * hidden, rngs, recurrent=True)

    def __call__(self, s, x):
        xr, xz, xn = jnp.split(self.wx(x), 3, axis=-1)
        hr, hz, hn = jnp.split(self.wh(s), 3, axis=-1)
        r = jax.nn.sigmoid(xr + hr)
        z = jax.nn.sigmoid(xz + hz)
        n = jnp.tanh(xn + r * hn)
        return (1.0 - z) * n + z * s

    def diag_jacobian(self, s, x):
        xr, xz, xn = jnp.split(self.wx(x), 3, axis=-1)
        hr, hz, hn = jnp.split(self.wh(s), 3, axis=-1)
        r = jax.nn.sigmoid(xr + hr)
        z = jax.nn.sigmoid(xz + hz)
        n = jnp.tanh(xn + r * hn)
        ur, uz, un = block_diagonals(self.wh, 3)
        # h' = (1 - z) n + z h: the product rule through z, n (via r and hn) and h itself.
        dz = z * (1.0 - z) * uz
        dn = (1.0 - n * n) * (r * (1.0 - r) * ur * hn + r * un)
        return z + (s - n) * dz + (1.0 - z) * dn

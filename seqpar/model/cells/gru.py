"""Gated recurrent unit (Cho et al. 2014)."""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from seqpar.model.cells.base import CELLS, Cell, CellConfig, block_diagonals, linear, recurrent_blocks


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

    def project(self, x):
        return self.wx(x)

    def _gates(self, s, px):
        xr, xz, xn = jnp.split(px, 3, axis=-1)
        hr, hz, hn = jnp.split(self.wh(s), 3, axis=-1)
        r = jax.nn.sigmoid(xr + hr)
        z = jax.nn.sigmoid(xz + hz)
        n = jnp.tanh(xn + r * hn)
        return r, z, n, hn

    def step_projected(self, s, px):
        _, z, n, _ = self._gates(s, px)
        return (1.0 - z) * n + z * s

    def _coefficients(self, s, px):
        # h' = (1 - z) n + z h: the product rule through z, through n (via r and hn) and h itself.
        # dh'_i/dh_j = z_i δ_ij + cz_i Uz[i, j] + cr_i Ur[i, j] + cn_i Un[i, j].
        r, z, n, hn = self._gates(s, px)
        dn = (1.0 - z) * (1.0 - n * n)
        return (1.0 - z) * n + z * s, z, (s - n) * z * (1.0 - z), dn * r * (1.0 - r) * hn, dn * r

    def step_and_jacobian(self, s, px):
        new, z, cz, cr, cn = self._coefficients(s, px)
        ur, uz, un = recurrent_blocks(self.wh, 3)
        return new, jnp.diag(z) + cz[:, None] * uz + cr[:, None] * ur + cn[:, None] * un

    def step_and_diagonal(self, s, px):
        new, z, cz, cr, cn = self._coefficients(s, px)
        ur, uz, un = block_diagonals(self.wh, 3)
        return new, z + cz * uz + cr * ur + cn * un

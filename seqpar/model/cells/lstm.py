"""Long short-term memory; the flat state is `[h, c]`."""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx
from pydantic import Field

from seqpar.model.cells.base import CELLS, Cell, CellConfig, block_diagonals, linear, recurrent_blocks


@CELLS.register("lstm")
class LSTMConfig(CellConfig):
    type: Literal["lstm"] = "lstm"
    # A forget-gate bias of 1 is the standard trick for long memory (Jozefowicz et al. 2015).
    forget_bias: float = Field(1.0, allow_inf_nan=False, description="initial forget-gate bias")

    def build(self, input_dim, hidden, *, rngs):
        return LSTM(input_dim, hidden, rngs=rngs, forget_bias=self.forget_bias)


class LSTM(Cell):
    """Long short-term memory; the flat state is `[h, c]`."""

    def __init__(self, input_dim: int, hidden: int, *, rngs: nnx.Rngs, forget_bias: float = 1.0):
        self.hidden = hidden
        self.state_dim = 2 * hidden
        self.wx = linear(input_dim, 4 * hidden, rngs)
        self.wh = linear(hidden, 4 * hidden, rngs, recurrent=True, bias=False)
        assert self.wx.bias is not None  # built with a bias
        bias = self.wx.bias[...]
        self.wx.bias[...] = bias.at[hidden : 2 * hidden].set(forget_bias)

    def project(self, x):
        return self.wx(x)

    def _pass(self, s, px):
        h, c = jnp.split(s, 2, axis=-1)
        i, f, g, o = jnp.split(px + self.wh(h), 4, axis=-1)
        si, sf, so, tg = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jax.nn.sigmoid(o), jnp.tanh(g)
        c_new = sf * c + si * tg
        tc = jnp.tanh(c_new)
        new = jnp.concatenate([so * tc, c_new], axis=-1)
        # dc'/dh = cf Uf + ci Ui + cg Ug (rows scaled); dh'/dh = co Uo + dtc dc'/dh; dc'/dc = sf.
        coef = (sf * (1.0 - sf) * c, si * (1.0 - si) * tg, si * (1.0 - tg * tg), so * (1.0 - so) * tc, so * (1.0 - tc * tc))
        return new, sf, coef

    def step_projected(self, s, px):
        return self._pass(s, px)[0]

    def step_and_jacobian(self, s, px):
        new, sf, (cf, ci, cg, co, dtc) = self._pass(s, px)
        ui, uf, ug, uo = recurrent_blocks(self.wh, 4)
        dc_dh = cf[:, None] * uf + ci[:, None] * ui + cg[:, None] * ug
        dh_dh = co[:, None] * uo + dtc[:, None] * dc_dh
        top = jnp.concatenate([dh_dh, jnp.diag(dtc * sf)], axis=1)
        bottom = jnp.concatenate([dc_dh, jnp.diag(sf)], axis=1)
        return new, jnp.concatenate([top, bottom], axis=0)

    def step_and_diagonal(self, s, px):
        new, sf, (cf, ci, cg, co, dtc) = self._pass(s, px)
        ui, uf, ug, uo = block_diagonals(self.wh, 4)
        # dc'_j/dc_j = sigmoid(f_j): the gates read h only. dh'_j/dh_j goes through o and through c'.
        dc_dh = cf * uf + ci * ui + cg * ug
        return new, jnp.concatenate([co * uo + dtc * dc_dh, sf], axis=-1)

    def output(self, s):
        return s[..., : self.hidden]

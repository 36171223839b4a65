"""Long short-term memory; the flat state is `[h, c]`."""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx
from pydantic import Field

from seqpar.model.cells.base import CELLS, Cell, CellConfig, block_diagonals, linear


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

    def __call__(self, s, x):
        h, c = jnp.split(s, 2, axis=-1)
        i, f, g, o = jnp.split(self.wx(x) + self.wh(h), 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return jnp.concatenate([h, c], axis=-1)

    def diag_jacobian(self, s, x):
        h, c = jnp.split(s, 2, axis=-1)
        i, f, g, o = jnp.split(self.wx(x) + self.wh(h), 4, axis=-1)
        si, sf, so, tg = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jax.nn.sigmoid(o), jnp.tanh(g)
        c_new = sf * c + si * tg
        tc = jnp.tanh(c_new)
        ui, uf, ug, uo = block_diagonals(self.wh, 4)
        # dc'_j/dc_j = sigmoid(f_j): the gates read h only. dh'_j/dh_j goes through o and through c'.
        dc_dh = sf * (1.0 - sf) * uf * c + si * (1.0 - si) * ui * tg + si * (1.0 - tg * tg) * ug
        dh_dh = so * (1.0 - so) * uo * tc + so * (1.0 - tc * tc) * dc_dh
        return jnp.concatenate([dh_dh, sf], axis=-1)

    def output(self, s):
        return s[..., : self.hidden]

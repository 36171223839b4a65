"""ParaLSTM (Danieli et al., "ParaRNN", ICLR 2026): a CIFG LSTM with per-unit recurrences.

The input gate is coupled to the forget gate (CIFG: i = 1 − f) and every recurrent
weight is a per-unit vector, peepholes included:

    f  = σ(a_f ⊙ h + B_f x + p_f ⊙ c + b_f)
    g  = tanh(a_g ⊙ h + B_g x + b_g)
    c' = f ⊙ c + (1 − f) ⊙ g
    o  = σ(a_o ⊙ h + B_o x + p_o ⊙ c' + b_o)
    h' = o ⊙ tanh(c')

The flat state is `[h, c]` (h first, as the lstm cell's), so unit j couples exactly
entries j and H + j: `d s'/d s` is 2×2 blocks per unit (`jacobian_structure = "block"`,
k = 2), and Newton on those blocks is full Newton with 2×2 scans.

Left out from the paper: block-diagonal input projections over heads (they need an
input width divisible by the heads; seqpar's inputs are small one-hot vocabularies,
and the dense projection is the one-head case) and its alternative nonlinearities.
`peephole: false` drops p_f, p_o (an ablation; the paper's cell has them).
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx
from pydantic import Field, model_validator

from seqpar.config import KeyedError
from seqpar.model.cells.base import CELLS, Cell, CellConfig, linear, pararnn_projection, pararnn_recurrent


@CELLS.register("paralstm")
class ParaLSTMConfig(CellConfig):
    type: Literal["paralstm"] = "paralstm"
    forget_bias: float = Field(1.0, allow_inf_nan=False, description="initial forget-gate bias")
    peephole: bool = Field(True, description="per-unit peepholes from c into the forget and output gates (the paper's cell)")
    recurrent_init: float = Field(
        1.0, gt=0, allow_inf_nan=False, description="per-unit recurrent weights start uniform in [-recurrent_init, recurrent_init]"
    )
    init: Literal["uniform", "pararnn"] = Field(
        "uniform",
        description="uniform: recurrent weights and peepholes uniform in ±recurrent_init, forget bias forget_bias; pararnn: "
        "ParaRNN's (normals with std 2/√(5H), Xavier-uniform inputs, the forget gate's bias −linspace(0, 1, H))",
    )
    omit_defaults = ("init",)

    @model_validator(mode="after")
    def _one_init(self):
        if self.init == "pararnn":
            for key in ("recurrent_init", "forget_bias"):  # at its default allowed: a recorded spec reads back
                if getattr(self, key) != type(self).model_fields[key].default:
                    raise KeyedError(key, "only with init: uniform (pararnn draws its own)")
        return self

    def build(self, input_dim, hidden, *, rngs):
        return ParaLSTM(
            input_dim,
            hidden,
            rngs=rngs,
            forget_bias=self.forget_bias,
            peephole=self.peephole,
            recurrent_init=self.recurrent_init,
            init=self.init,
        )


class ParaLSTM(Cell):
    """CIFG LSTM with diagonal recurrences and peepholes; the flat state is `[h, c]`."""

    jacobian_structure = "block"
    jacobian_block = 2

    def __init__(
        self,
        input_dim: int,
        hidden: int,
        *,
        rngs: nnx.Rngs,
        forget_bias: float = 1.0,
        peephole: bool = True,
        recurrent_init: float = 1.0,
        init: str = "uniform",
    ):
        self.hidden = hidden
        self.state_dim = 2 * hidden
        self.wx = linear(input_dim, 3 * hidden, rngs)  # [f, g, o]
        assert self.wx.bias is not None  # built with a bias
        self.wx.bias[...] = self.wx.bias[...].at[:hidden].set(forget_bias)
        k_a, k_p = jax.random.split(rngs.params())
        if init == "pararnn":
            k_a, k_x = jax.random.split(k_a)
            pararnn_projection(self.wx, k_x, hidden, 3)
            a, p = pararnn_recurrent(k_a, (3, hidden), hidden), pararnn_recurrent(k_p, (2, hidden), hidden)
        else:
            a = jax.random.uniform(k_a, (3, hidden), minval=-recurrent_init, maxval=recurrent_init)
            p = jax.random.uniform(k_p, (2, hidden), minval=-recurrent_init, maxval=recurrent_init)
        self.a = nnx.Param(a)
        # Without peepholes the weights are not parameters at all (no gradient, no optimizer state).
        self.p = nnx.Param(p) if peephole else None

    def project(self, x):
        return self.wx(x)

    def step_and_jacobian(self, s, px):
        h, c = jnp.split(s, 2, axis=-1)
        af, ag, ao = self.a[...]
        pf, po = self.p[...] if self.p is not None else (jnp.zeros_like(af), jnp.zeros_like(af))
        xf, xg, xo = jnp.split(px, 3, axis=-1)
        f = jax.nn.sigmoid(af * h + xf + pf * c)
        g = jnp.tanh(ag * h + xg)
        c_new = f * c + (1.0 - f) * g
        o = jax.nn.sigmoid(ao * h + xo + po * c_new)
        tc = jnp.tanh(c_new)
        new = jnp.concatenate([o * tc, c_new], axis=-1)
        # Per unit, by the chain rule: f reads h and c, g reads h, o reads h and c'.
        df = f * (1.0 - f)
        dc_dh = df * af * (c - g) + (1.0 - f) * (1.0 - g * g) * ag
        dc_dc = df * pf * (c - g) + f
        do = o * (1.0 - o)
        dtc = o * (1.0 - tc * tc)
        dh_dh = do * (ao + po * dc_dh) * tc + dtc * dc_dh
        dh_dc = do * po * dc_dc * tc + dtc * dc_dc
        blocks = jnp.stack([jnp.stack([dh_dh, dh_dc], axis=-1), jnp.stack([dc_dh, dc_dc], axis=-1)], axis=-2)
        return new, blocks  # (hidden, 2, 2): rows (h', c'), columns (h, c)

    def step_projected(self, s, px):
        return self.step_and_jacobian(s, px)[0]

    def output(self, s):
        return s[..., : self.hidden]

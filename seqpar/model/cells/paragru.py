"""ParaGRU (Danieli et al., "ParaRNN", ICLR 2026): a GRU whose recurrent weights are per unit.

    z  = σ(a_z ⊙ h + B_z x + b_z)
    r  = σ(a_r ⊙ h + B_r x + b_r)
    n  = tanh(a_n ⊙ (r ⊙ h) + B_n x + b_n)
    h' = (1 − z) ⊙ h + z ⊙ n

Every gate reads unit j of the state only through the scalar `a_·[j]`, so `d h'/d h`
is exactly diagonal (`jacobian_structure = "diagonal"`): Newton with that diagonal
*is* full Newton, each iteration an elementwise scan, and the exact adjoint is an
elementwise scan too. The input projections `B` are dense.

Left out from the paper: block-diagonal input projections over heads (`B` split into
head blocks). They need the input width divisible by the number of heads, and seqpar's
inputs are small one-hot vocabularies of any width; the dense projection is the
one-head case. The paper's alternative nonlinearities (a config choice of its code)
are left out too: the equations above are its default.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx
from pydantic import Field, model_validator

from seqpar.config import KeyedError
from seqpar.model.cells.base import CELLS, Cell, CellConfig, linear, pararnn_projection, pararnn_recurrent


@CELLS.register("paragru")
class ParaGRUConfig(CellConfig):
    type: Literal["paragru"] = "paragru"
    recurrent_init: float = Field(
        1.0, gt=0, allow_inf_nan=False, description="per-unit recurrent weights a start uniform in [-recurrent_init, recurrent_init]"
    )
    init: Literal["uniform", "pararnn"] = Field(
        "uniform",
        description="uniform: a uniform in ±recurrent_init, default dense inputs; pararnn: ParaRNN's (a normal with std "
        "2/√(5H), Xavier-uniform inputs, the update gate's bias −linspace(0, 1, H))",
    )
    omit_defaults = ("init",)

    @model_validator(mode="after")
    def _one_init(self):
        # a value at its default is allowed: a recorded spec (every field written) reads back
        if self.init == "pararnn" and self.recurrent_init != type(self).model_fields["recurrent_init"].default:
            raise KeyedError("recurrent_init", "only with init: uniform (pararnn draws its own)")
        return self

    def build(self, input_dim, hidden, *, rngs):
        return ParaGRU(input_dim, hidden, rngs=rngs, recurrent_init=self.recurrent_init, init=self.init)


class ParaGRU(Cell):
    """The GRU with diagonal recurrences; state `h`."""

    jacobian_structure = "diagonal"

    def __init__(self, input_dim: int, hidden: int, *, rngs: nnx.Rngs, recurrent_init: float = 1.0, init: str = "uniform"):
        self.hidden = self.state_dim = hidden
        self.wx = linear(input_dim, 3 * hidden, rngs)  # [z, r, n]
        if init == "pararnn":
            k_a, k_x = jax.random.split(rngs.params())
            a = pararnn_recurrent(k_a, (3, hidden), hidden)
            pararnn_projection(self.wx, k_x, hidden, 3)
        else:
            a = jax.random.uniform(rngs.params(), (3, hidden), minval=-recurrent_init, maxval=recurrent_init)
        self.a = nnx.Param(a)

    def project(self, x):
        return self.wx(x)

    def step_and_jacobian(self, s, px):
        az, ar, an = self.a[...]
        xz, xr, xn = jnp.split(px, 3, axis=-1)
        z = jax.nn.sigmoid(az * s + xz)
        r = jax.nn.sigmoid(ar * s + xr)
        n = jnp.tanh(an * r * s + xn)
        new = (1.0 - z) * s + z * n
        # Product rule per unit: through h itself, through z, and through n (via r and h).
        dn = (1.0 - n * n) * an * (r + s * r * (1.0 - r) * ar)
        return new, (1.0 - z) + (n - s) * z * (1.0 - z) * az + z * dn

    def step_projected(self, s, px):
        return self.step_and_jacobian(s, px)[0]

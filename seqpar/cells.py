"""Recurrent cells: one interface, chosen by `model.cell` in the spec.

Every cell maps a flat state vector `s` (shape `(state_dim,)`) and one input
vector `x` to the next state. Keeping the state flat means the embedding-parallel
method's table is always `(sequences, length, state_dim)` whatever the cell: an
LSTM's table holds both `h` and `c` (concatenated, `h` first).

`output(s)` returns the features the readout sees (`h`; for LSTM the first half).
The cells are written for a single example; methods batch them with `jax.vmap`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from seqpar.registry import Registry

CELLS: Registry[type["Cell"]] = Registry("cell")

_recurrent_init = nnx.initializers.orthogonal()


class Cell(nnx.Module):
    """Base class: `__call__(s, x) -> s'` and `output(s) -> h`."""

    hidden: int
    state_dim: int
    #: True when the new state is an affine function of the old one (no
    #: state-dependent gates); such recurrences provably cannot compute parity.
    linear_recurrence: bool = False

    def __call__(self, s: jax.Array, x: jax.Array) -> jax.Array:  # pragma: no cover - interface
        raise NotImplementedError

    def output(self, s: jax.Array) -> jax.Array:
        return s


def _linear(n_in: int, n_out: int, rngs: nnx.Rngs, *, recurrent: bool = False, bias: bool = True) -> nnx.Linear:
    kw = {"kernel_init": _recurrent_init} if recurrent else {}
    return nnx.Linear(n_in, n_out, use_bias=bias, rngs=rngs, **kw)


@CELLS.register("elman")
class Elman(Cell):
    """h' = tanh(W x + U h + b)."""

    def __init__(self, input_dim: int, hidden: int, *, rngs: nnx.Rngs):
        self.hidden = self.state_dim = hidden
        self.wx = _linear(input_dim, hidden, rngs)
        self.wh = _linear(hidden, hidden, rngs, recurrent=True, bias=False)

    def __call__(self, s, x):
        return jnp.tanh(self.wx(x) + self.wh(s))


@CELLS.register("gru")
class GRU(Cell):
    """Gated recurrent unit (Cho et al. 2014), reset gate applied after the matmul."""

    def __init__(self, input_dim: int, hidden: int, *, rngs: nnx.Rngs):
        self.hidden = self.state_dim = hidden
        self.wx = _linear(input_dim, 3 * hidden, rngs)
        self.wh = _linear(hidden, 3 * hidden, rngs, recurrent=True)

    def __call__(self, s, x):
        xr, xz, xn = jnp.split(self.wx(x), 3, axis=-1)
        hr, hz, hn = jnp.split(self.wh(s), 3, axis=-1)
        r = jax.nn.sigmoid(xr + hr)
        z = jax.nn.sigmoid(xz + hz)
        n = jnp.tanh(xn + r * hn)
        return (1.0 - z) * n + z * s


@CELLS.register("lstm")
class LSTM(Cell):
    """Long short-term memory; the flat state is `[h, c]`, forget-gate bias 1."""

    def __init__(self, input_dim: int, hidden: int, *, rngs: nnx.Rngs):
        self.hidden = hidden
        self.state_dim = 2 * hidden
        self.wx = _linear(input_dim, 4 * hidden, rngs)
        self.wh = _linear(hidden, 4 * hidden, rngs, recurrent=True, bias=False)
        # A forget-gate bias of 1 is the standard trick for long memory (Jozefowicz et al. 2015).
        bias = self.wx.bias[...]
        self.wx.bias[...] = bias.at[hidden : 2 * hidden].set(1.0)

    def __call__(self, s, x):
        h, c = jnp.split(s, 2, axis=-1)
        i, f, g, o = jnp.split(self.wx(x) + self.wh(h), 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return jnp.concatenate([h, c], axis=-1)

    def output(self, s):
        return s[..., : self.hidden]


@CELLS.register("mingru")
class MinGRU(Cell):
    """minGRU (Feng et al. 2024): gates depend on the input only, so h' is affine in h."""

    linear_recurrence = True

    def __init__(self, input_dim: int, hidden: int, *, rngs: nnx.Rngs):
        self.hidden = self.state_dim = hidden
        self.wz = _linear(input_dim, hidden, rngs)
        self.wc = _linear(input_dim, hidden, rngs)

    def __call__(self, s, x):
        z = jax.nn.sigmoid(self.wz(x))
        return (1.0 - z) * s + z * self.wc(x)

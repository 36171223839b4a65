"""The recurrent-cell interface: one flat state vector, one input vector, the next state.

Every cell maps a flat state vector `s` (shape `(state_dim,)`) and one input
vector `x` to the next state. Keeping the state flat means the embedding-parallel
method's table is always `(sequences, length, state_dim)` whatever the cell: an
LSTM's table holds both `h` and `c` (concatenated, `h` first).

`output(s)` returns the features the readout sees (`h`; for LSTM the first half).
`diag_jacobian(s, x)` is the diagonal of `d cell(s, x) / d s`, written out by hand in
each cell: the Newton methods (quasi-DEER) need it every iteration, and `jax.jacfwd`
costs `state_dim` forward passes for it. The base class falls back to `jacfwd` so a
new cell runs at once; the cell tests require every registered cell to override it.
The cells are written for a single example; methods batch them with `jax.vmap`.

A cell is one module in this package: an `nnx.Module` subclass of `Cell` and a
`CellConfig` registered under its `type:` (`model: {cell: {type: gru}}`, or the bare
name `model: {cell: gru}`), discovered by `seqpar.model.cells`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from seqpar.config import Config, Registry

CELLS: Registry[type[CellConfig]] = Registry("cell")

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

    def project(self, x: jax.Array) -> jax.Array:
        """The input-only part of the step, for any leading shape (default: the input itself)."""
        return x

    def step_projected(self, s: jax.Array, px: jax.Array) -> jax.Array:
        """One step from a projected input (default: the step, as `project` is the identity)."""
        return self(s, px)

    def diag_jacobian(self, s: jax.Array, x: jax.Array) -> jax.Array:
        """`diag(d cell(s, x) / d s)`, shape `(state_dim,)`. Override with the analytic form."""
        return jnp.diagonal(jax.jacfwd(self.__call__)(s, x))


class CellConfig(Config):
    """A cell's own hyperparameters (the hidden size is the model's: `model.hidden`)."""

    def build(self, input_dim: int, hidden: int, *, rngs: nnx.Rngs) -> Cell:  # pragma: no cover - interface
        raise NotImplementedError

    def is_default(self) -> bool:
        """True when nothing but `type` is set: the spec then records the bare name."""
        return self == type(self)()  # every registered cell config has defaults for all its options


def block_diagonals(layer: nnx.Linear, blocks: int) -> jax.Array:
    """Diagonals of the `blocks` square `(n, n)` blocks of a recurrent kernel `(n, blocks·n)`:
    `[k]` is how gate k's pre-activation j depends on input unit j. Shape `(blocks, n)`."""
    kernel = layer.kernel[...]
    n = kernel.shape[0]
    return jnp.diagonal(kernel.reshape(n, blocks, n), axis1=0, axis2=2)


def linear(n_in: int, n_out: int, rngs: nnx.Rngs, *, recurrent: bool = False, bias: bool = True) -> nnx.Linear:
    if recurrent:
        return nnx.Linear(n_in, n_out, use_bias=bias, rngs=rngs, kernel_init=_recurrent_init)
    return nnx.Linear(n_in, n_out, use_bias=bias, rngs=rngs)

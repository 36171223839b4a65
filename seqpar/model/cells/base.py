"""The recurrent-cell interface: one flat state vector, one input vector, the next state.

Every cell maps a flat state vector `s` (shape `(state_dim,)`) and one input
vector `x` to the next state. Keeping the state flat means the embedding-parallel
method's table is always `(sequences, length, state_dim)` whatever the cell: an
LSTM's table holds both `h` and `c` (concatenated, `h` first).

`output(s)` returns the features the readout sees (`h`; for LSTM the first half).
The cells are written for a single example; methods batch them with `jax.vmap`.

A cell is one module in this package: an `nnx.Module` subclass of `Cell` and a
`CellConfig` registered under its `type:` (`model: {cell: {type: gru}}`, or the bare
name `model: {cell: gru}`), discovered by `seqpar.model.cells`.
"""

from __future__ import annotations

import jax
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


class CellConfig(Config):
    """A cell's own hyperparameters (the hidden size is the model's: `model.hidden`)."""

    def build(self, input_dim: int, hidden: int, *, rngs: nnx.Rngs) -> Cell:  # pragma: no cover - interface
        raise NotImplementedError

    def is_default(self) -> bool:
        """True when nothing but `type` is set: the spec then records the bare name."""
        return self == type(self)()  # every registered cell config has defaults for all its options


def linear(n_in: int, n_out: int, rngs: nnx.Rngs, *, recurrent: bool = False, bias: bool = True) -> nnx.Linear:
    if recurrent:
        return nnx.Linear(n_in, n_out, use_bias=bias, rngs=rngs, kernel_init=_recurrent_init)
    return nnx.Linear(n_in, n_out, use_bias=bias, rngs=rngs)

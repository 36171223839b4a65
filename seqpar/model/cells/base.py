"""The recurrent-cell interface: one flat state vector, one input vector, the next state.

Every cell maps a flat state vector `s` (shape `(state_dim,)`) and one input
vector `x` to the next state. Keeping the state flat means the embedding-parallel
method's table is always `(sequences, length, state_dim)` whatever the cell: an
LSTM's table holds both `h` and `c` (concatenated, `h` first).

A step is split in two so the Newton solvers (`seqpar.model.newton`) pay for the
input-only work once per sequence: `project(x)` (the input projection `x W_x + b`,
any leading shape) and `step_projected(s, px)`; `cell(s, x)` is the composition.
`step_and_jacobian(s, px)` returns the next state *and* `d s' / d s` from one
evaluation of the gates, written out by hand in each cell, in the cell's exact
Jacobian structure (`jacobian_structure`):

- `full`: an `(S, S)` matrix (gru, lstm, elman: dense recurrent weights);
- `diagonal`: its diagonal `(S,)`, exact because every off-diagonal entry is zero
  (per-unit recurrent weights: mingru, paragru);
- `block`: `(S // k, k, k)` with `k = jacobian_block`; the state is k contiguous
  chunks of `n = S // k` and unit j couples only entries `j, n + j, ..., (k-1)n + j`:
  `J[j, a, b] = d s'[a n + j] / d s[b n + j]` (paralstm: `[h, c]`, k = 2).

`step_and_diagonal(s, px)` is the same pass returning only the diagonal of the
Jacobian (quasi-DEER's approximation on a `full` cell, O(S) per step, never S²).
The base class falls back to `jax.jacfwd` so a new cell runs at once; the cell tests
require every registered cell to write `step_and_jacobian` out, and compare it with
`jacfwd` (and check `jacfwd` is zero outside the declared structure).
`output(s)` returns the features the readout sees (`h`; for LSTMs the first half).
The cells are written for a single example; methods batch them with `jax.vmap`.

A built-in cell is one module in this package: an `nnx.Module` subclass of `Cell` and a
`CellConfig` registered under its `type:` (`model: {cell: {type: gru}}`, or the bare
name `model: {cell: gru}`), discovered by `seqpar.model.cells`. A user's cell registers
the same way from its own module (`seqpar.register_cell(name, config=...)`), or is two
plain functions (`seqpar.model.cells.function`); the protocol is documented in
docs/guide/extending.md.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from seqpar.config import Config, Registry

CELLS: Registry[type[CellConfig]] = Registry("cell")

JacobianStructure = Literal["full", "diagonal", "block"]

_recurrent_init = nnx.initializers.orthogonal()


class Cell(nnx.Module):
    """Base class: `project`, `step_projected`, `step_and_jacobian`, `output`; `__call__(s, x) -> s'`."""

    hidden: int
    state_dim: int
    #: True when the new state is an affine function of the old one (no
    #: state-dependent gates); such recurrences provably cannot compute parity.
    linear_recurrence: bool = False
    #: The EXACT structure of d s'/d s (see the module doc); block size k for "block", 1 otherwise.
    jacobian_structure: ClassVar[JacobianStructure] = "full"
    jacobian_block: ClassVar[int] = 1
    #: True when `step_and_jacobian` is computed by autodiff rather than written out (a cell
    #: given as plain functions, or one that keeps the `jacfwd` fallback): recorded in the run.
    autodiff_jacobian: ClassVar[bool] = False

    @classmethod
    def jacobian_kind(cls) -> Literal["analytic", "autodiff"]:
        """How the Newton solvers get this cell's Jacobian: `analytic` (written out) or `autodiff`."""
        inherited = cls.step_and_jacobian is Cell.step_and_jacobian
        return "autodiff" if cls.autodiff_jacobian or inherited else "analytic"

    def project(self, x: jax.Array) -> jax.Array:
        """The input-only part of a step, `(..., D) -> (..., P)`; identity unless a cell hoists it."""
        return x

    def step_projected(self, s: jax.Array, px: jax.Array) -> jax.Array:
        """One step from a projected input. Default: `__call__` (right when `project` is the identity)."""
        return self(s, px)

    def __call__(self, s: jax.Array, x: jax.Array) -> jax.Array:
        return self.step_projected(s, self.project(x))

    def step_and_jacobian(self, s: jax.Array, px: jax.Array) -> tuple[jax.Array, jax.Array]:
        """`(s', d s'/d s)`, the Jacobian in `jacobian_structure`. Override with the analytic form
        (this fallback runs `jacfwd`, `state_dim` passes, and understands `full` cells only)."""
        return self.step_projected(s, px), jax.jacfwd(self.step_projected)(s, px)

    def step_and_diagonal(self, s: jax.Array, px: jax.Array) -> tuple[jax.Array, jax.Array]:
        """`(s', diag(d s'/d s))` from one pass: quasi-DEER's linearisation. Override on `full`
        cells to skip the S×S matrix; structured cells take the diagonal of their blocks."""
        new, jac = self.step_and_jacobian(s, px)
        return new, structured_diagonal(jac, self.jacobian_structure)

    def diag_jacobian(self, s: jax.Array, x: jax.Array) -> jax.Array:
        """`diag(d cell(s, x) / d s)`, shape `(state_dim,)`."""
        return self.step_and_diagonal(s, self.project(x))[1]

    def output(self, s: jax.Array) -> jax.Array:
        return s


def structured_diagonal(jac: jax.Array, structure: JacobianStructure) -> jax.Array:
    """The diagonal `(S,)` of a Jacobian given in `structure` (blocks: in the state's layout)."""
    if structure == "diagonal":
        return jac
    if structure == "full":
        return jnp.diagonal(jac, axis1=-2, axis2=-1)
    d = jnp.diagonal(jac, axis1=-2, axis2=-1)  # (..., n, k): entry a of unit j sits at a n + j
    return jnp.swapaxes(d, -1, -2).reshape(*d.shape[:-2], d.shape[-2] * d.shape[-1])


def dense_jacobian(jac: jax.Array, structure: JacobianStructure) -> jax.Array:
    """A structured Jacobian as the `(S, S)` matrix it stands for (tests and small checks only)."""
    if structure == "full":
        return jac
    if structure == "diagonal":
        return jnp.diag(jac)
    n, k = jac.shape[0], jac.shape[-1]
    # J[a n + i, b n + j] = jac[i, a, b] δ_ij
    return jnp.einsum("iab,ij->aibj", jac, jnp.eye(n, dtype=jac.dtype)).reshape(k * n, k * n)


class CellConfig(Config):
    """A cell's own hyperparameters (the hidden size is the model's: `model.hidden`)."""

    def build(self, input_dim: int, hidden: int, *, rngs: nnx.Rngs) -> Cell:  # pragma: no cover - interface
        raise NotImplementedError

    def is_default(self) -> bool:
        """True when nothing but `type` is set: the spec then records the bare name."""
        return self == type(self)()  # every registered cell config has defaults for all its options


def recurrent_blocks(layer: nnx.Linear, blocks: int) -> list[jax.Array]:
    """A recurrent kernel `(n, blocks·n)` as its `blocks` transposed `(n, n)` pieces: `[k][i, j]` is
    how gate k's pre-activation i depends on state unit j (the layer computes `s @ kernel`)."""
    kernel = layer.kernel[...]
    return [piece.T for piece in jnp.split(kernel, blocks, axis=-1)]


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


# ParaRNN's initialisation of its cells (Apple's library defaults, read in the public fork
# xaviergonzalez/ml-pararnn: `pararnn/utils/init.py` and the cells' configs): the per-unit
# recurrent weights (and peepholes) normal with standard deviation 2/√(5N) ("xlstm"), the input
# projection Xavier-uniform, the biases zero but the first gate's (a GRU's update gate, an LSTM's
# forget gate) −linspace(0, 1, N), so units start with a spread of memory.
def pararnn_recurrent(key: jax.Array, shape: tuple[int, ...], hidden: int) -> jax.Array:
    return (2.0 / (5.0 * hidden) ** 0.5) * jax.random.normal(key, shape)


def pararnn_projection(layer: nnx.Linear, key: jax.Array, hidden: int, gates: int) -> None:
    """Xavier-uniform input weights (fan in: the input width, fan out: the state) and the biases."""
    kernel = layer.kernel[...]
    bound = (6.0 / (kernel.shape[0] + hidden)) ** 0.5
    layer.kernel[...] = jax.random.uniform(key, kernel.shape, minval=-bound, maxval=bound)
    assert layer.bias is not None
    layer.bias[...] = jnp.zeros((gates * hidden,)).at[:hidden].set(-jnp.linspace(0.0, 1.0, hidden))

"""The one model every method trains: a stack of `layers` registered cells plus a linear readout.

The Flax NNX module is split once (`nnx.split`) into a static graph definition
and a parameter pytree; everything downstream is a plain function of that pytree,
so `jax.jit`, `lax.scan` and `vmap` see ordinary arrays (the Flax performance
guide's advice for small models inside scan).

A stack is L layers of the same cell. Layer 0 reads the task's input; layer l >= 1
reads the stream `z_l` below it, through an optional norm (pre-norm, as minGRU and
ParaRNN stack their cells). The stream is `z_1 = h_0` and `z_{l+1} = h_l`, or with
`residual` `z_{l+1} = z_l + h_l`, where `h_l = output(s_l)` are layer l's features;
the readout reads `z_L`. So the stream, and the readout's input, are functions of
the layers' states alone, and a stack's state is their concatenation `(L * S,)`, layer
0 first: the *joint* state. `Model` itself runs on the joint state (`step` advances the
whole stack one step, `state_dim` is L·S), so every caller written for one layer keeps
working unchanged; `model.layer(l)` is one layer's view, with the same single-layer
interface on its own state, for methods that run the stack layer by layer.
With L = 1 the joint state is the cell's state and everything is exactly the one-cell model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from seqpar.model.cells import CELLS, Cell, CellConfig
from seqpar.model.cells.base import JacobianStructure

Params = Any
Norm = Literal["none", "layer", "rms"]
Block = Literal["plain", "pararnn"]
LayerFn = Callable[["Layer", jax.Array], jax.Array]  # (layer, its input sequence (..., T, D_l)) -> its states (..., T, S)


def as_cell_config(cell: CellConfig | str) -> CellConfig:
    """A cell's config from itself or its bare registered name (`"gru"`)."""
    return CELLS.get(cell)() if isinstance(cell, str) else cell


def cell_name(index: int) -> str:
    """The attribute (and params key) of layer `index`'s cell: `cell` for the first, as a one-cell model."""
    return "cell" if index == 0 else f"cell_{index}"


def norm_name(index: int) -> str:
    return f"norm_{index}"


def block_name(index: int) -> str:
    return f"block_{index}"


def mlp_width(hidden: int) -> int:
    """The SwiGLU MLP's inner width: 8/3 of the hidden size (ParaRNN's and DCLM's ratio), rounded up to 8."""
    return -(-8 * hidden // 3 // 8) * 8


class ParaRNNBlock(nnx.Module):
    """ParaRNN's layer block around one cell (the public fork's `training/src/model.py`, re-read):

        u = RMSNorm(z);  [v, g] = W_in u;  cell input = SiLU(v)          (cell_input)
        y = RMSNorm(h) ⊙ SiLU(g);  z' = s·z + W_out y                    (pass_up; s a learnable scalar, 1 at start)
        z'' = z' + W_2(SiLU(W_1 u') ⊙ W_3 u'),  u' = RMSNorm(z')          (the SwiGLU MLP, with its residual)

    and an RMSNorm on the top stream before the readout. Left out: the causal depthwise
    convolution before the cell's input (it would let a layer see the last inputs without
    its recurrence, so the memoryless baseline would no longer be memoryless), and, on the
    first layer, the gate and the residual (they read the task's input, where seqpar's
    readout reads the states only). Initialisation as ParaRNN's: every matrix normal with
    standard deviation 1/√d, the norms' weights and the residual scale 1."""

    def __init__(self, input_dim: int, hidden: int, first: bool, *, rngs: nnx.Rngs):
        init = nnx.initializers.normal(stddev=1.0 / hidden**0.5)
        self.first = first
        self.norm_in = nnx.RMSNorm(input_dim, epsilon=1e-6, rngs=rngs)
        self.w_in = nnx.Linear(input_dim, hidden if first else 2 * hidden, use_bias=False, kernel_init=init, rngs=rngs)
        self.norm_h = nnx.RMSNorm(hidden, epsilon=1e-6, rngs=rngs)
        self.w_out = nnx.Linear(hidden, hidden, use_bias=False, kernel_init=init, rngs=rngs)
        self.scale = None if first else nnx.Param(jnp.ones(()))
        self.norm_mlp = nnx.RMSNorm(hidden, epsilon=1e-6, rngs=rngs)
        width = mlp_width(hidden)
        self.w1 = nnx.Linear(hidden, width, use_bias=False, kernel_init=init, rngs=rngs)
        self.w3 = nnx.Linear(hidden, width, use_bias=False, kernel_init=init, rngs=rngs)
        self.w2 = nnx.Linear(width, hidden, use_bias=False, kernel_init=init, rngs=rngs)

    def _in(self, z: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        vg = self.w_in(self.norm_in(z))
        if self.first:
            return vg, None
        v, g = jnp.split(vg, 2, axis=-1)
        return v, g

    def cell_input(self, z: jax.Array) -> jax.Array:
        return jax.nn.silu(self._in(z)[0])

    def pass_up(self, z: jax.Array | None, h: jax.Array) -> jax.Array:
        if self.scale is None:  # the first layer: no gate, no residual (`z` is the task's input, unread)
            z = self.w_out(self.norm_h(h))
        else:
            assert z is not None
            g = self._in(z)[1]
            assert g is not None
            z = self.scale[...] * z + self.w_out(self.norm_h(h) * jax.nn.silu(g))
        u = self.norm_mlp(z)
        return z + self.w2(jax.nn.silu(self.w1(u)) * self.w3(u))


class RNN(nnx.Module):
    def __init__(
        self,
        cell: CellConfig | str,
        input_dim: int,
        hidden: int,
        output_dim: int,
        *,
        rngs: nnx.Rngs,
        layers: int = 1,
        norm: Norm = "none",
        block: Block = "plain",
    ):
        cfg = as_cell_config(cell)
        # Built in this order (cells bottom up, then norms, then the readout) so that one layer
        # draws its initial weights exactly as the one-cell model did.
        # In ParaRNN's block every cell reads the block's in-projection (hidden wide).
        self.cell: Cell = cfg.build(hidden if block == "pararnn" else input_dim, hidden, rngs=rngs)
        for i in range(1, layers):
            setattr(self, cell_name(i), cfg.build(hidden, hidden, rngs=rngs))
        for i in range(1, layers):
            if norm == "layer":
                setattr(self, norm_name(i), nnx.LayerNorm(hidden, rngs=rngs))
            elif norm == "rms":
                setattr(self, norm_name(i), nnx.RMSNorm(hidden, rngs=rngs))
        if block == "pararnn":
            for i in range(layers):
                setattr(self, block_name(i), ParaRNNBlock(input_dim if i == 0 else hidden, hidden, i == 0, rngs=rngs))
            self.norm_top = nnx.RMSNorm(hidden, epsilon=1e-6, rngs=rngs)
        self.readout = nnx.Linear(hidden, output_dim, rngs=rngs)


@dataclass(frozen=True)
class Layer:
    """One layer of a `Model`: the single-layer interface on that layer's own state `(S,)`.

    `params` is always the whole model's pytree; the view picks its cell, so a gradient
    taken through it lands in the right place. `x` is the layer's own input (the task's
    input for layer 0, the normed stream below it otherwise: `Model.cell_input`).
    Frozen and hashable, so its bound methods can be static arguments."""

    model: Model
    index: int

    @property
    def state_dim(self) -> int:
        return self.model.layer_state_dim

    @property
    def hidden(self) -> int:
        return self.model.hidden

    @property
    def linear_recurrence(self) -> bool:
        return self.model.cell_linear_recurrence

    @property
    def jacobian_structure(self) -> JacobianStructure:
        return self.model.cell_jacobian_structure

    @property
    def jacobian_block(self) -> int:
        return self.model.cell_jacobian_block

    def cell(self, params: Params) -> Cell:
        return getattr(nnx.merge(self.model.graphdef, params), cell_name(self.index))

    def step(self, params: Params, s: jax.Array, x: jax.Array) -> jax.Array:
        return self.cell(params)(s, x)

    def project(self, params: Params, x: jax.Array) -> jax.Array:
        """The input-only part of the step, for inputs of any leading shape `(..., D)`."""
        return self.cell(params).project(x)

    def step_projected(self, params: Params, s: jax.Array, px: jax.Array) -> jax.Array:
        return self.cell(params).step_projected(s, px)

    def step_and_jacobian(self, params: Params, s: jax.Array, px: jax.Array) -> tuple[jax.Array, jax.Array]:
        """`(s', J)` from one evaluation of the gates, `J` in the cell's `jacobian_structure`."""
        return self.cell(params).step_and_jacobian(s, px)

    def step_and_diagonal(self, params: Params, s: jax.Array, px: jax.Array) -> tuple[jax.Array, jax.Array]:
        """`(s', diag J)` from one evaluation of the gates (quasi-DEER on a `full` cell)."""
        return self.cell(params).step_and_diagonal(s, px)

    def diag_jacobian(self, params: Params, s: jax.Array, x: jax.Array) -> jax.Array:
        """`diag(d step / d s)`, `(S,)`: the cell's analytic form (quasi-DEER's Jacobian)."""
        return self.cell(params).diag_jacobian(s, x)

    def jacobian(self, params: Params, s: jax.Array, x: jax.Array) -> jax.Array:
        """`d step / d s`, `(S, S)`, by forward mode (DEER's Jacobian)."""
        return jax.jacfwd(self.step, argnums=1)(params, s, x)

    def output(self, params: Params, s: jax.Array) -> jax.Array:
        """The features `h` this layer passes up (and, on top, to the readout); any leading shape."""
        return self.cell(params).output(s)

    def initial_state(self) -> jax.Array:
        return jnp.zeros((self.state_dim,), jnp.float32)

    def step_batch(self, params: Params, s: jax.Array, x: jax.Array) -> jax.Array:
        return jax.vmap(self.step, in_axes=(None, 0, 0))(params, s, x)


@dataclass(frozen=True)
class Model:
    """Pure view of an `RNN`: `graphdef` is static, params travel as a pytree.

    All functions take a single example (`s: (state_dim,)`, `x: (input_dim,)`);
    callers batch them with `jax.vmap`. `state_dim` is the joint state's, L·S;
    `layer(l)` gives layer l's own view (state `(S,)`).
    """

    graphdef: Any
    state_dim: int  # the joint state: layers * layer_state_dim
    hidden: int
    cell_linear_recurrence: bool = False  # each cell's new state is affine in its old one (see `Cell`)
    layers: int = 1
    residual: bool = False
    norm: Norm = "none"
    block: Block = "plain"
    cell_jacobian_structure: JacobianStructure = "full"
    cell_jacobian_block: int = 1
    cell_jacobian_kind: Literal["analytic", "autodiff"] = "analytic"  # written out, or by autodiff (a user's function cell)

    @property
    def layer_state_dim(self) -> int:
        return self.state_dim // self.layers

    @property
    def linear_recurrence(self) -> bool:
        """The joint state's new value is affine in its old one: one linear cell. A stack feeds each
        layer's gates with the layer below's new state, which is not affine in the joint state."""
        return self.cell_linear_recurrence and self.layers == 1

    def layer(self, index: int) -> Layer:
        if not 0 <= index < self.layers:
            raise IndexError(f"layer {index} of a {self.layers}-layer model")
        return Layer(self, index)

    # ------------------------------------------------------------------ the joint state

    def split(self, s: jax.Array) -> tuple[jax.Array, ...]:
        """Joint states `(..., L·S)` -> each layer's `(..., S)`, layer 0 first."""
        if self.layers == 1:
            return (s,)
        return tuple(jnp.split(s, self.layers, axis=-1))

    def join(self, parts) -> jax.Array:
        """Each layer's states `(..., S)` -> the joint states `(..., L·S)`."""
        parts = tuple(parts)
        return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)

    # ------------------------------------------------------------------ between layers (any leading shape)

    def cell_input(self, params: Params, index: int, z: jax.Array) -> jax.Array:
        """What layer `index`'s cell reads: the task's input for layer 0, the (normed) stream `z`
        otherwise; in ParaRNN's block, the block's in-projection of `z` (every layer)."""
        if self.block == "pararnn":
            return getattr(nnx.merge(self.graphdef, params), block_name(index)).cell_input(z)
        if index == 0 or self.norm == "none":
            return z
        return getattr(nnx.merge(self.graphdef, params), norm_name(index))(z)

    def pass_up(self, params: Params, index: int, z: jax.Array, s: jax.Array) -> jax.Array:
        """The stream above layer `index`, from the stream `z` below it and the layer's states `s`
        (layer 0's never reads `z`: the stream is a function of the states alone)."""
        h = self.layer(index).output(params, s)
        if self.block == "pararnn":
            return getattr(nnx.merge(self.graphdef, params), block_name(index)).pass_up(z, h)
        return z + h if self.residual and index > 0 else h

    def features(self, params: Params, s: jax.Array) -> jax.Array:
        """The readout's input `z_L` from joint states `(..., L·S)` (normed first in ParaRNN's block)."""
        z = None
        for i, part in enumerate(self.split(s)):
            z = self.pass_up(params, i, z, part)  # type: ignore[arg-type]  # z is unused by layer 0
        if self.block == "pararnn":
            z = nnx.merge(self.graphdef, params).norm_top(z)
        return z  # type: ignore[return-value]

    def over_layers(self, params: Params, x: jax.Array, layer_states: LayerFn) -> jax.Array:
        """Joint states `(..., T, L·S)` of a stack run layer by layer over whole sequences
        `x: (..., T, D)`: layer l's states are `layer_states(layer(l), its input sequence)`,
        the layer below's output being the input of the one above (mathematically the
        joint recurrence, since a layer reads only the layers below at the same step)."""
        z, parts = x, []
        for i in range(self.layers):
            s = layer_states(self.layer(i), self.cell_input(params, i, z))
            parts.append(s)
            z = self.pass_up(params, i, z, s)
        return self.join(parts)

    # ------------------------------------------------------------------ the single-layer interface, on the joint state

    def joint_step(self, params: Params, s: jax.Array, x: jax.Array) -> jax.Array:
        """Advance the whole stack one time step: joint state `(L·S,)`, task input `(D,)`."""
        z, new = x, []
        for i, part in enumerate(self.split(s)):
            s_l = self.layer(i).step(params, part, self.cell_input(params, i, z))
            new.append(s_l)
            z = self.pass_up(params, i, z, s_l)
        return self.join(new)

    def step(self, params: Params, s: jax.Array, x: jax.Array) -> jax.Array:
        return self.joint_step(params, s, x)

    def project(self, params: Params, x: jax.Array) -> jax.Array:
        """One layer: its cell's projection of what it reads. A stack: the input itself (only layer 0 reads `x`)."""
        return self.layer(0).project(params, self.cell_input(params, 0, x)) if self.layers == 1 else x

    def step_projected(self, params: Params, s: jax.Array, px: jax.Array) -> jax.Array:
        return self.layer(0).step_projected(params, s, px) if self.layers == 1 else self.joint_step(params, s, px)

    def step_and_jacobian(self, params: Params, s: jax.Array, px: jax.Array) -> tuple[jax.Array, jax.Array]:
        if self.layers == 1:
            return self.layer(0).step_and_jacobian(params, s, px)
        return self.joint_step(params, s, px), jax.jacfwd(self.joint_step, argnums=1)(params, s, px)

    def step_and_diagonal(self, params: Params, s: jax.Array, px: jax.Array) -> tuple[jax.Array, jax.Array]:
        if self.layers == 1:
            return self.layer(0).step_and_diagonal(params, s, px)
        return self.joint_step(params, s, px), self.diag_jacobian(params, s, px)

    @property
    def jacobian_structure(self) -> JacobianStructure:
        # A stack's joint Jacobian is block lower-triangular (each layer reads the new state below).
        return self.cell_jacobian_structure if self.layers == 1 else "full"

    @property
    def jacobian_block(self) -> int:
        return self.cell_jacobian_block if self.layers == 1 else 1

    def diag_jacobian(self, params: Params, s: jax.Array, x: jax.Array) -> jax.Array:
        """`diag(d step / d s)`, `(L·S,)`: each layer's analytic diagonal at its own input
        (a layer's new state depends on its own old state only through its cell)."""
        z, diags = x, []
        for i, part in enumerate(self.split(s)):
            layer, a = self.layer(i), self.cell_input(params, i, z)
            diags.append(layer.diag_jacobian(params, part, a))
            z = self.pass_up(params, i, z, layer.step(params, part, a))
        return self.join(diags)

    def jacobian(self, params: Params, s: jax.Array, x: jax.Array) -> jax.Array:
        """`d step / d s`, `(L·S, L·S)`, by forward mode (DEER's Jacobian)."""
        return jax.jacfwd(self.step, argnums=1)(params, s, x)

    def head(self, params: Params, h: jax.Array) -> jax.Array:
        """The linear readout on the top features `z_L`, any leading shape."""
        return nnx.merge(self.graphdef, params).readout(h)

    def readout(self, params: Params, s: jax.Array) -> jax.Array:
        """The readout of a joint state: `head(features(s))`."""
        return self.head(params, self.features(params, s))

    def initial_state(self) -> jax.Array:
        """The fixed, untrained state before step 0 (zeros) shared by all methods."""
        return jnp.zeros((self.state_dim,), jnp.float32)

    # Batched conveniences, used by methods and the rollout evaluator.
    def step_batch(self, params: Params, s: jax.Array, x: jax.Array) -> jax.Array:
        return jax.vmap(self.step, in_axes=(None, 0, 0))(params, s, x)

    def readout_batch(self, params: Params, s: jax.Array) -> jax.Array:
        return jax.vmap(self.readout, in_axes=(None, 0))(params, s)


def _model(graphdef, module: RNN, hidden: int, layers: int, residual: bool, norm: Norm, block: Block = "plain") -> Model:
    cell: Cell = module.cell
    if cell.state_dim % cell.jacobian_block:  # a cell's own declaration, checked once: no user input sets it
        raise ValueError(f"{type(cell).__name__}: jacobian_block={cell.jacobian_block} must divide state_dim={cell.state_dim}")
    return Model(
        graphdef,
        layers * cell.state_dim,
        hidden,
        cell.linear_recurrence,
        layers,
        residual,
        norm,
        block,
        cell.jacobian_structure,
        cell.jacobian_block,
        type(cell).jacobian_kind(),
    )


def build_model(
    cell: CellConfig | str,
    input_dim: int,
    hidden: int,
    output_dim: int,
    key: jax.Array,
    *,
    layers: int = 1,
    residual: bool = False,
    norm: Norm = "none",
    block: Block = "plain",
) -> tuple[Model, Params]:
    module = RNN(cell, input_dim, hidden, output_dim, rngs=nnx.Rngs(params=key), layers=layers, norm=norm, block=block)
    graphdef, params = nnx.split(module, nnx.Param)
    return _model(graphdef, module, hidden, layers, residual, norm, block), params


def abstract_model(
    cell: CellConfig | str,
    input_dim: int,
    hidden: int,
    output_dim: int,
    *,
    layers: int = 1,
    residual: bool = False,
    norm: Norm = "none",
    block: Block = "plain",
) -> tuple[Model, Params]:
    """`build_model`'s result as shapes only (nothing allocated), for memory estimates."""
    build = lambda: RNN(cell, input_dim, hidden, output_dim, rngs=nnx.Rngs(params=0), layers=layers, norm=norm, block=block)  # noqa: E731
    module = nnx.eval_shape(build)
    graphdef, params = nnx.split(module, nnx.Param)
    return _model(graphdef, module, hidden, layers, residual, norm, block), params

"""Newton over a stack of layers: each layer solved over the whole sequence in parallel, one after another.

A layer of a stack reads only the layers below it at the same time step, so the joint
recurrence is solved exactly by solving layer 0 over the whole sequence (`seqpar.model.newton`),
then layer 1 on layer 0's solved output, and so on; the adjoint runs the layers in reverse,
each layer's adjoint also giving the gradient of its input. `deer` trains with this, and the
embedding-parallel method's Newton refresh solves its tables with it.
"""

from __future__ import annotations

import jax

from seqpar.model.model import Layer, Model, Params
from seqpar.model.newton import Adjoint, Jacobian, NewtonOptions, NewtonStats, differentiable_states, solve_states


def solve_stack(
    model: Model, params: Params, x: jax.Array, guess: jax.Array | None, opts: NewtonOptions, chunk: int | None = None
) -> tuple[jax.Array, list[NewtonStats]]:
    """Newton-solved joint states `(N, T, state_dim)` of the whole stack, layer by layer: layer l
    over the whole sequence in parallel, its input the solved output of the layer below; each
    layer from its part of the joint `guess` (None: ParaRNN's `f(0, x_t)` of the layer's own
    input, `seqpar.model.newton.f0_guess`). Per layer, its `NewtonStats`. No gradient flows."""
    params = jax.lax.stop_gradient(params)
    guesses = model.split(jax.lax.stop_gradient(guess)) if guess is not None else (None,) * model.layers
    z, parts, stats = x, [], []
    for i in range(model.layers):
        layer = model.layer(i)
        s, st = solve_states(layer, params, model.cell_input(params, i, z), guesses[i], opts, chunk)
        parts.append(s)
        stats.append(st)
        z = model.pass_up(params, i, z, s)
    return model.join(parts), stats


def differentiable_stack(
    model: Model, params: Params, x: jax.Array, states: jax.Array, gradient: Jacobian = "full", adjoint: Adjoint = "auto"
) -> jax.Array:
    """The solved joint `states` with the adjoint attached layer by layer: each layer's adjoint
    also gives the gradient of its input, so the backward pass runs the layers in reverse, each
    over the whole sequence in parallel (exact at convergence with `gradient: full`)."""
    parts = model.split(states)

    def one_layer(layer: Layer, u: jax.Array) -> jax.Array:
        return differentiable_states(layer, params, u, parts[layer.index], gradient, adjoint)

    return model.over_layers(params, x, one_layer)

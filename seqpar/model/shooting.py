"""Multiple shooting: free states at segment boundaries only, the cell run sequentially inside each segment.

The embedding table of the seed's method holds a free state after every step (segments of
length K = 1); BPTT holds none (one segment, K ≥ T). Multiple shooting sits between: the
sequence is cut into segments of K steps (the last may be shorter), a free *node* state is
kept at the end of every segment, and each segment is run sequentially (a `lax.scan` over its
K steps) from the node before it (the fixed initial state for the first), all segments of all
sequences at once (`vmap`). The consistency residual is the segment's last prediction against
its node. This is the method of auxiliary coordinates / lifted networks with a chain of
segments (Carreira-Perpiñán & Wang 2014; Askari et al. 2018), multiple shooting for neural ODEs
(Massaroli et al. 2021; Turan & Jäschke 2021), and the parareal family for RNNs (Moon & Cyr
2022).

The nodes are the end states of every segment, the last (the state after the final step)
included, so K = 1 is exactly the seed's table (a state after every step). With a single
segment (K ≥ T) nothing is shot between: there is no node, and the method is BPTT.

A stack keeps nodes per layer, side by side in the joint state as the table does: layer l's
segments start from its own nodes and read the per-step output stream of the layer below.

`solve_nodes` is Newton on the node recurrence `E_j = F_j(E_{j-1})`, where `F_j` runs segment
j's K steps (multiple-shooting Newton: its linearisation is the product of the K steps'
Jacobians, in the cell's structure), each iteration one associative scan over the M nodes
(`seqpar.model.newton`): the table's `refresh: newton` on a segmented table.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seqpar.model.model import Layer, Model, Params
from seqpar.model.newton import NewtonOptions, NewtonStats, Structure, _linearisation, newton_solve, ops, solve_rows, solve_structure


def segments(length: int, segment: int) -> int:
    """Segments of a sequence of `length` steps cut every `segment` steps (the last may be shorter)."""
    return math.ceil(length / segment)


def node_steps(length: int, segment: int) -> np.ndarray:
    """0-based step after which each node is the state: the end of every segment (the last one
    `length - 1`); none for a single segment (`segment >= length`)."""
    if segment >= length:
        return np.zeros((0,), np.int32)
    return np.minimum(np.arange(1, segments(length, segment) + 1) * segment, length).astype(np.int32) - 1


def segment_starts(s0: jax.Array, nodes: jax.Array, n_segments: int) -> jax.Array:
    """The state each segment starts from, `(B, n_segments, S)`: the fixed initial state, then
    the node ending the segment before."""
    b = nodes.shape[0]
    first = jnp.broadcast_to(s0.astype(nodes.dtype), (b, 1, s0.shape[-1]))
    return jnp.concatenate([first, nodes[:, : n_segments - 1]], axis=1)


def _by_segment(a: jax.Array, segment: int, n_segments: int) -> jax.Array:
    """`(B, T, ...)` -> `(B, n_segments, segment, ...)`, zero-padded at the end."""
    pad = n_segments * segment - a.shape[1]
    a = jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
    return a.reshape(a.shape[0], n_segments, segment, *a.shape[2:])


def segment_states(layer: Layer, params: Params, u: jax.Array, starts: jax.Array, segment: int) -> jax.Array:
    """One layer's states `(B, T, S)` when each segment runs its steps sequentially from `starts:
    (B, M, S)` on the layer's inputs `u: (B, T, D)`: a scan over the K steps of every segment at
    once (padding steps past the end are computed on zero inputs and dropped)."""
    t = u.shape[1]
    m = starts.shape[1]
    px = _by_segment(layer.project(params, u), segment, m)  # (B, M, K, P): the projection once
    step = jax.vmap(jax.vmap(layer.step_projected, in_axes=(None, 0, 0)), in_axes=(None, 0, 0))

    def body(s, p_k):
        s = step(params, s, p_k)
        return s, s

    _, states = jax.lax.scan(body, starts, jnp.moveaxis(px, 2, 0))  # (K, B, M, S)
    states = jnp.moveaxis(states, 0, 2).reshape(u.shape[0], m * segment, -1)
    return states[:, :t]


def shooting_predictions(model: Model, params: Params, nodes: jax.Array, x: jax.Array, segment: int) -> jax.Array:
    """Every step's joint state `(B, T, L·S)` predicted from the joint `nodes: (B, M, L·S)`: per
    layer, its segments run from its own nodes, reading the stream of the layer below."""
    t = x.shape[1]
    m = segments(t, segment)
    parts = model.split(nodes)

    def one_layer(layer: Layer, u: jax.Array) -> jax.Array:
        starts = segment_starts(layer.initial_state(), parts[layer.index], m)
        return segment_states(layer, params, u, starts, segment)

    return model.over_layers(params, x, one_layer)


# ----------------------------------------------------------------------------- multiple-shooting Newton


def _identity(structure: Structure, s: jax.Array, block: int) -> jax.Array:
    if structure == "none":  # Picard: no Jacobian to chain
        return jnp.ones((1,), s.dtype)
    if structure == "diagonal":
        return jnp.ones_like(s)
    if structure == "full":
        return jnp.eye(s.shape[-1], dtype=s.dtype)
    n = s.shape[-1] // block
    return jnp.broadcast_to(jnp.eye(block, dtype=s.dtype), (n, block, block))


def segment_map(linearise: Callable, params: Params, structure: Structure, block: int) -> Callable:
    """`(s, (px (K, P), valid (K,))) -> (F(s), dF/ds)`: a segment's K steps from `s` and the product
    of their Jacobians in `structure` (a padding step is the identity)."""
    o = ops(structure)

    def run(s, seg):
        px, valid = seg

        def body(carry, inputs):
            state, jac = carry
            p, ok = inputs
            new, j = linearise(params, state, p)
            return (jnp.where(ok, new, state), jnp.where(ok, o.mm(j, jac), jac)), None

        (end, jac), _ = jax.lax.scan(body, (s, _identity(structure, s, block)), (px, valid))
        return end, jac

    return run


def solve_nodes(
    model: Model, params: Params, x: jax.Array, guess: jax.Array, opts: NewtonOptions, segment: int, chunk: int | None = None
) -> tuple[jax.Array, list[NewtonStats]]:
    """Newton-solved joint nodes `(N, M, L·S)` from the joint `guess` (the table): layer by layer,
    each layer's node recurrence solved by multiple-shooting Newton, then its segments run from the
    solved nodes to give the layer above its input. No gradient flows."""
    params = jax.lax.stop_gradient(params)
    t = x.shape[1]
    m = segments(t, segment)
    valid = (np.arange(m * segment) < t).reshape(m, segment)
    guesses = model.split(jax.lax.stop_gradient(guess))
    z, parts, stats = x, [], []
    for i in range(model.layers):
        layer = model.layer(i)
        u = model.cell_input(params, i, z)
        structure = solve_structure(layer, opts.jacobian)
        run = segment_map(_linearisation(layer, structure), params, structure, layer.jacobian_block)
        s0 = layer.initial_state().astype(u.dtype)

        def one(ui: jax.Array, gi: jax.Array, run: Callable = run, layer: Layer = layer, s0: jax.Array = s0, structure: Any = structure):
            px = _by_segment(layer.project(params, ui)[None], segment, m)[0]
            return newton_solve(run, s0, (px, jnp.asarray(valid)), gi, opts, structure)

        nodes, st = solve_rows(one, u, guesses[i], chunk)
        parts.append(nodes)
        stats.append(st)
        states = segment_states(layer, params, u, segment_starts(s0, nodes, m), segment)
        z = model.pass_up(params, i, z, states)
    return model.join(parts), stats

"""A cell as two plain JAX functions, named by a spec beside this file (no seqpar import here).

    model: {cell: {type: function, init: "mycell:init", step: "mycell:step"}, hidden: 32}

seqpar imports this module from the spec's directory first, vmaps `step` over sequences, scans it
over time, and differentiates it by autodiff where a Newton solver needs its Jacobian.
"""

import jax
import jax.numpy as jnp


def init(key, input_size, hidden_size):
    kx, kh = jax.random.split(key)
    return {
        "wx": jax.random.normal(kx, (input_size, 3 * hidden_size)) / jnp.sqrt(input_size),
        "wh": jax.random.normal(kh, (hidden_size, 3 * hidden_size)) / jnp.sqrt(hidden_size),
        "b": jnp.zeros(3 * hidden_size),
    }


def step(params, h, x):
    """A GRU whose candidate uses softsign: h: (hidden_size,), x: (input_size,) -> (hidden_size,)."""
    xr, xz, xn = jnp.split(x @ params["wx"] + params["b"], 3)
    hr, hz, hn = jnp.split(h @ params["wh"], 3)
    r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
    return (1 - z) * jax.nn.soft_sign(xn + r * hn) + z * h

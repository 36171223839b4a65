"""How far along the sequence the embedding table agrees with the true rollout.

The lag-sweep prediction for the embedding-parallel method: information crosses the
table about one step per optimiser update, because `E[t]` learns of a change in
`E[t-1]` only through the consistency term of the next update. If that is so, the
table agrees with the rollout from t = 1 up to a position that moves forward with
training. This measures that position at every evaluation:

- `table_rollout_dist_at_<t>`: the mean over training sequences of `‖E[t] − s_t‖` at
  steps t = 1, 2, 4, 8, ... and T (1-based), a per-position profile small enough for
  every metrics line;
- `agreement_horizon`: the number of leading steps whose mean distance is at most
  `threshold` (T: the whole table agrees, 0: not even the first step);
  `agreement_horizon_frac` the same over T.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Mean L2 distance per position below which the table "agrees" with the rollout: a tenth
# of the unit scale of the bounded cells' states (GRU, LSTM, tanh Elman live in [-1, 1]).
THRESHOLD = 0.1


def profile_positions(length: int) -> list[int]:
    """1-based steps 1, 2, 4, ... below `length`, then `length` itself."""
    out, t = [], 1
    while t < length:
        out.append(t)
        t *= 2
    return [*out, length]


def agreement_metrics(table: jax.Array, rollout: jax.Array, threshold: float = THRESHOLD) -> dict[str, jax.Array]:
    """The horizon and the per-position profile of `table` against `rollout`, both `(N, T, S)`."""
    per_position = jnp.mean(jnp.linalg.norm(table - rollout, axis=-1), axis=0)  # (T,)
    length = per_position.shape[0]
    above = per_position > threshold
    horizon = jnp.where(jnp.any(above), jnp.argmax(above), length).astype(jnp.float32)
    out = {"agreement_horizon": horizon, "agreement_horizon_frac": horizon / length}
    out.update({f"table_rollout_dist_at_{t}": per_position[t - 1] for t in profile_positions(length)})
    return out

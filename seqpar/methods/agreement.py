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
  `agreement_horizon_frac` the same over T. A segmented table (multiple shooting) holds a
  state every K steps: the profile is taken at its entries (1st, 2nd, 4th, ... entry, named
  by the step each holds) and the horizon counts the steps up to the first disagreeing entry.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

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


def agreement_metrics(
    table: jax.Array, rollout: jax.Array, threshold: float = THRESHOLD, steps: np.ndarray | None = None, length: int | None = None
) -> dict[str, jax.Array]:
    """The horizon and the per-position profile of `table` against `rollout`, both `(N, M, S)`.

    `steps`: the 0-based step each table entry holds the state after (multiple shooting keeps
    one every K steps, `seqpar.model.shooting.node_steps`); default every step. The horizon is
    counted in steps of the sequence (`length` of them): the step after which the first
    disagreeing entry's segment began, so a table that agrees up to its j-th node agrees up to
    that node's step."""
    m = table.shape[1]
    steps = np.arange(m) if steps is None else np.asarray(steps)
    length = m if length is None else length
    if m == 0:  # no free state (a single segment): nothing can disagree
        return {"agreement_horizon": jnp.float32(length), "agreement_horizon_frac": jnp.float32(1.0)}
    per_position = jnp.mean(jnp.linalg.norm(table - rollout, axis=-1), axis=0)  # (M,)
    above = per_position > threshold
    ends = jnp.asarray(np.concatenate([[0], steps + 1]), jnp.float32)  # steps covered by the first j entries
    horizon = jnp.where(jnp.any(above), ends[jnp.argmax(above)], length).astype(jnp.float32)
    out = {"agreement_horizon": horizon, "agreement_horizon_frac": horizon / length}
    out.update({f"table_rollout_dist_at_{int(steps[j]) + 1}": per_position[j] for j in (p - 1 for p in profile_positions(m))})
    return out

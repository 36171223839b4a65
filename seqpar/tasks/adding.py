"""The adding problem (Hochreiter & Schmidhuber 1997).

Two input channels per step: a value uniform in [0, 1] and a 0/1 marker. Exactly
two steps are marked, one uniformly in the first half `[0, length // 2)` and one in
the second half `[length // 2, length - 1)`. The target is the sum of the two marked
values, read (and scored) at the last step only; MSE.

The second marker never falls on the last step: otherwise a predictor that reads
only the current input would see one of the two addends there and beat 1/6 on that
fraction of sequences (by 1/12 each), so "memoryless" would depend on what the
predictor may see. With it excluded, the last input says nothing about the target,
and the best predictor without memory is the constant E[a + b] = 1, whose loss is
Var(a + b) = 2 · 1/12 = 1/6 exactly.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from pydantic import Field

from seqpar.tasks.base import Dataset, RegressionTask, TaskConfig
from seqpar.tasks.registry import TASKS


@TASKS.register("adding")
class AddingConfig(TaskConfig):
    """Add the two marked values of a stream; answer at the last step."""

    type: Literal["adding"] = "adding"
    length: int = Field(100, ge=3, description="steps per sequence; one marker in each half, the last step never marked")

    def build(self) -> Adding:
        return Adding(self)


class Adding(RegressionTask):
    baseline_formula = "1/6 = Var(a + b), a, b ~ U(0,1); predict 1"

    def __init__(self, cfg: AddingConfig):
        self.cfg = cfg
        self.input_dim = 2  # value, marker
        self.output_dim = 1
        self.seq_len = cfg.length

    @property
    def baseline_loss(self) -> float:
        return 1.0 / 6.0

    def make_data(self, key, num_sequences, split="train"):
        n, t = num_sequences, self.cfg.length
        k_val, k_first, k_second = jax.random.split(key, 3)
        values = jax.random.uniform(k_val, (n, t))
        first = jax.random.randint(k_first, (n,), 0, t // 2)
        second = jax.random.randint(k_second, (n,), t // 2, t - 1)
        steps = jnp.arange(t)
        markers = ((steps == first[:, None]) | (steps == second[:, None])).astype(jnp.float32)
        total = jnp.sum(values * markers, axis=1)
        last = (steps == t - 1).astype(jnp.float32)
        return Dataset(
            x=jnp.stack([values, markers], axis=-1),
            y=(total[:, None] * last)[..., None],  # (N, T, 1); only the last step is scored
            mask=jnp.broadcast_to(last, (n, t)),
        )

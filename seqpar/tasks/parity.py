"""Running parity: the target at step t is the XOR of all bits up to and including t.

Bits are uniform and given one-hot (2 input channels); 2 classes out. Nonlinear
cells can carry the parity in their state. `mingru` cannot at arbitrary length:
its recurrence is diagonal and linear in the state with transition entries
1 - z in (0, 1), and such recurrences cannot track parity (Grazzi et al. 2024,
"Unlocking state-tracking in linear RNNs through negative eigenvalues").

Step 0 is not scored: its target is the current bit itself. From step 1 on, the
parity so far is a fair coin independent of the current bit and of t, so no
predictor without memory beats ln 2 on any scored step: memoryless baseline ln 2.
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp
from pydantic import Field

from seqpar.tasks.base import ClassificationTask, Dataset, TaskConfig
from seqpar.tasks.registry import TASKS


@TASKS.register("parity")
class ParityConfig(TaskConfig):
    """Running XOR of a bit stream."""

    type: Literal["parity"] = "parity"
    length: int = Field(64, ge=2, description="bits per sequence (step 0 is not scored)")

    def build(self) -> Parity:
        return Parity(self)


class Parity(ClassificationTask):
    baseline_formula = "ln 2"

    def __init__(self, cfg: ParityConfig):
        self.cfg = cfg
        self.input_dim = self.output_dim = 2
        self.seq_len = cfg.length

    @property
    def baseline_loss(self) -> float:
        return math.log(2.0)

    def make_data(self, key, num_sequences, split="train"):
        n, t = num_sequences, self.cfg.length
        bits = jax.random.bernoulli(key, 0.5, (n, t)).astype(jnp.int32)
        parity = jnp.cumsum(bits, axis=1) % 2
        mask = (jnp.arange(t) >= 1).astype(jnp.float32)
        return Dataset(
            x=jax.nn.one_hot(bits, 2, dtype=jnp.float32),
            y=parity.astype(jnp.int32),
            mask=jnp.broadcast_to(mask, (n, t)),
        )

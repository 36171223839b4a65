"""Delayed recall: output the token seen `lag` steps ago.

Tokens are uniform over `vocab`; the target at step t is the input at t - lag.
The first `lag` targets do not exist and are masked out of every loss and
metric. A predictor that ignores the past can do no better than uniform:
memoryless baseline ln(vocab).
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp
from pydantic import Field, model_validator

from seqpar.config import KeyedError
from seqpar.tasks.base import ClassificationTask, Dataset, TaskConfig
from seqpar.tasks.registry import TASKS


@TASKS.register("delayed_recall")
class DelayedRecallConfig(TaskConfig):
    """Output the token seen `lag` steps ago."""

    type: Literal["delayed_recall"] = "delayed_recall"
    length: int = Field(64, gt=0, description="steps per sequence")
    lag: int = Field(2, gt=0, description="how many steps back the target lies")
    vocab: int = Field(8, ge=2, description="number of distinct tokens")

    @model_validator(mode="after")
    def _lag_fits(self):
        if self.lag >= self.length:
            raise KeyedError("lag", f"must be smaller than length={self.length} (got {self.lag})")
        return self

    def build(self) -> DelayedRecall:
        return DelayedRecall(self)


class DelayedRecall(ClassificationTask):
    baseline_formula = "ln(vocab)"

    def __init__(self, cfg: DelayedRecallConfig):
        self.cfg = cfg
        self.input_dim = self.output_dim = cfg.vocab
        self.seq_len = cfg.length

    @property
    def baseline_loss(self) -> float:
        return math.log(self.cfg.vocab)

    def make_data(self, key, num_sequences, split="train"):
        c = self.cfg
        tokens = jax.random.randint(key, (num_sequences, c.length), 0, c.vocab)
        y = jnp.roll(tokens, c.lag, axis=1)  # y[:, t] = tokens[:, t - lag]; wrapped steps are masked
        mask = (jnp.arange(c.length) >= c.lag).astype(jnp.float32)
        return Dataset(
            x=jax.nn.one_hot(tokens, c.vocab, dtype=jnp.float32),
            y=y.astype(jnp.int32),
            mask=jnp.broadcast_to(mask, (num_sequences, c.length)),
        )

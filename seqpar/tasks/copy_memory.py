"""Copy memory (Hochreiter & Schmidhuber 1997), in the form of Arjovsky et al. 2016.

Alphabet: blank 0, symbols 1..8, delimiter 9. A sequence is 10 symbols drawn
uniformly from all 8 (some public code draws from 7 by an off-by-one in
`randint`), then `length - 1` blanks, the delimiter, and 10 more blanks: total
`length + 20` steps. The target is blank for the first `length + 10` steps and the
10 symbols, in order, for the last 10.

Every step is scored, as in the paper, so the blanks count too. The best predictor
without memory (it may know the position t and the current input) outputs blank
with certainty for the first `length + 10` steps (loss 0) and a uniform guess over
8 symbols for the last 10 (loss ln 8 each): memoryless baseline
10·ln 8 / (length + 20), averaged over all steps. Accuracy is over all steps too,
so it starts at (length + 10) / (length + 20), not at chance.
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp
from pydantic import Field

from seqpar.tasks.base import ClassificationTask, Dataset, TaskConfig
from seqpar.tasks.registry import TASKS

BLANK, DELIMITER = 0, 9
SYMBOLS = 8  # classes 1..8
COPIED = 10  # symbols to remember


@TASKS.register("copy_memory")
class CopyMemoryConfig(TaskConfig):
    """Remember 10 symbols (of 8) across `length` blank steps, then write them out."""

    type: Literal["copy_memory"] = "copy_memory"
    length: int = Field(100, gt=0, description="T: blank steps between the symbols and the recall; the sequence is T + 20 steps")

    def build(self) -> CopyMemory:
        return CopyMemory(self)


class CopyMemory(ClassificationTask):
    baseline_formula = "10·ln 8 / (length + 20)"

    def __init__(self, cfg: CopyMemoryConfig):
        self.cfg = cfg
        self.input_dim = SYMBOLS + 2  # blank, 8 symbols, delimiter
        self.output_dim = SYMBOLS + 1  # the delimiter is never a target
        self.seq_len = cfg.length + 2 * COPIED

    @property
    def baseline_loss(self) -> float:
        return COPIED * math.log(SYMBOLS) / self.seq_len

    def make_data(self, key, num_sequences, split="train"):
        n, t = num_sequences, self.cfg.length
        symbols = jax.random.randint(key, (n, COPIED), 1, SYMBOLS + 1)  # 1..8 inclusive
        blanks = jnp.full((n, t - 1), BLANK, jnp.int32)
        delim = jnp.full((n, 1), DELIMITER, jnp.int32)
        tail = jnp.full((n, COPIED), BLANK, jnp.int32)
        x = jnp.concatenate([symbols, blanks, delim, tail], axis=1)
        y = jnp.concatenate([jnp.full((n, t + COPIED), BLANK, jnp.int32), symbols], axis=1)
        return Dataset(
            x=jax.nn.one_hot(x, self.input_dim, dtype=jnp.float32),
            y=y.astype(jnp.int32),
            mask=jnp.ones((n, self.seq_len), jnp.float32),
        )

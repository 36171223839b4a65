"""The task interface: data, per-step loss, accuracy and the memoryless baseline.

A task produces float inputs `x: (N, T, input_dim)`, targets `y` (int labels
`(N, T)` for classification, floats `(N, T, output_dim)` for regression) and a
`mask: (N, T)` that marks which steps are scored. Every loss and metric in seqpar
is a masked mean over `mask`, so methods are judged on exactly the same steps.

The memoryless baseline is one definition everywhere: the best held-out loss of a
predictor that sees the current input `x_t` and the position `t` but nothing
earlier. Each task names its predictor in `baseline_formula` and its docstring (a
constant, a function of t, of the current input, or a conditional entropy estimated
from counts); tests check the formula against that predictor's loss on generated
data, and against the trained memoryless baseline (`seqpar.methods.memoryless`: the
same model with its recurrence cut). A task without a formula returns None, and the
trained baseline is its baseline.
"""

from __future__ import annotations

import abc
import os
from pathlib import Path
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from pydantic import Field, ValidationInfo

from seqpar.config import Config

Split = Literal["train", "val", "test"]


class Dataset(NamedTuple):
    x: jax.Array  # (N, T, input_dim) float32
    y: jax.Array  # (N, T) int32 or (N, T, output_dim) float32
    mask: jax.Array  # (N, T) float32, 1 where the step is scored

    @property
    def num_sequences(self) -> int:
        return self.x.shape[0]


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


class Task(abc.ABC):
    """Runtime task built from its config by `TaskConfig.build()`."""

    input_dim: int
    output_dim: int
    seq_len: int
    loss_name: str  # "cross-entropy" or "mse"
    baseline_formula: str  # human-readable formula of `baseline_loss`

    @abc.abstractmethod
    def make_data(self, key: jax.Array, num_sequences: int, split: Split = "train") -> Dataset:
        """`num_sequences` sequences, a deterministic function of `key`.

        Generated tasks ignore `split` (the train, validation and test sets differ by key); a
        task over a fixed corpus (`char_lm`, `dataset`) draws each split from its own part.
        """

    @property
    @abc.abstractmethod
    def baseline_loss(self) -> float | None:
        """Held-out loss (per scored step) of the best predictor that sees `x_t` and `t` but nothing
        earlier; None when there is no formula (the runner then trains the memoryless baseline)."""

    @abc.abstractmethod
    def step_loss(self, out: jax.Array, y: jax.Array) -> jax.Array:
        """Per-step loss of readout `out: (..., output_dim)` against targets `y`."""

    def step_correct(self, out: jax.Array, y: jax.Array) -> jax.Array | None:
        """Per-step 0/1 correctness, or None where accuracy does not apply."""
        return None

    def loss(self, out: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
        return masked_mean(self.step_loss(out, y), mask)


class ClassificationTask(Task):
    loss_name = "cross-entropy"

    def step_loss(self, out, y):
        return optax.softmax_cross_entropy_with_integer_labels(out, y)

    def step_correct(self, out, y):
        return (jnp.argmax(out, axis=-1) == y).astype(jnp.float32)


class RegressionTask(Task):
    loss_name = "mse"

    def step_loss(self, out, y):
        return jnp.mean(jnp.square(out - y), axis=-1)


class TaskConfig(Config):
    """Fields every task has; each task adds its own and a `type:` literal."""

    train_sequences: int = Field(256, gt=0, description="sequences in the training set")
    val_sequences: int = Field(256, gt=0, description="held-out validation sequences: target_loss, steps to target, any choice")
    test_sequences: int = Field(256, gt=0, description="held-out test sequences: reported only, never used to choose")

    def data_files(self) -> dict[str, Path]:
        """The files this task reads, by field name (`{"path": Path("data.npz")}`); none by default.

        They are part of a run's identity: each is recorded with its sha256 when the run starts,
        and a resume (or a sweep or study picking a point up again) on other bytes is refused."""
        return {}

    def build(self) -> Task:  # pragma: no cover - interface
        raise NotImplementedError


def resolve_path(path: str, info: ValidationInfo | None) -> str:
    """A file named in a spec, as an absolute path: `~` expanded, a relative path joined to the
    spec file's directory (the validation context's `base_dir`; the working directory when the
    spec is not a file). Resolved once, recorded in the resolved spec, so a resume or a worker
    reads the same file from any working directory."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        base = (info.context or {}).get("base_dir") if info is not None else None
        p = Path(base or Path.cwd()) / p
    return str(Path(os.path.abspath(p)))

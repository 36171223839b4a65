"""The method interface: a registered object that owns its state, loss and step.

The trainer (`seqpar.train.loop`) never looks at a method's name. It asks a method to
`init` its state, calls its pure `train_step` under one `jax.jit`, and asks it
for `eval_metrics` at evaluation points. Everything here is a pure function of
pytrees, so one jitted step serves every method.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import jax
from pydantic import Field, field_validator

from seqpar.config import Config
from seqpar.config.registry import Registry, tagged_union
from seqpar.model.model import Model, Params
from seqpar.optim import OPTIMIZERS
from seqpar.tasks.base import Dataset, Task

METHODS: Registry[type] = Registry("method")

State = Any  # a pytree (dict) owned by the method
Metrics = dict[str, jax.Array]

if TYPE_CHECKING:  # a union built at import time from a registry: opaque to the type checker
    OptimizerSpec = Any
else:
    OptimizerSpec = tagged_union(OPTIMIZERS)


class Batch(NamedTuple):
    idx: jax.Array | None  # (B,) row indices into the training set; None: every row, in order
    x: jax.Array
    y: jax.Array
    mask: jax.Array


class Method(abc.ABC):
    """Base of all training methods. Subclasses are final (none overrides another).

    A method's state is a dict. Entries named in `row_state_keys` hold one row per
    training sequence (leading axis N) and are sharded over the mesh's data axis;
    everything else is replicated (see `seqpar.sharding`).
    """

    row_state_keys: tuple[str, ...] = ()

    def __init__(self, cfg: MethodConfig, model: Model, task: Task):
        self.cfg = cfg
        self.model = model
        self.task = task
        self.tx = cfg.optimizer.build()

    @abc.abstractmethod
    def init(self, key: jax.Array, params: Params, train: Dataset) -> State:
        """Training state from the shared initial parameters."""

    @abc.abstractmethod
    def train_step(self, state: State, train: Dataset, batch: Batch, step: jax.Array, key: jax.Array) -> tuple[State, Metrics]:
        """One optimizer step. Pure; must return scalar metrics with at least `objective`."""

    @abc.abstractmethod
    def params(self, state: State) -> Params:
        """The cell and readout parameters a rollout runs with."""

    @abc.abstractmethod
    def eval_metrics(self, state: State, train: Dataset, rollout_train_states: jax.Array, rollout_train_loss: jax.Array) -> Metrics:
        """Method-specific metrics over the whole training set (at least `objective`)."""

    @abc.abstractmethod
    def sequential_depth(self, length: int, metrics: Mapping[str, float]) -> float:
        """Dependent steps on the critical path of one training step on sequences of `length`: a
        hardware-independent cost (README, "Sequential depth"). One unit is one cell-sized
        operation that must wait for the one before: a step of a sequential scan, a level of an
        associative scan (`scan_depth`), or one pass that treats every position at once. The
        loss, readout and optimizer update, the same for every method, are not counted.
        `metrics`: the step's training metrics at a log point (host floats; empty when there is
        none), for a method whose depth depends on the run, such as its Newton iterations."""

    def rollout_reset(self, state: State) -> jax.Array | None:
        """States `(T, state_dim)` the rollout evaluator resets to before every step, for a method
        that trains a model without memory (`memoryless`); None, the default: a true recurrence
        from the fixed initial state."""
        return None

    def state_table_bytes(self, state: State) -> int:
        """Bytes of per-transition trainable state (the embedding table), 0 if none."""
        return 0

    def extra_activation_bytes(self, batch: int, length: int, sequences: int) -> int:
        """Bytes a training step or an evaluation holds beyond the memory estimate's rule of
        thumb (`seqpar.train.memory`), such as Jacobian buffers of T·S² floats per sequence;
        0 for methods whose buffers scale like the states. `sequences`: the training set's size."""
        return 0


def scan_depth(length: int) -> int:
    """Levels of a work-efficient associative scan over `length` steps: an up-sweep and a
    down-sweep of ceil(log2 length) levels each (0 for a single step)."""
    return 2 * math.ceil(math.log2(length)) if length > 1 else 0


class MethodConfig(Config):
    label: str | None = Field(None, description="name shown in tables (default: the type)", min_length=1, max_length=100)
    optimizer: OptimizerSpec = Field(description="optimizer of the model parameters")
    # Fields `seqpar run --resume RUN_DIR --set methods.N.FIELD=...` may change: how a state is
    # solved, never what is trained, so a checkpoint stays valid across the change.
    resume_settable: ClassVar[tuple[str, ...]] = ()

    @field_validator("label")
    @classmethod
    def _usable_as_a_name(cls, v: str | None) -> str | None:
        # A label names the method in tables, checkpoint folders and exports: it must read as a
        # name there, not as a path, and two labels must not look alike.
        if v is None:
            return v
        if not v.strip():
            raise ValueError("must not be blank")
        if v != v.strip():
            raise ValueError(f"must not begin or end with whitespace (got {v!r})")
        if v in (".", "..") or any(c in v for c in "/\\") or not v.isprintable():
            raise ValueError(f"must be usable as a name: no '/', '\\', control characters, and not '.' or '..' (got {v!r})")
        return v

    @property
    def display_label(self) -> str:
        return self.label or self.type  # type: ignore[attr-defined]

    def build(self, model: Model, task: Task) -> Method:  # pragma: no cover - interface
        raise NotImplementedError


def register_method(name: str, config: type[MethodConfig]) -> type[MethodConfig]:
    """Make `methods: [{type: NAME, ...}]` valid in every spec: `config` is a `MethodConfig` subclass
    declaring `type: Literal[NAME] = NAME`, whose `build(model, task)` returns a `Method` (the
    protocol above; see docs/guide/extending.md). Call it from a plugin module so every process
    of a run registers it too."""
    return METHODS.register_class(name, config, MethodConfig)

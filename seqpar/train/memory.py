"""Memory estimate of a spec, checked against the machine before anything is allocated.

The estimate adds what one run holds at its peak: the training, validation and test sets, the
model parameters and, for the method with the largest footprint, its state (the
parameters' optimizer state, the embedding table and the table's optimizer state)
twice (a step's new state and the gradients exist beside the old one), plus the
activations of a training step or of a full-data evaluation, whichever is larger,
plus what a method reports beyond that rule (`Method.extra_activation_bytes`: the
Newton methods' Jacobian buffers, T·S² floats per sequence).
Shapes come from `jax.eval_shape` over the real constructors (task data, model,
`method.init`), so nothing is allocated and every registered task, cell and method
is covered without knowing its internals. Activations are a rule of thumb
calibrated against XLA's `memory_analysis()` of the compiled step and evaluation
(an overestimate by 1-3x on the shipped cells): the check exists to refuse specs
that cannot possibly fit, and `--force` overrides it.

The limit is the free memory of the first accelerator when there is one, else the
host's available memory (the smaller of `MemAvailable` and the cgroup limit).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from seqpar.spec import Spec

# Floats live per (sequence, step) during a step / an evaluation, per state unit; see `estimate`.
STEP_FLOATS_PER_UNIT = 20
EVAL_FLOATS_PER_UNIT = 8
RUNTIME_OVERHEAD = 256 * 2**20  # XLA runtime, compiled executables, Python: measured ~200-300 MiB on CPU


class MemoryLimitError(Exception):
    """The spec's estimated memory exceeds the machine's; the CLI exits 2 (`--force` skips the check)."""


@dataclass(frozen=True)
class Estimate:
    data: int
    params: int
    state: int  # the largest method state (optimizer states, table...)
    state_label: str
    activations: int
    overhead: int = RUNTIME_OVERHEAD
    method_buffers: int = 0  # beyond the activations' rule of thumb, e.g. Jacobians (`Method.extra_activation_bytes`)
    tables: tuple[tuple[str, int], ...] = ()  # (method label, bytes of its per-transition table) for methods that keep one

    @property
    def total(self) -> int:
        return self.data + self.params + 2 * self.state + self.activations + self.method_buffers + self.overhead

    def describe(self) -> str:
        parts = [
            ("data", self.data),
            (f"{self.state_label} state x2", 2 * self.state),
            ("activations", self.activations),
            ("method buffers", self.method_buffers),
            ("params", self.params),
        ]
        return ", ".join(f"{name} {fmt_bytes(b)}" for name, b in parts if b)


def fmt_bytes(n: float) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    for unit in units:
        if abs(n) < 1024 or unit == units[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}" if abs(n) < 1e4 else f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _nbytes(tree) -> int:
    return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def estimate(spec: Spec) -> Estimate:
    """Peak bytes of running `spec`, from abstract shapes only (nothing is allocated)."""
    from seqpar.model.model import abstract_model

    task = spec.task.build()
    key = jax.random.key(0)
    train = jax.eval_shape(lambda k: task.make_data(k, spec.task.train_sequences), key)
    test = jax.eval_shape(lambda k: task.make_data(k, spec.task.test_sequences, split="test"), key)
    val = jax.eval_shape(lambda k: task.make_data(k, spec.task.val_sequences, split="val"), key)
    model, params = abstract_model(spec.model.cell, task.input_dim, spec.model.hidden, task.output_dim, **spec.model.structure())
    length = train.x.shape[1]
    state, label, extra, tables = 0, spec.methods[0].display_label, 0, []
    for cfg in spec.methods:
        method = cfg.build(model, task)
        shapes = jax.eval_shape(method.init, key, params, train)
        if _nbytes(shapes) > state:
            state, label = _nbytes(shapes), cfg.display_label
        if method.state_table_bytes(shapes):
            tables.append((cfg.display_label, method.state_table_bytes(shapes)))
        # Buffers the rule of thumb below does not scale with (a Newton method's Jacobians), as the method counts them.
        extra = max(extra, method.extra_activation_bytes(spec.train.batch_size, length, spec.task.train_sequences))
    # One "unit" is a float per (sequence, step, state or output feature): a step holds a few
    # per row of its minibatch (states, gates, their gradients, gathered table rows and their
    # optimizer state), an evaluation a few per row of the three data sets (rollout states,
    # logits, the parallel method's residuals over the whole table). The state is the joint
    # one, so a stack of L layers counts L layers' states.
    units = model.state_dim + task.output_dim
    step = STEP_FLOATS_PER_UNIT * spec.train.batch_size * length * units
    evaluation = EVAL_FLOATS_PER_UNIT * (spec.task.train_sequences + spec.task.val_sequences + spec.task.test_sequences) * length * units
    activations = 4 * max(step, evaluation)
    return Estimate(_nbytes((train, val, test)), _nbytes(params), state, label, activations, method_buffers=extra, tables=tuple(tables))


# ----------------------------------------------------------------------------- the limit


def available() -> tuple[int, str] | None:
    """(bytes, where) of the memory a run may use, or None when it cannot be told."""
    dev = jax.devices()[0]
    if dev.platform != "cpu":
        stats = dev.memory_stats() or {}
        if "bytes_limit" in stats:
            return stats["bytes_limit"] - stats.get("bytes_in_use", 0), f"free on {dev.device_kind} ({dev})"
    found = [x for x in (_meminfo_available(), _cgroup_available()) if x is not None]
    return min(found, key=lambda x: x[0]) if found else None


def _meminfo_available() -> tuple[int, str] | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "available host memory"
    except (OSError, ValueError, IndexError):
        pass
    try:  # other POSIX systems: free pages only, a lower bound
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free host memory"
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_available() -> tuple[int, str] | None:
    """Limit minus usage of this process's cgroup (containers, batch schedulers)."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),  # v1
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:  # "max" or a huge number: no limit
            return int(limit) - usage, "left under the container's memory limit"
    return None


def shape_key(spec: Spec) -> str:
    """What the estimate depends on: the spec without its seed, name and float settings.

    Shapes are made of integers (sizes, counts, intervals) and choices; a float (a learning
    rate, a weight) never sizes an array. A sweep over 1000 learning rates and seeds is then one
    estimate, not 1000 (each costs ~40 ms of abstract evaluation)."""

    def mask(v):
        if isinstance(v, dict):
            return {k: mask(x) for k, x in v.items()}
        if isinstance(v, list):
            return [mask(x) for x in v]
        return "<float>" if isinstance(v, float) else v

    return json.dumps(mask(spec.model_dump(mode="json", exclude={"seed", "name"})), sort_keys=True)


def check(spec: Spec, force: bool = False) -> str:
    """One line 'estimated X of Y'; raises `MemoryLimitError` when the estimate exceeds the limit.

    An estimate that cannot be made (sizes beyond what JAX can shape, a method whose `init`
    fails on abstract shapes) refuses the spec too: the run would fail the same way, later.
    `force` turns both refusals into a returned line."""
    try:
        est = estimate(spec)
    except Exception as e:
        reason = f"cannot estimate the memory of this spec ({type(e).__name__}: {e})"
        if force:
            return f"memory: {reason} (--force)"
        raise MemoryLimitError(
            f"{reason}; its sizes (task.train_sequences, task.length, model.hidden, model.layers, train.batch_size) may be too large "
            "to allocate. Pass --force to try anyway"
        ) from None
    limit = available()
    tables = "; tables: " + ", ".join(f"{label} {fmt_bytes(b)}" for label, b in est.tables) if est.tables else ""
    if limit is None:
        return f"memory: estimated {fmt_bytes(est.total)} (the machine's limit is unknown){tables}"
    free, where = limit
    line = f"memory: estimated {fmt_bytes(est.total)} of {fmt_bytes(free)} {where}{tables}"
    if est.total > free and not force:
        raise MemoryLimitError(
            f"estimated memory {fmt_bytes(est.total)} ({est.describe()}) exceeds the {fmt_bytes(free)} {where}; "
            "reduce task.train_sequences, task.length, model.hidden, model.layers or train.batch_size, or pass --force to run anyway"
        )
    return line + (" (over the limit: --force)" if est.total > free else "")


def check_all(specs: list[Spec], force: bool = False) -> list[str]:
    """`check` every distinct shape among `specs` (`shape_key`: sweep points differing only by
    seed or a learning rate share one estimate); returns the first warning to show (a check
    that `--force` overrode), if any."""
    seen, notes = set(), []
    for s in specs:
        shape = shape_key(s)
        if shape not in seen:
            seen.add(shape)
            notes.append(check(s, force))
    return [n for n in notes if n.endswith("(--force)") or n.endswith("(over the limit: --force)")][:1]

"""Is `seqpar run`'s loop as fast as the step it runs? `run_method` against a bare jitted loop.

Both drive the same step function (`seqpar.train.loop.make_train_step`, state
donated) over the same experiment; the bare loop is nothing but a Python
for-loop around `jax.jit`. A ratio above 1 is what the training loop adds per
step: host syncs, logging, argument conversion, re-tracing.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np

from seqpar.bench.grid import Grid, point_spec, spec_dict
from seqpar.bench.measure import run_step
from seqpar.spec import Spec, validate_spec
from seqpar.train.loop import build_experiment, init_state, run_method


def loop_overhead(
    spec: Spec, cfg, cell: str, length: int, batch: int, hidden: int, steps: int = 200, chunk: int = 50, rounds: int = 3
) -> dict[str, Any]:
    """`seqpar run`'s steady-state ms/step vs a bare loop over the same compiled step.

    Both time chunks of `chunk` steps with one sync per chunk; `run_method` logs
    (and fetches metrics) once per chunk, as a user's `log_every` would. The
    two alternate `rounds` times so drift on a shared machine hits both."""
    raw = spec_dict(point_spec(spec, cell, length, batch, hidden, batch))
    raw["train"].update(steps=steps, eval_every=steps, log_every=chunk, target_loss=None)
    pspec = validate_spec(raw, source="bench overhead point")
    exp = build_experiment(pspec)
    bare = _BareLoop(exp, cfg)
    run_ms, bare_ms = [], []
    for _ in range(rounds):
        record = run_method(exp, cfg, log=lambda line: None)
        run_ms.append(record["step_time_ms"])
        bare_ms.append(bare.ms_per_step(steps, chunk))
    return {
        "method": cfg.display_label,
        "cell": cell,
        "length": length,
        "batch": batch,
        "steps": steps,
        "chunk": chunk,
        "run_step_ms": run_ms,
        "bare_step_ms": bare_ms,
        "ratio": float(np.median(run_ms)) / float(np.median(bare_ms)),
    }


class _BareLoop:
    """The step `run_method` runs (same function, same donation), under a plain `jax.jit`
    driven by nothing but a Python for-loop: the floor for the training loop's overhead."""

    def __init__(self, exp, cfg):
        method = cfg.build(exp.model, exp.task)
        with jax.set_mesh(exp.mesh):
            self.state = init_state(exp, method)
            self.step_fn = run_step(exp, method, self.state)
            self.train, self.mesh = exp.train, exp.mesh
            self.state, metrics = self.step_fn(self.state, self.train, np.int32(0))  # traces and compiles
        jax.block_until_ready(metrics)

    def ms_per_step(self, steps: int, chunk: int) -> float:
        with jax.set_mesh(self.mesh):  # as `run_method` runs its loop (and the jit cache keys on it)
            return self._ms_per_step(steps, chunk)

    def _ms_per_step(self, steps: int, chunk: int) -> float:
        per_chunk = []
        for c in range(max(1, steps // chunk)):
            t0 = time.perf_counter()
            for i in range(c * chunk, (c + 1) * chunk):
                self.state, metrics = self.step_fn(self.state, self.train, np.int32(i))
            jax.block_until_ready(metrics)
            per_chunk.append(1e3 * (time.perf_counter() - t0) / chunk)
        return float(np.median(per_chunk))


def overhead_points(spec: Spec, grid: Grid) -> list[tuple[Any, str, int, int]]:
    """Where to compare `run` with a bare loop: every method at the smallest point (where
    host overhead weighs most) and at the longest length (the headline point)."""
    cell, b = (grid.cells or (spec.model.model_dump()["cell"],))[0], min(grid.batches)
    lengths = sorted({min(grid.lengths), max(grid.lengths)})
    return [(cfg, cell, length, b) for length in lengths for cfg in spec.methods]

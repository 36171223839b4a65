"""The training loop shared by every method: one jitted step, evals, timing, records.

The loop never branches on a method's name. Per method it
  1. builds the method from its config and inits its state from the shared
     initial parameters (every method starts from the same weights and sees the
     same minibatch order),
  2. compiles one step ahead of time (compile time measured apart; the compiled
     executable cannot retrace) with the old state donated,
  3. runs steps without touching the host, except at log/eval points, where it
     blocks, fetches the step's metrics and runs the shared rollout evaluator.

Timing: `wall_s` is cumulative *training* time (compile and evaluation excluded),
measured per chunk between log/eval points; `step_time_ms` is the median over
chunks of chunk time / steps in chunk, so no per-step host sync is needed.
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from seqpar.methods.base import Batch, Method, MethodConfig
from seqpar.model import Model, Params, build_model
from seqpar.rollout import evaluate
from seqpar.spec import Spec
from seqpar.tasks.base import Dataset, Task


@dataclass(frozen=True)
class Experiment:
    """Everything shared by the methods of one spec: task, data, model, initial weights, keys."""

    spec: Spec
    task: Task
    model: Model
    init_params: Params
    train: Dataset
    test: Dataset
    train_key: jax.Array


def build_experiment(spec: Spec) -> Experiment:
    # Split the root key once by purpose, so changing one use never shifts another.
    data_key, init_key, train_key = jax.random.split(jax.random.key(spec.seed), 3)
    task = spec.task.build()
    train = task.make_data(jax.random.fold_in(data_key, 0), spec.task.train_sequences)
    test = task.make_data(jax.random.fold_in(data_key, 1), spec.task.test_sequences)
    model, params = build_model(spec.model.cell, task.input_dim, spec.model.hidden, task.output_dim, init_key)
    return Experiment(spec, task, model, params, train, test, train_key)


def batch_indices(key: jax.Array, step: jax.Array, n: int, b: int) -> jax.Array:
    """Rows of minibatch `step`: epochs of a fresh permutation, the remainder dropped."""
    if b == n:
        return jnp.arange(n)
    per_epoch = n // b
    perm = jax.random.permutation(jax.random.fold_in(key, step // per_epoch), n)
    return jax.lax.dynamic_slice(perm, ((step % per_epoch) * b,), (b,))


def make_train_step(method: Method, train_key: jax.Array, n: int, b: int) -> Callable:
    sample_key, step_key = jax.random.split(train_key)

    def train_step(state, data: Dataset, step):
        idx = batch_indices(sample_key, step, n, b)
        batch = Batch(idx, data.x[idx], data.y[idx], data.mask[idx])
        return method.train_step(state, data, batch, step, jax.random.fold_in(step_key, step))

    return train_step


def make_eval(method: Method, model: Model, task: Task) -> Callable:
    def eval_fn(state, train: Dataset, test: Dataset):
        params = method.params(state)
        tr = evaluate(model, task, params, train)
        te = evaluate(model, task, params, test)
        out = {
            "rollout_loss_train": tr.loss,
            "rollout_acc_train": tr.acc,
            "rollout_loss_test": te.loss,
            "rollout_acc_test": te.acc,
        }
        out.update(method.eval_metrics(state, train, tr.states, tr.loss))
        return out

    return eval_fn


class Progress(Protocol):
    def start(self, label: str, total: int) -> None: ...
    def update(self, label: str, step: int, record: dict[str, Any]) -> None: ...
    def finish(self, label: str, status: str) -> None: ...


class NullProgress:
    def start(self, label, total):
        pass

    def update(self, label, step, record):
        pass

    def finish(self, label, status):
        pass


def compiled_memory_mb(compiled) -> float | None:
    """Device memory of one compiled step (arguments + outputs + temporaries - donated aliases)."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        return None
    if m is None:
        return None
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    return total / 2**20


def process_peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _host(tree) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(tree).items()}


def run_method(
    exp: Experiment,
    cfg: MethodConfig,
    log: Callable[[dict[str, Any]], None],
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train one method and return its run record (see README, "Run record").

    Ctrl-C stops training after the current step and returns the record with
    status `interrupted` (the caller decides to stop the remaining methods)."""
    spec, progress = exp.spec, progress or NullProgress()
    label = cfg.display_label
    method = cfg.build(exp.model, exp.task)
    n, b = spec.task.train_sequences, spec.train.batch_size
    # A private copy of the shared initial weights: the step donates its input state.
    params0 = jax.tree.map(jnp.copy, exp.init_params)
    state = method.init(jax.random.fold_in(exp.train_key, 2), params0, exp.train)

    step_fn = jax.jit(make_train_step(method, exp.train_key, n, b), donate_argnums=0)
    eval_fn = jax.jit(make_eval(method, exp.model, exp.task))
    t0 = time.perf_counter()
    compiled = step_fn.lower(state, exp.train, jnp.int32(0)).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled_eval = eval_fn.lower(state, exp.train, exp.test).compile()
    eval_compile_s = time.perf_counter() - t0

    record: dict[str, Any] = {
        "method": cfg.type,  # type: ignore[attr-defined]
        "label": label,
        "status": "running",
        "steps_done": 0,
        "final": None,
        "baseline_loss": exp.task.baseline_loss,
        "steps_to_target": None,
        "seconds_to_target": None,
        "step_time_ms": None,
        "steps_per_s": None,
        "compile_s": compile_s,
        "eval_compile_s": eval_compile_s,
        "peak_memory_mb": compiled_memory_mb(compiled),
        "state_table_bytes": method.state_table_bytes(state),
        "wall_s": 0.0,
        "error": None,
    }
    steps, eval_every, log_every = spec.train.steps, spec.train.eval_every, spec.log_every
    target = spec.train.target_loss
    chunk_ms: list[float] = []
    wall = 0.0
    last_eval: dict[str, float] = {}

    def do_eval(step: int) -> dict[str, float]:
        ev = _host(compiled_eval(state, exp.train, exp.test))
        if target is not None and record["steps_to_target"] is None and ev["rollout_loss_test"] <= target:
            record["steps_to_target"], record["seconds_to_target"] = step, wall
        return ev

    progress.start(label, steps)
    last_eval = do_eval(0)
    log({"method": label, "step": 0, "wall_s": 0.0, **last_eval})
    chunk_start, chunk_steps = time.perf_counter(), 0
    try:
        for step in range(steps):
            state, metrics = compiled(state, exp.train, jnp.int32(step))
            chunk_steps += 1
            done = step + 1
            is_eval = done % eval_every == 0 or done == steps
            if not (is_eval or done % log_every == 0):
                continue
            train_metrics = _host(metrics)  # blocks: the chunk's work is finished
            elapsed = time.perf_counter() - chunk_start
            wall += elapsed
            chunk_ms.append(1e3 * elapsed / chunk_steps)
            record["steps_done"], record["wall_s"] = done, wall
            line = {"method": label, "step": done, "wall_s": wall, **{f"train_{k}": v for k, v in train_metrics.items()}}
            diverged = not all(math.isfinite(v) for v in train_metrics.values() if v is not None)
            if is_eval or diverged:
                last_eval = do_eval(done)
                line.update(last_eval)
            log(line)
            progress.update(label, done, line)
            if diverged:
                record["status"] = "diverged"
                record["error"] = f"non-finite training metric at step {done}"
                break
            chunk_start, chunk_steps = time.perf_counter(), 0
        else:
            record["status"] = "completed"
    except KeyboardInterrupt:
        record["status"] = "interrupted"
    finally:
        if chunk_ms:
            record["step_time_ms"] = float(np.median(chunk_ms))
            record["steps_per_s"] = 1e3 / record["step_time_ms"]
        record["final"] = {
            "rollout_loss_test": last_eval.get("rollout_loss_test"),
            "rollout_loss_train": last_eval.get("rollout_loss_train"),
            "rollout_acc_test": last_eval.get("rollout_acc_test"),
            "objective": last_eval.get("objective"),
        }
        record["diagnostics"] = last_eval
        record["process_peak_rss_mb"] = process_peak_rss_mb()
        progress.finish(label, record["status"])
    return record

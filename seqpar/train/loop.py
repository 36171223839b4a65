"""The training loop shared by every method: one jitted step, evals, timing, records.

The loop never branches on a method's name. Per method it
  1. builds the method from its config and inits its state from the shared
     initial parameters (every method starts from the same weights and sees the
     same minibatch order),
  2. compiles one step ahead of time (compile time measured apart; the compiled
     executable cannot retrace) with the old state donated,
  3. runs steps without touching the host, except at log/eval points, where it
     blocks, fetches the step's metrics and runs the shared rollout evaluator.

Timing: `wall_s` is cumulative *training* time (compile, evaluation and
checkpoint writing excluded), measured per chunk between log/eval points;
`step_time_ms` is the median over chunks of chunk time / steps in chunk, so no
per-step host sync is needed. `train.max_seconds` stops a method at a budget of that
clock (`seqpar.train.budget`: a few extra sync points, predicted from the step time).
Each run also records `sequential_depth`, the method's own count of dependent steps on
the critical path of one training step (`Method.sequential_depth`), a cost that no
machine changes.

Reliability: the jitted step also tracks, on device, the first step whose metrics
are non-finite, so divergence is named exactly while the host still looks only at
log/eval/checkpoint points. The runner's stop flag (SIGINT/SIGTERM) is polled after
each step; checkpoints (`seqpar.train.checkpoint`) hold the method state and the
`LoopState`, and every key is `fold_in(key, step)`, so resuming from one continues
the identical computation.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from seqpar import sharding
from seqpar.methods.base import Batch, Method, MethodConfig
from seqpar.model.lle import burn_in, mean_and_stderr, model_lle_estimates
from seqpar.model.model import Model, Params, build_model
from seqpar.model.rollout import evaluate
from seqpar.spec import Spec
from seqpar.tasks.base import Dataset, Task
from seqpar.train.budget import Budget

if TYPE_CHECKING:
    from seqpar.train.checkpoint import Checkpoint, MethodCheckpoints


@dataclass(frozen=True)
class Experiment:
    """Everything shared by the methods of one spec: task, data, model, initial weights, keys, mesh.

    Data are sharded by rows over the mesh's data axis and parameters replicated
    (`seqpar.sharding`); on one device that is plain placement on it.
    """

    spec: Spec
    task: Task
    model: Model
    init_params: Params
    train: Dataset
    val: Dataset  # validation: target_loss, steps to target and every choice are made on it
    test: Dataset  # test: reported only
    train_key: jax.Array
    mesh: Mesh
    strata: int  # minibatch sampling strata (train.sample_strata, default the device count)


def build_experiment(spec: Spec) -> Experiment:
    # Split the root key once by purpose, so changing one use never shifts another.
    data_key, init_key, train_key = jax.random.split(jax.random.key(spec.seed), 3)
    tr = spec.train
    t = spec.task
    mesh, strata = sharding.resolve(tr.devices, tr.sample_strata, t.train_sequences, (t.val_sequences, t.test_sequences), tr.batch_size)
    task = t.build()
    # Each split has its own fold of the data key (the validation split came last: fold 2), so
    # the size of one split never changes another's data.
    train = task.make_data(jax.random.fold_in(data_key, 0), t.train_sequences)
    test = task.make_data(jax.random.fold_in(data_key, 1), t.test_sequences, split="test")
    val = task.make_data(jax.random.fold_in(data_key, 2), t.val_sequences, split="val")
    model, params = build_model(spec.model.cell, task.input_dim, spec.model.hidden, task.output_dim, init_key, **spec.model.structure())
    return Experiment(
        spec=spec,
        task=task,
        model=model,
        init_params=sharding.replicate(params, mesh),
        train=sharding.shard_rows(train, mesh),
        val=sharding.shard_rows(val, mesh),
        test=sharding.shard_rows(test, mesh),
        train_key=train_key,
        mesh=mesh,
        strata=strata,
    )


def make_train_step(method: Method, train_key: jax.Array, n: int, b: int, strata: int = 1) -> Callable:
    """`(state, data, step) -> (state, metrics)`: draw minibatch `step` (stratified, see
    `seqpar.sharding`), gather its rows where they live, and take the method's step."""
    sample_key, step_key = jax.random.split(train_key)

    def train_step(state, data: Dataset, step):
        # A full batch is every row in order: idx None lets the row gathers/scatters vanish
        # (XLA does not drop a gather with indices 0..N-1 by itself).
        idx = None if b == n else sharding.stratified_batch_indices(sample_key, step, n, b, strata)
        batch = Batch(idx, *sharding.take_rows((data.x, data.y, data.mask), idx))
        return method.train_step(state, data, batch, step, jax.random.fold_in(step_key, step))

    return train_step


def init_state(exp: Experiment, method: Method) -> Any:
    """The method's initial state, created directly in its shardings (row entries split over the
    data axis, the rest replicated), so a table never has to fit on one device."""
    key = _init_key(exp)
    # A private copy of the shared initial weights: jit may forward an unchanged input as its
    # output, and the step donates (deletes) the state it is given.
    params = jax.tree.map(jnp.copy, exp.init_params)
    shape = jax.eval_shape(method.init, key, params, exp.train)
    out = sharding.state_shardings(shape, method.row_state_keys, exp.mesh)
    with jax.set_mesh(exp.mesh):
        return jax.jit(method.init, out_shardings=out)(key, params, exp.train)


def abstract_state(exp: Experiment, cfg: MethodConfig) -> Any:
    """The shapes and dtypes of a method's initial state (`jax.eval_shape`: nothing allocated)."""
    method = cfg.build(exp.model, exp.task)
    return jax.eval_shape(method.init, _init_key(exp), exp.init_params, exp.train)


def _init_key(exp: Experiment) -> jax.Array:
    return jax.random.fold_in(exp.train_key, 2)


def watch_divergence(train_step: Callable) -> Callable:
    """`(state, first_bad, data, step) -> (state, first_bad, metrics)`: `first_bad` is the first
    step (1-based, as logged) whose metrics were not all finite, -1 while none was. It stays on
    device, so the loop learns of a divergence at its next sync point without syncing per step."""

    def step_fn(state, first_bad, data: Dataset, step):
        state, metrics = train_step(state, data, step)
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(metrics)]))
        first_bad = jnp.where((first_bad < 0) & ~finite, step + 1, first_bad).astype(jnp.int32)
        return state, first_bad, metrics

    return step_fn


# The fold of the run's training key that draws the LLE's tangent vectors (the key's split draws the
# minibatches and step keys, fold 2 the method's init): the same vectors at every evaluation.
LLE_KEY_FOLD = 3


def make_eval(
    method: Method, model: Model, task: Task, lle_key: jax.Array | None = None, lle_sequences: int = 0, lle_burn_in: int | None = None
) -> Callable:
    def eval_fn(state, train: Dataset, val: Dataset, test: Dataset):
        params, reset = method.params(state), method.rollout_reset(state)
        splits = (("train", train), ("val", val), ("test", test))
        res = {split: evaluate(model, task, params, data, reset) for split, data in splits}
        out = {f"rollout_{m}_{split}": getattr(r, m) for split, r in res.items() for m in ("loss", "acc")}
        tr = res["train"]
        out.update(method.eval_metrics(state, train, tr.states, tr.loss))
        out["gap"] = out["rollout_loss_test"] - out["objective"]  # held-out rollout loss minus training objective
        # Predictability of the trained recurrence along validation rollouts (`seqpar.model.lle`);
        # a model whose rollout cuts the recurrence (`reset`) has none.
        if lle_key is not None and lle_sequences > 0 and reset is None:
            x = val.x[:lle_sequences]
            estimates = model_lle_estimates(model, params, x, lle_key, discard=burn_in(x.shape[1], lle_burn_in))
            out["lle"], out["lle_stderr"] = mean_and_stderr(estimates)
        return out

    return eval_fn


class Progress(Protocol):
    """What a display sees of a method's training: `update` at each log/eval point with its
    line, `advance` between them with the step count alone (no metric leaves the device
    for it), `resume` when a method continues from a checkpoint."""

    def start(self, label: str, total: int) -> None: ...
    def update(self, label: str, step: int, record: dict[str, Any]) -> None: ...
    def advance(self, label: str, step: int) -> None: ...
    def resume(self, label: str, step: int) -> None: ...
    def finish(self, label: str, status: str) -> None: ...


class NullProgress:
    def start(self, label, total):
        pass

    def update(self, label, step, record):
        pass

    def advance(self, label, step):
        pass

    def resume(self, label, step):
        pass

    def finish(self, label, status):
        pass


ADVANCE_EVERY_S = 0.1  # how often the step count goes to the display between log points (Rich redraws at 10 Hz)

# The training clock. A module attribute, so a test can replace it with a clock it controls.
clock = time.perf_counter


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


@dataclass
class LoopState:
    """What the loop accumulates besides the method state; checkpointed with it, so a resumed
    run reports what an uninterrupted one would (timing aside)."""

    steps_done: int = 0
    wall_s: float = 0.0
    chunk_ms: list[float] = field(default_factory=list)
    last_eval: dict[str, float] = field(default_factory=dict)
    last_train: dict[str, float] = field(default_factory=dict)  # training metrics (gradient norms...) of the last eval step
    steps_to_target: int | None = None
    seconds_to_target: float | None = None
    checkpoint_s: float = 0.0  # time spent writing checkpoints (not in wall_s)
    depth_sum: float = 0.0  # Method.sequential_depth summed over log points (its mean is recorded)
    depth_points: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoopState:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


def target_loss(spec: Spec, task: Task) -> float | None:
    """`train.target_loss`, or `train.target_fraction` of the task's baseline formula (None without one)."""
    frac, baseline = spec.train.target_fraction, task.baseline_loss
    if spec.train.target_loss is not None or frac is None:
        return spec.train.target_loss
    return frac * baseline if baseline is not None else None


def run_method(
    exp: Experiment,
    cfg: MethodConfig,
    log: Callable[[dict[str, Any]], None],
    progress: Progress | None = None,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    checkpoints: MethodCheckpoints | None = None,
    resume_from: Checkpoint | None = None,
) -> dict[str, Any]:
    """Train one method and return its run record (see README, "Run record").

    `should_stop()` is polled after every step (the runner sets it on SIGINT/SIGTERM): the
    loop then saves a checkpoint of the finished step (if `checkpoints` is given) and returns
    with status `interrupted`. With `checkpoints`, a checkpoint is also saved every
    `train.checkpoint_every` steps; `resume_from` continues from one. A non-finite training
    metric ends the run with status `diverged` at the next log/eval/checkpoint point, naming
    the first non-finite step."""
    # Under the mesh, row gathers and scatters trace to per-device local shard_maps.
    with jax.set_mesh(exp.mesh):
        return _run_method(exp, cfg, log, progress, should_stop, checkpoints, resume_from)


def _run_method(exp, cfg, log, progress, should_stop, checkpoints, resume_from) -> dict[str, Any]:
    spec, progress = exp.spec, progress or NullProgress()
    label = cfg.display_label
    method = cfg.build(exp.model, exp.task)
    n, b = spec.task.train_sequences, spec.train.batch_size
    state = init_state(exp, method)  # a fresh buffer: the step donates its input state
    if resume_from is not None:
        assert checkpoints is not None, "resume_from needs the checkpoints it came from"
        state = checkpoints.restore(resume_from, template=state)
    no_divergence = jnp.int32(-1)

    # The state keeps the shardings it was created with, step after step (no resharding, no retrace).
    replicated = NamedSharding(exp.mesh, P())
    out_shardings = (jax.tree.map(lambda a: a.sharding, state), replicated, replicated)
    step_fn = jax.jit(
        watch_divergence(make_train_step(method, exp.train_key, n, b, exp.strata)), donate_argnums=0, out_shardings=out_shardings
    )
    lle_key = jax.random.fold_in(exp.train_key, LLE_KEY_FOLD)
    eval_fn = jax.jit(make_eval(method, exp.model, exp.task, lle_key, spec.train.lle_sequences, spec.train.lle_burn_in))
    t0 = clock()
    compiled = step_fn.lower(state, no_divergence, exp.train, jnp.int32(0)).compile()
    compile_s = clock() - t0
    t0 = clock()
    compiled_eval = eval_fn.lower(state, exp.train, exp.val, exp.test).compile()
    eval_compile_s = clock() - t0

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
        # Steps of each LLE rollout not counted (records without it counted every step).
        "lle_burn_in": burn_in(int(exp.val.x.shape[1]), spec.train.lle_burn_in) if spec.train.lle_sequences else None,
        "mesh": dict(exp.mesh.shape),
        "sample_strata": exp.strata,
        # Per device: the row-sharded part of the state (table, its optimizer state, buffers).
        "row_state_bytes_per_device": sharding.per_device_bytes({k: state[k] for k in method.row_state_keys if k in state}),
        "wall_s": 0.0,
        "stop_reason": None,
        "error": None,
    }
    steps, eval_every, log_every = spec.train.steps, spec.train.eval_every, spec.log_every
    ckpt_every = spec.train.checkpoint_every if checkpoints is not None else None
    target = target_loss(spec, exp.task)
    record["target_loss"] = target
    loop = LoopState.from_dict(resume_from.loop) if resume_from is not None else LoopState()
    budget = Budget(spec.train.max_seconds)
    length = int(exp.train.x.shape[1])

    def do_eval(step: int) -> dict[str, float]:
        ev = _host(compiled_eval(state, exp.train, exp.val, exp.test))
        # The target is judged on validation; the test split is only ever reported.
        if target is not None and loop.steps_to_target is None and ev["rollout_loss_val"] <= target:
            loop.steps_to_target, loop.seconds_to_target = step, loop.wall_s
        return ev

    progress.start(label, steps)
    if resume_from is None:
        loop.last_eval = do_eval(0)
        log({"method": label, "step": 0, "wall_s": 0.0, **loop.last_eval})
    else:
        progress.resume(label, loop.steps_done)
        progress.update(label, loop.steps_done, {"method": label, "step": loop.steps_done, **loop.last_eval})
    bad = no_divergence
    shown_at = time.perf_counter()  # the display's own clock, not the training clock
    try:
        if should_stop():  # stopped while compiling: nothing new to save
            record["status"] = "interrupted"
        budget.start(loop.steps_done)
        chunk_start, chunk_steps = clock(), 0
        for step in range(loop.steps_done, steps if record["status"] == "running" else 0):
            state, bad, metrics = compiled(state, bad, exp.train, np.int32(step))  # a NumPy scalar: no device op per step
            chunk_steps += 1
            done = step + 1
            is_eval = done % eval_every == 0 or done == steps
            is_log = done % log_every == 0
            is_ckpt = ckpt_every is not None and done % ckpt_every == 0 and done < steps
            stop = should_stop() and done < steps  # a stop after the last step changes nothing
            if not (is_eval or is_log or is_ckpt or stop or budget.due(done)):
                now = time.perf_counter()
                if now - shown_at >= ADVANCE_EVERY_S:  # the step count only: nothing is fetched from the device
                    progress.advance(label, done)
                    shown_at = now
                continue
            first_bad = int(bad)  # blocks: the chunk's work is finished
            elapsed = clock() - chunk_start
            loop.wall_s += elapsed
            loop.chunk_ms.append(1e3 * elapsed / chunk_steps)
            loop.steps_done = done
            diverged = first_bad >= 0
            out_of_time = done < steps and budget.spent(done, loop.wall_s, elapsed / chunk_steps)
            is_eval = is_eval or out_of_time  # a budget stop ends, like the last step, with an evaluation
            if is_eval or is_log or diverged:
                train_metrics = _host(metrics)
                loop.depth_sum += method.sequential_depth(length, train_metrics)
                loop.depth_points += 1
                line = {"method": label, "step": done, "wall_s": loop.wall_s, **{f"train_{k}": v for k, v in train_metrics.items()}}
                if is_eval or diverged:
                    loop.last_eval = do_eval(done)
                    line.update(loop.last_eval)
                    loop.last_train = {k: v for k, v in line.items() if k.startswith("train_")}
                log(line)
                progress.update(label, done, line)
            else:  # a checkpoint or stop point: the count moves on, the numbers stay those of the last log point
                progress.advance(label, done)
            if diverged:
                record["status"] = "diverged"
                record["diverged_at_step"] = first_bad
                record["error"] = f"non-finite training metric at step {first_bad}"
                break
            if checkpoints is not None and (is_ckpt or stop):
                t0 = time.perf_counter()
                checkpoints.save(done, state, loop.to_dict())
                loop.checkpoint_s += time.perf_counter() - t0
            if out_of_time:
                record["status"], record["stop_reason"] = "completed", "max_seconds"
                break
            if stop:
                record["status"] = "interrupted"
                break
            chunk_start, chunk_steps = clock(), 0
        else:
            if record["status"] == "running":
                record["status"], record["stop_reason"] = "completed", "steps"
    except KeyboardInterrupt:  # no signal handler installed (not the main thread): no checkpoint either
        record["status"] = "interrupted"
    finally:
        record["steps_done"], record["wall_s"] = loop.steps_done, loop.wall_s
        record["steps_to_target"], record["seconds_to_target"] = loop.steps_to_target, loop.seconds_to_target
        record["checkpoint_s"] = loop.checkpoint_s
        record["stop_reason"] = record["stop_reason"] or record["status"]
        # The mean over log points (Newton's iterations vary); the method's static count without any.
        record["sequential_depth"] = loop.depth_sum / loop.depth_points if loop.depth_points else method.sequential_depth(length, {})
        if loop.chunk_ms:
            record["step_time_ms"] = float(np.median(loop.chunk_ms))
            record["steps_per_s"] = 1e3 / record["step_time_ms"]
        last_eval = loop.last_eval
        record["final"] = {
            "rollout_loss_test": last_eval.get("rollout_loss_test"),
            "rollout_loss_val": last_eval.get("rollout_loss_val"),
            "rollout_loss_train": last_eval.get("rollout_loss_train"),
            "rollout_acc_test": last_eval.get("rollout_acc_test"),
            "rollout_acc_val": last_eval.get("rollout_acc_val"),
            "objective": last_eval.get("objective"),
            "lle": last_eval.get("lle"),
        }
        record["diagnostics"] = {**loop.last_train, **last_eval}
        record["process_peak_rss_mb"] = process_peak_rss_mb()
        progress.finish(label, record["status"])
    return record

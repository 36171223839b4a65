"""Run every method of a spec into one run directory, and resume a run that was cut short.

`run_experiment(spec, run_dir, progress, resume=..., stop=...)` writes `spec.yaml`,
`metrics.jsonl` and `summary.json`; the summary is rewritten atomically after every
method, so nothing finished is ever lost.

- A method that diverges is a result (`diverged`); one that raises is `failed` with
  its error recorded; either way the next method runs.
- The first SIGINT/SIGTERM stops the current method after its step, saves a
  checkpoint and the summary with status `interrupted` (the CLI exits 130); a line on
  stderr says so and what a second one does. A second signal ends the process at once,
  saying so; every file is replaced atomically, so what is on disk stays valid.
- `resume=True` continues a run directory: methods that completed or diverged are
  kept as they are, every other method restarts from its newest checkpoint (or from
  step 0), and `metrics.jsonl` is cut back to match. A missing or empty directory
  simply starts; a finished one returns its summary untouched.

Sweeps resume per point: call `run_experiment(point_spec, point_dir, progress,
resume=True, stop=stop)` for every point, with one `stop_on_signals()` around the
whole sweep; `run_status(point_dir)` tells which points are already final.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from seqpar.methods.base import MethodConfig
from seqpar.methods.memoryless import BASELINE_LABEL, MemorylessConfig
from seqpar.records.identity import DataIdentity, IdentityError, check_data, data_identity
from seqpar.records.layout import METRICS, SCHEMA_VERSION, SPEC, SUMMARY, checkpoint_dir
from seqpar.records.reader import BadRecord
from seqpar.records.reader import read_summary as read_record
from seqpar.records.writer import (
    MetricsLog,
    OutsideRunDir,
    RunDirBusy,
    WriteError,
    atomic_write_json,
    atomic_write_text,
    environment,
    lock_run_dir,
    rewrite_metrics,
    within_run,
)
from seqpar.spec import Spec, SpecError, load_spec, spec_to_yaml
from seqpar.tasks.base import Task
from seqpar.track import Tracker, Trackers, Tracking, open_trackers
from seqpar.train.checkpoint import Checkpoint, CheckpointError, MethodCheckpoints, prng_fingerprint
from seqpar.train.loop import NullProgress, Progress, abstract_state, build_experiment, run_method

DONE = ("completed", "diverged")  # final results: kept as they are on resume
_SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s is not None)


class ResumeError(Exception):
    """A run directory that cannot be resumed; the message is one line (the CLI exits 2)."""


# ----------------------------------------------------------------------------- signals


class StopRequest:
    """Set by the first SIGINT/SIGTERM; the training loop polls it after every step."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self) -> bool:
        return self.signum is not None

    def request(self, signum: int = getattr(signal, "SIGINT", 2)) -> None:
        self.signum = signum


FIRST_INTERRUPT = (
    "\ninterrupt: stopping after the current step and saving a checkpoint "
    "(press Ctrl-C again to quit at once, without saving the steps since the last checkpoint)\n"
)
SECOND_INTERRUPT = (
    "\nsecond interrupt: quitting now without saving; the files on disk stay valid, "
    "and seqpar run --resume RUN_DIR continues from the last checkpoint\n"
)


@contextlib.contextmanager
def stop_on_signals(stop: StopRequest | None = None) -> Iterator[StopRequest]:
    """Turn SIGINT/SIGTERM into a stop request for the duration of the block.

    The first signal asks the loop to stop after its step (and says so on stderr); the
    second ends the process at once (exit 128 + signal), saying so. It must end it even
    inside a long XLA call, where a Python handler only runs after the call returns: the
    signal's wakeup byte (`signal.set_wakeup_fd`) reaches a watcher thread at once.

    Given a `stop` (a caller such as a sweep already installed the handlers), it is used
    as is. Outside the main thread Python cannot install handlers; Ctrl-C then arrives as
    KeyboardInterrupt, which the loop also treats as a stop.
    """
    if stop is not None:
        yield stop
        return
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    quit_once = threading.Lock()

    def quit_now(signum: int) -> None:
        if quit_once.acquire(blocking=False):
            with contextlib.suppress(OSError):
                os.write(2, SECOND_INTERRUPT.encode())
            os._exit(128 + signum)  # what is on disk was written atomically; nothing to flush

    def on_signal(signum, frame):
        if stop():
            quit_now(signum)
        stop.request(signum)
        with contextlib.suppress(OSError):
            os.write(2, FIRST_INTERRUPT.encode())

    reader, writer = socket.socketpair()
    reader.settimeout(0.5)
    writer.setblocking(False)
    done = threading.Event()

    def watch() -> None:  # sees every signal the moment it arrives, whatever the main thread is doing
        seen = 0
        while not done.is_set():
            try:
                data = reader.recv(64)
            except TimeoutError:
                continue
            except OSError:
                return
            for signum in data:
                if signum in _SIGNALS:
                    seen += 1
                    if seen >= 2:
                        quit_now(signum)

    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    for s in _SIGNALS:
        signal.signal(s, on_signal)
    previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    watcher = threading.Thread(target=watch, name="seqpar-signals", daemon=True)
    watcher.start()
    try:
        yield stop
    finally:
        signal.set_wakeup_fd(previous_fd)
        for s, handler in previous.items():
            signal.signal(s, handler)
        done.set()
        with contextlib.suppress(OSError):
            writer.send(b"\0")  # wakes the watcher now, not at its next timeout
        watcher.join(timeout=1)
        reader.close()
        writer.close()


# ----------------------------------------------------------------------------- run directories


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The run's summary, None if there is none yet; a garbled one is a `ResumeError`."""
    try:
        return read_record(run_dir, missing_ok=True)
    except BadRecord as e:
        raise ResumeError(f"{Path(run_dir) / SUMMARY}: {e}") from None


def run_status(run_dir: Path) -> str | None:
    """`completed`, `interrupted`, `failed`, `running` (crashed or still going) or None (not started)."""
    try:
        summary = read_summary(run_dir)
    except ResumeError:
        return None
    return summary.get("status") if summary else None


def load_run_spec(run_dir: Path) -> Spec:
    """The resolved spec a run directory was started with (what `--resume` continues).

    Read from `spec.yaml`; it must dump to exactly the spec recorded in `summary.json`.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise ResumeError(f"--resume {run_dir}: no such run directory")
    if not run_dir.is_dir():
        raise ResumeError(f"--resume {run_dir}: is a file, expected a run directory")
    if not (run_dir / SPEC).is_file():
        raise ResumeError(f"--resume {run_dir}: not a seqpar run directory (no {SPEC})")
    summary = read_summary(run_dir)
    try:
        spec = load_spec(run_dir / SPEC)
    except SpecError as e:
        raise ResumeError(f"--resume {run_dir}: its {SPEC} is not a valid spec: {e}") from None
    recorded = summary["spec"] if summary and "spec" in summary else yaml.safe_load((run_dir / SPEC).read_text())
    if spec.model_dump(mode="json") != recorded:
        raise ResumeError(
            f"--resume {run_dir}: the spec as this seqpar version reads it differs from the recorded one "
            "(edited, or defaults changed); start a new run"
        )
    return spec


def spec_hash(spec: Spec) -> str:
    """The spec's identity in checkpoints: everything but the methods' `resume_settable` fields
    (how states are solved), so a resume that changes those continues from the same checkpoints."""
    dump = spec.model_dump(mode="json")
    for m, cfg in zip(dump["methods"], spec.methods, strict=True):
        for key in cfg.resume_settable:
            m.pop(key, None)
    return hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()


def amend_spec(spec: Spec, overrides: Sequence[str], source: str) -> Spec:
    """`spec` with `--set methods.N.FIELD=VALUE` applied, for a resume; only `resume_settable` fields.

    SpecError (one line) for any other key or a value the method refuses."""
    from seqpar.spec import parse_override, set_dotted, validate_spec

    raw = spec.model_dump(mode="json")
    for item in overrides:
        key, value = parse_override(item)
        parts = key.split(".")
        ok = len(parts) == 3 and parts[0] == "methods" and parts[1].isdigit() and int(parts[1]) < len(spec.methods)
        settable = spec.methods[int(parts[1])].resume_settable if ok else ()
        if not ok or parts[2] not in settable:
            allowed = ", ".join(f"methods.{i}.{k}" for i, m in enumerate(spec.methods) for k in m.resume_settable) or "none in this run"
            raise SpecError(
                f"--set {item}: a resume continues the same training; it may change only how states are solved ({allowed})",
                key=key,
                source=source,
            )
        set_dotted(raw, key, value, source=f"--set {item}")
    return validate_spec(raw, source=source)


def data_of(spec: Spec) -> DataIdentity:
    """The data files the spec's task reads, with their sha256 (`seqpar.records.identity`); ResumeError if unreadable."""
    try:
        return data_identity({f"task.{k}": p for k, p in spec.task.data_files().items()})
    except IdentityError as e:
        raise ResumeError(str(e)) from None


def in_order(runs: list[dict[str, Any]], labels: list[str]) -> list[dict[str, Any]]:
    """Method records in the order of the run's methods."""
    return sorted(runs, key=lambda r: labels.index(r["label"]) if r.get("label") in labels else len(labels))


def overall_status(runs: list[dict[str, Any]], n_methods: int, error: str | None = None) -> str:
    """`interrupted` while any method is unfinished (resume continues it), else `failed` if one failed."""
    statuses = {r["status"] for r in runs}
    if error:
        return "failed"
    if "interrupted" in statuses or len(runs) < n_methods:
        return "interrupted"
    return "failed" if "failed" in statuses else "completed"


# ----------------------------------------------------------------------------- the trained baseline


def method_configs(spec: Spec, task: Task) -> list[MethodConfig]:
    """The methods a run trains: the spec's, preceded by the trained memoryless baseline
    (`memoryless`, label `baseline_trained`, the first method's optimizer) when
    `train.baseline_trained` is on; `auto` turns it on for a task without a baseline formula,
    where it is the only baseline there is. It runs first so every later record can carry it."""
    on = spec.train.baseline_trained
    if on == "auto":
        on = task.baseline_loss is None
    if not on:
        return list(spec.methods)
    baseline = MemorylessConfig(label=BASELINE_LABEL, optimizer=spec.methods[0].optimizer)
    return [baseline, *spec.methods]


def add_trained_baseline(record: dict[str, Any], trained: dict[str, Any] | None) -> None:
    """Put the trained baseline's test rollout loss beside the formula in a method's record; where
    the task has no formula it becomes the record's `baseline_loss` (`baseline_source: trained`)."""
    value = (trained or {}).get("rollout_loss_test")
    if value is None:
        return
    record["baseline_trained"] = value
    if record.get("baseline_loss") is None:
        record["baseline_loss"], record["baseline_source"] = value, "trained"


# ----------------------------------------------------------------------------- running


def run_experiment(
    spec: Spec,
    run_dir: Path,
    progress: Progress | None = None,
    *,
    resume: bool = False,
    stop: StopRequest | None = None,
    tensorboard: bool = False,
    tracking: Tracking | None = None,
    trackers: Sequence[Tracker] = (),
) -> dict[str, Any]:
    """Train all methods of `spec` into `run_dir` (continuing what is there if `resume`); returns the summary.

    Metric lines go to metrics.jsonl, to the live backends `tracking` names (TensorBoard,
    MLflow; `tensorboard=True` is short for TensorBoard), and to any other `trackers` (a
    study's pruning callback), in that order."""
    run_dir = Path(run_dir)
    tracking = tracking or Tracking()
    if tensorboard and not tracking.tensorboard:
        tracking = Tracking(tensorboard=True, mlflow=tracking.mlflow, mlflow_uri=tracking.mlflow_uri)
    run_dir.mkdir(parents=True, exist_ok=True)
    with lock_run_dir(run_dir), stop_on_signals(stop) as stop_requested:
        return _run(spec, run_dir, progress or NullProgress(), resume, stop_requested, tracking, trackers)


def _run(
    spec: Spec, run_dir: Path, progress: Progress, resume: bool, stop: StopRequest, tracking: Tracking, trackers: Sequence[Tracker]
) -> dict[str, Any]:
    if not resume and any((run_dir / f).exists() for f in (SPEC, SUMMARY)):
        # Two runs raced for one empty --out: the first holds (or held) the lock and wrote first.
        raise RunDirBusy(f"{run_dir}: another seqpar run has started in this directory; runs are never overwritten")
    prior = read_summary(run_dir) if resume else None
    amended: dict[str, dict[str, Any]] = {}  # label -> the solver settings this resume changes
    if resume and (run_dir / SPEC).exists():
        recorded = load_run_spec(run_dir)
        if recorded.model_dump() != spec.model_dump():
            if spec_hash(recorded) != spec_hash(spec):
                raise ResumeError(f"{run_dir}: its {SPEC} differs from the spec given; a run resumes with the spec it started with")
            for old, new in zip(recorded.methods, spec.methods, strict=True):
                changed = {k: getattr(new, k) for k in new.resume_settable if getattr(old, k) != getattr(new, k)}
                if changed:
                    amended[new.display_label] = changed
    data = data_of(spec)
    if prior is not None:  # the same bytes as when it started, or no resume
        try:
            check_data((prior.get("task") or {}).get("data"), data, str(run_dir))
        except IdentityError as e:
            raise ResumeError(str(e)) from None
    if prior is not None and prior.get("status") == "completed" and not amended:
        return prior  # every method finished: nothing left to do

    # Everything that can refuse the resume happens before anything is written.
    exp, error = None, None
    try:
        exp = build_experiment(spec)
    except Exception as e:  # e.g. a task that cannot make its data: recorded, not raised
        error, tb = f"{type(e).__name__}: {e}", traceback.format_exc()
    configs = method_configs(spec, exp.task) if exp is not None else list(spec.methods)
    with_baseline = bool(configs) and configs[0].display_label == BASELINE_LABEL
    labels = [m.display_label for m in configs]
    # A method whose solver settings this resume changes runs again from its last checkpoint, even if it diverged.
    kept = {
        r["label"]: r
        for r in (prior or {}).get("runs", [])
        if r.get("status") in DONE and r.get("label") in labels and r.get("label") not in amended
    }
    checkpoints: dict[int, MethodCheckpoints] = {}
    resume_from: dict[int, Checkpoint | None] = {}
    if exp is not None:
        identity = {"spec_sha256": spec_hash(spec), "prng": prng_fingerprint(exp.train_key)}
        for i, label in enumerate(labels):
            if label in kept:
                continue
            checkpoints[i] = MethodCheckpoints(checkpoint_dir(run_dir, i, label), {**identity, "method": label}, run_dir=run_dir)
            try:
                checkpoints[i].check()  # a symlink out of the run: refused before anything is written or deleted
                # The state's shapes, so a checkpoint that could not be restored into it is passed over.
                resume_from[i] = checkpoints[i].latest(template=abstract_state(exp, configs[i])) if resume else None
            except (CheckpointError, OutsideRunDir) as e:
                raise ResumeError(str(e)) from None

    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if prior is None:
        if not (run_dir / SPEC).exists():
            atomic_write_text(run_dir / SPEC, spec_to_yaml(spec))
        summary: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "name": spec.name,
            "seed": spec.seed,
            "status": "running",
            "started": now,
            "spec": spec.model_dump(mode="json"),
            "env": environment(),
            "task": {"data": data} if data else {},
            "runs": [],
        }
    else:
        summary = {k: v for k, v in prior.items() if k not in ("finished", "error", "traceback")}
        # The methods kept stay listed in every summary written from here on: a kill at any moment
        # must not leave a summary that forgot them (their checkpoints are gone).
        summary.update(status="running", runs=[kept[x] for x in labels if x in kept])
        summary["task"] = {**(prior.get("task") or {}), **({"data": data} if data else {})}
        skipped = [w for c in checkpoints.values() for w in c.skipped]
        entry = {"at": now, "from_step": {labels[i]: (c.step if c else 0) for i, c in resume_from.items()}, "env": environment()}
        if amended:
            entry["set"] = amended
            summary["spec"] = spec.model_dump(mode="json")
            atomic_write_text(run_dir / SPEC, spec_to_yaml(spec))  # the run continues with these settings from here
        summary["resumes"] = [*prior.get("resumes", []), {**entry, **({"warnings": skipped} if skipped else {})}]
    if resume:
        # Lines past a method's checkpoint (or of a method restarting from 0) would be logged twice.
        def keep_line(rec: dict[str, Any]) -> bool:
            if rec.get("method") in kept:
                return True
            i = labels.index(rec["method"]) if rec.get("method") in labels else None
            c = resume_from.get(i) if i is not None else None
            return c is not None and isinstance(rec.get("step"), int) and rec["step"] <= c.step

        rewrite_metrics(run_dir, keep_line)
    if error is not None:
        summary.update(status="failed", error=error, traceback=tb, finished=now, runs=[kept[x] for x in labels if x in kept])
        atomic_write_json(run_dir / SUMMARY, summary)
        return summary
    assert exp is not None  # built, or `error` says why not
    atomic_write_json(run_dir / SUMMARY, summary)

    # A resumed method logs again from the step after its checkpoint (from 0 without one).
    resumed = {labels[i]: (c.step if c else 0) for i, c in resume_from.items()} if resume else {}
    metrics = MetricsLog(within_run(run_dir, run_dir / METRICS))
    log = Trackers(metrics, *open_trackers(tracking, run_dir, labels, summary, resumed), *trackers)
    try:
        summary["task"] = {
            **({"data": data} if data else {}),
            "baseline_loss": exp.task.baseline_loss,
            "baseline_formula": exp.task.baseline_formula,
            "loss": exp.task.loss_name,
        }
        # How Newton gets the cell's Jacobian: written out (every built-in cell) or by autodiff (a user's function cell).
        summary["model"] = {"jacobian": exp.model.cell_jacobian_kind, "jacobian_structure": exp.model.cell_jacobian_structure}
        stopping = False
        trained: dict[str, Any] | None = None  # the trained baseline's final numbers, once it finished

        def baseline_done(record: dict[str, Any]) -> dict[str, Any] | None:
            summary["task"]["baseline_trained"] = {s: (record.get("final") or {}).get(f"rollout_loss_{s}") for s in ("val", "test")}
            return record.get("final")

        for i, cfg in enumerate(configs):
            if cfg.display_label in kept:  # listed from the first summary on, also after a stop
                if with_baseline and i == 0:
                    trained = baseline_done(kept[cfg.display_label])
                continue
            stopping = stopping or stop()
            if stopping:
                continue
            write_error = None
            try:
                record = run_method(
                    exp, cfg, log.write, progress, should_stop=stop, checkpoints=checkpoints[i], resume_from=resume_from.get(i)
                )
            except Exception as e:  # one method's crash must not lose the others
                write_error = e if isinstance(e, WriteError) else None
                record = {
                    "method": cfg.type,  # type: ignore[attr-defined]
                    "label": cfg.display_label,
                    "status": "failed",
                    "error": str(e) if write_error else f"{type(e).__name__}: {e}",
                    "traceback": traceback.format_exc(),
                }
            if with_baseline and i == 0 and record["status"] in DONE:
                trained = baseline_done(record)
            add_trained_baseline(record, trained)
            summary["runs"] = in_order([*summary["runs"], record], labels)
            log.finish(cfg.display_label, record["status"])
            if write_error is not None:
                # The disk, not the method: the next method could not write either. The summary
                # says so below (in `finally`), if the disk still takes it.
                summary["error"] = str(write_error)
                raise write_error
            atomic_write_json(run_dir / SUMMARY, summary)
            # After the summary holds the result: they only serve resuming. A diverged method keeps
            # them: the last one before the non-finite step is where a retry with other solver settings starts.
            if record["status"] == "completed":
                with contextlib.suppress(OSError):  # leftovers are harmless; losing the next method is not
                    checkpoints[i].clear()
            stopping = stopping or record["status"] == "interrupted"
    except WriteError as e:
        summary.setdefault("error", str(e))
        raise
    finally:
        log.close()
        summary["status"] = overall_status(summary["runs"], len(configs), summary.get("error"))
        summary["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        try:
            atomic_write_json(run_dir / SUMMARY, summary)
        except WriteError:
            if summary.get("error") is None:
                raise
            # Already failing for a write: that error (naming its file) is the one to report.
    return summary


def outcome(summary: dict[str, Any], run_dir: Path, *, with_tracebacks: bool = False) -> tuple[int, list[tuple[str, str]]]:
    """The exit-code policy: 0 when every method completed or diverged (divergence is a result),
    1 when one failed, 130 when interrupted; with the lines that say why, as (kind, text) where
    kind is failed, diverged, interrupted, note or traceback and the text follows the kind's word."""
    lines: list[tuple[str, str]] = []
    for r in summary["runs"]:
        if r["status"] == "failed":
            lines.append(("failed", f" {r['label']}: {r.get('error')} (traceback in {Path(run_dir) / SUMMARY})"))
            if with_tracebacks and r.get("traceback"):
                lines.append(("traceback", r["traceback"]))
        elif r["status"] == "diverged":
            lines.append(("diverged", f" {r['label']}: {r.get('error')}"))
        fell_back = (r.get("diagnostics") or {}).get("train_newton_fallback_total") or 0
        if fell_back:  # a gradient known to be wrong was never applied: say what was applied instead
            lines.append(
                ("note", f" {r['label']}: {fell_back:.0f} step(s) fell back to BPTT's gradient (a Newton solve stopped unconverged)")
            )
    if summary.get("error"):
        lines.append(("failed", f": {summary['error']}"))
        if with_tracebacks and summary.get("traceback"):
            lines.append(("traceback", summary["traceback"]))
    if summary["status"] == "interrupted":
        lines.append(("interrupted", f": results so far are saved; continue with: seqpar run --resume {run_dir}"))
        return 130, lines
    return (1 if summary["status"] == "failed" else 0), lines

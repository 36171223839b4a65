"""Executing a sweep plan (`seqpar.sweep.plan`): each point run into its own record, an index kept.

A sweep directory holds
    sweep.yaml       the spec as run: the base after --set plus `sweep:` as flat axes;
                     `seqpar run sweep.yaml` reproduces exactly these points
    sweep.json       the index, rewritten atomically before and after every point:
                     {"schema_version", "kind": "sweep", "name", "source", "status",
                      "started", "finished", "axes": {key: [values]}, "pinned": {key: value},
                      "points": [{"index", "dir", "values": {key: value}, "status",
                                  "methods": {label: status}, "error", "traceback"}]}
                     point status: pending, running, completed, failed, interrupted
    000_task.length=64_seed=0/  one ordinary run record per point (spec.yaml, metrics.jsonl, summary.json)
A point that fails (an exception) or whose methods diverge is recorded with its
status and the sweep goes on; Ctrl-C stops after the current point's record is saved.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from seqpar.analysis.report import progress_bars
from seqpar.records.layout import PLOTS, SCHEMA_VERSION, SUMMARY, SWEEP_INDEX, SWEEP_SPEC
from seqpar.records.writer import atomic_write_json, atomic_write_text
from seqpar.spec import Spec
from seqpar.sweep.plan import Plan, Point, short_value

# ----------------------------------------------------------------------------- running


def run_sweep(
    plan: Plan,
    sweep_dir: Path,
    run_point: Callable[[Spec, Path], dict[str, Any]],
    on_point: Callable[[Point, str, dict[str, Any] | None], None] = lambda p, phase, summary: None,
    after_point: Callable[[Point, Path], None] = lambda p, d: None,
    *,
    resume: bool = False,
) -> dict[str, Any]:
    """Run every point into `sweep_dir/<point.dirname>`, keeping `sweep.json` current; returns the index.

    `run_point(spec, dir)` is `seqpar.train.runner.run_experiment` with its progress bound;
    `on_point(point, "start"|"end", summary)` drives a progress display; `after_point`
    exports (plots, TensorBoard) and must not raise. With `resume`, points the existing
    index records as completed are kept as they are and the others run again (bind
    `run_experiment(..., resume=True)` into `run_point` to continue their checkpoints).
    """
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(sweep_dir / SWEEP_SPEC, yaml.safe_dump(plan.as_run(), sort_keys=False))
    index: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": "sweep",
        "name": plan.name,
        "source": plan.source,
        "status": "running",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "axes": plan.axes,
        "pinned": plan.pinned,
        "points": [{"index": p.index, "dir": p.dirname, "values": p.values, "status": "pending"} for p in plan.points],
    }
    done: dict[str, dict[str, Any]] = {}
    if resume and (sweep_dir / SWEEP_INDEX).exists():
        previous = json.loads((sweep_dir / SWEEP_INDEX).read_text())
        index["started"] = previous.get("started", index["started"])
        done = {e["dir"]: e for e in previous.get("points", []) if e.get("status") == "completed"}
        index["points"] = [done[e["dir"]] if e["dir"] in done else e for e in index["points"]]
    atomic_write_json(sweep_dir / SWEEP_INDEX, index)
    interrupted = False
    try:
        for point, entry in zip(plan.points, index["points"], strict=True):
            if point.dirname in done:
                on_point(point, "start", None)
                on_point(point, "end", {"status": "completed"})
                continue
            point_dir = sweep_dir / point.dirname
            point_dir.mkdir(parents=True, exist_ok=True)
            entry["status"] = "running"
            atomic_write_json(sweep_dir / SWEEP_INDEX, index)
            on_point(point, "start", None)
            summary = None
            try:
                summary = run_point(point.spec, point_dir)
                entry["status"] = summary["status"]
                entry["methods"] = {r["label"]: r["status"] for r in summary.get("runs", [])}
            except KeyboardInterrupt:
                entry["status"] = "interrupted"
                interrupted = True
            except Exception as e:  # noqa: BLE001 - one point's crash must not stop the sweep
                entry["status"] = "failed"
                entry["error"] = f"{type(e).__name__}: {e}"
                entry["traceback"] = traceback.format_exc()
            atomic_write_json(sweep_dir / SWEEP_INDEX, index)
            on_point(point, "end", summary)
            if not interrupted:
                after_point(point, point_dir)
            if interrupted or entry["status"] == "interrupted":
                interrupted = True
                break
    except KeyboardInterrupt:  # between points (e.g. during an export)
        interrupted = True
    finally:
        statuses = [e["status"] for e in index["points"]]
        index["status"] = "interrupted" if interrupted or "pending" in statuses else "failed" if "failed" in statuses else "completed"
        index["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        atomic_write_json(sweep_dir / SWEEP_INDEX, index)
    return index


def status_counts(index: dict[str, Any]) -> dict[str, int]:
    """Point statuses, with `diverged` counted for points any of whose methods diverged."""
    counts: dict[str, int] = {}
    for e in index["points"]:
        s = e["status"]
        if s == "completed" and "diverged" in (e.get("methods") or {}).values():
            s = "diverged"
        counts[s] = counts.get(s, 0) + 1
    return counts


# ----------------------------------------------------------------------------- display


def plan_table(plan: Plan) -> Table:
    """The dry-run listing: one row per point with its swept values and methods."""
    s0 = plan.points[0].spec
    caption = [f"{s0.train.steps} steps per method; nothing was run (--dry-run)"]
    caption += [f"{k} pinned to {short_value(v)} by --set" for k, v in plan.pinned.items()]
    t = Table(title=f"{plan.name}: {len(plan.points)} point(s) x {len(s0.methods)} method(s)", caption="; ".join(caption))
    t.add_column("#", justify="right")
    for key in plan.axes:
        t.add_column(key, justify="right")
    t.add_column("methods")
    t.add_column("run directory")
    for p in plan.points:
        t.add_row(
            str(p.index),
            *(short_value(p.values[k]) for k in plan.axes),
            ", ".join(m.display_label for m in p.spec.methods),
            p.dirname if plan.is_sweep else "(one run record)",
        )
    return t


class SweepProgress:
    """A bar over points plus one bar per method that restarts at every point (implements train.Progress)."""

    def __init__(self, console: Console, total_points: int):
        self._p = progress_bars(console)
        self._points = self._p.add_task("points", total=total_points, info="")
        self._tasks: dict[str, Any] = {}
        self._val: dict[str, float] = {}
        self._failed = 0

    def __enter__(self):
        self._p.__enter__()
        return self

    def __exit__(self, *exc):
        return self._p.__exit__(*exc)

    def on_point(self, point: Point, phase: str, summary: dict[str, Any] | None) -> None:
        if phase == "start":
            self._val.clear()
            self._p.update(self._points, info=f"[cyan]{point.describe}")
            return
        status = summary["status"] if summary else "failed"
        self._failed += status != "completed"
        note = f"  [red]{self._failed} not completed" if self._failed else ""
        self._p.update(self._points, advance=1, info=f"last: {point.describe} [{status}]{note}")

    # seqpar.train.loop.Progress
    def start(self, label, total):
        if label in self._tasks:
            self._p.reset(self._tasks[label], total=total, info="compiled, starting")
        else:
            self._tasks[label] = self._p.add_task(label, total=total, info="compiled, starting")

    def update(self, label, step, record):
        if record.get("rollout_loss_val") is not None:
            self._val[label] = record["rollout_loss_val"]
        val = self._val.get(label)
        obj = record.get("train_objective")
        info = f"objective {obj:.4f}  " if isinstance(obj, float) else ""
        info += f"rollout(val) {val:.4f}" if val is not None else ""
        self._p.update(self._tasks[label], completed=step, info=info)

    def finish(self, label, status):
        if status != "completed" and label in self._tasks:
            self._p.update(self._tasks[label], info=f"[red]{status}")


# ----------------------------------------------------------------------------- the `seqpar run` driver


def export_run(path: Path, *, plot: bool, tensorboard: bool) -> tuple[list[str], list[str]]:
    """Plots into `path/plots` and/or TensorBoard event files; never raises: (notes, warnings).

    An export failing must not cost a finished run its exit status or its record."""
    notes: list[str] = []
    warnings: list[str] = []
    if tensorboard:
        from seqpar.analysis.tensorboard import export_run as tb_export

        dirs = [path] if (path / SUMMARY).exists() else [p.parent for p in sorted(path.glob(f"*/{SUMMARY}"))]
        for d in dirs:
            try:
                tb_export(d)
            except Exception as e:  # noqa: BLE001 - reported, never fatal
                warnings.append(f"TensorBoard export of {d} failed: {type(e).__name__}: {e}")
        notes.append(f"TensorBoard: tensorboard --logdir {path}")
    if plot:
        from seqpar.analysis.plots import plot_records

        try:
            files, plot_warnings = plot_records([path], path / PLOTS)
            warnings += plot_warnings
            notes.append(f"plots: {', '.join(str(f) for f in files)}" if files else "plots: nothing to plot")
        except Exception as e:  # noqa: BLE001 - reported, never fatal
            warnings.append(f"plotting {path} failed: {type(e).__name__}: {e}")
    return notes, warnings


def execute_sweep(
    plan: Plan,
    sweep_dir: Path,
    console: Console,
    err_console: Console,
    *,
    quiet: bool,
    plot: bool,
    tensorboard: bool,
    resume: bool = False,
) -> int:
    """Run a sweep with progress, print its comparison table; returns the exit code (0, 1 failed, 130 interrupted).

    With `resume`, completed points are kept and every other point continues from its own
    checkpoints (`seqpar run --resume SWEEP_DIR`). One signal handler spans the whole sweep,
    so Ctrl-C between points stops it as cleanly as Ctrl-C inside one.
    """
    from seqpar.analysis.compare import compare, rich_table
    from seqpar.train.loop import NullProgress
    from seqpar.train.runner import run_experiment, stop_on_signals

    s0 = plan.points[0].spec
    console.print(
        f"[bold]{plan.name}[/]: sweep of {len(plan.points)} point(s) over {', '.join(plan.axes) or '(no axes)'}, "
        f"{len(s0.methods)} method(s), {s0.train.steps} steps each -> {sweep_dir}"
    )
    for key, value in plan.pinned.items():
        console.print(f"  {key} pinned to {short_value(value)} by --set (not swept)")

    def after(point: Point, point_dir: Path) -> None:
        for w in export_run(point_dir, plot=False, tensorboard=tensorboard)[1]:
            err_console.print(f"[yellow]warning:[/] {w}", highlight=False)

    with stop_on_signals() as stop:
        if quiet:
            run_point = lambda spec, d: run_experiment(spec, d, NullProgress(), resume=resume, stop=stop)  # noqa: E731
            index = run_sweep(plan, sweep_dir, run_point, after_point=after, resume=resume)
        else:
            with SweepProgress(console, len(plan.points)) as progress:
                run_point = lambda spec, d: run_experiment(spec, d, progress, resume=resume, stop=stop)  # noqa: E731
                index = run_sweep(plan, sweep_dir, run_point, progress.on_point, after, resume=resume)
    try:
        rows, keys, warnings = compare([sweep_dir])
        console.print(rich_table(rows, keys, title=f"{plan.name}: held-out sequential rollout, mean ± std over seeds"))
        for w in warnings:
            err_console.print(f"[yellow]warning:[/] {w}", highlight=False)
    except Exception as e:  # noqa: BLE001 - e.g. every point failed: the index still says why
        err_console.print(f"[yellow]warning:[/] no comparison table: {e}", highlight=False)
    notes, warnings = export_run(sweep_dir, plot=plot, tensorboard=False)
    for w in warnings:
        err_console.print(f"[yellow]warning:[/] {w}", highlight=False)
    for n in notes + ([f"TensorBoard: tensorboard --logdir {sweep_dir}"] if tensorboard else []):
        console.print(n, highlight=False)
    counts = status_counts(index)
    console.print(f"sweep record: {sweep_dir} ({', '.join(f'{n} {s}' for s, n in counts.items())}; index {SWEEP_INDEX})", highlight=False)
    if index["status"] == "interrupted":
        err_console.print("[yellow]interrupted[/]: finished points are saved")
        return 130
    return 1 if index["status"] == "failed" else 0

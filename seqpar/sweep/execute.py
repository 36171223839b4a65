"""Executing a sweep plan (`seqpar.sweep.plan`): each point run into its own record, by one or many workers.

A sweep directory holds
    sweep.yaml       the spec as run: the base after --set plus `sweep:` as flat axes;
                     `seqpar run sweep.yaml` reproduces exactly these points, and every
                     worker (a local process, a SLURM array task, another host) reads it
    sweep.json       the index, rebuilt from the points' own files after every point:
                     {"schema_version", "kind": "sweep", "name", "source", "status",
                      "started", "finished", "axes": {key: [values]}, "pinned": {key: value},
                      "identity": {"spec": sweep.yaml as started, "data": {key: {path, sha256}}},
                      "points": [{"index", "dir", "values": {key: value}, "status",
                                  "methods": {label: status}, "error", "traceback", "worker"}]}
                     point status: pending, running, completed, failed, interrupted
    000_task.length=64_seed=0/  one ordinary run record per point, plus its `claim.json`
    workers/         logs of worker processes (and submitit's files under workers/slurm)

Workers never coordinate: each walks the points in order and runs those it can claim
(`seqpar.sweep.claim`: an atomic create of the point's claim.json), so a point runs
exactly once however many workers, processes or hosts share the directory. The claim
then records the point's outcome, and the index is rebuilt from claims and records, so
concurrent workers never overwrite each other's news. A point that fails (an exception)
or whose methods diverge is recorded with its status and the sweep goes on; Ctrl-C
stops after the current point's record is saved. A point whose worker died (its claim is
stale) is taken over by a surviving worker, which waits for the others' points for that
reason; a crash is exit 1, not the 130 of an interrupt. `--resume` retakes every point
that is not completed and not live: interrupted, failed, or claimed by a worker that died.
A sweep's identity (its spec as started, the sha256 of every data file its points read)
is kept in the index; resuming or joining it with an edited `sweep.yaml` or changed data
is refused, naming the key or the file (`check_sweep_identity`).
"""

from __future__ import annotations

import json
import secrets
import signal
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from seqpar.analysis.report import advance_bar, progress_bars, progress_info
from seqpar.records.identity import DataIdentity, IdentityError, check_data, data_identity, first_difference
from seqpar.records.layout import CLAIMS_LOCK, PLOTS, SCHEMA_VERSION, SUMMARY, SWEEP_INDEX, SWEEP_SPEC, WORKER_LOGS
from seqpar.records.writer import atomic_write_json, atomic_write_text, to_jsonable, within_run
from seqpar.spec import Spec
from seqpar.sweep.claim import Owner, is_live, read_claim, try_claim
from seqpar.sweep.launch import Launcher, WorkerJob
from seqpar.sweep.plan import Plan, Point, load_plan, short_value

RunPoint = Callable[[Spec, Path], dict[str, Any]]
POLL_S = 2.0  # how often a worker with nothing left to claim looks for a point whose worker died
TAKEOVERS = "takeovers"  # claim field: how many times the point was taken over from a dead worker
MAX_TAKEOVERS = 1  # without --resume; past it the point waits for `seqpar run --resume`


class SweepDirMismatch(Exception):
    """A directory that already holds a different sweep; the message is one line (exit 2)."""


def new_session() -> str:
    """The id shared by the workers of one launching command."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


# ----------------------------------------------------------------------------- the directory and its index


def sweep_identity(plan: Plan) -> dict[str, Any]:
    """What a sweep is, beyond its points' own records: its spec as run and the data files its points
    read (`seqpar.records.identity`, each file hashed once); kept in `sweep.json` from the first index on."""
    data: DataIdentity = {}
    for p in plan.points:
        files = {f"task.{k}": f for k, f in p.spec.task.data_files().items()}
        for key, entry in data_identity(files).items():
            if data.get(key, entry)["path"] != entry["path"]:
                key = f"{key} of point {p.index}"  # a swept file: each point's is checked
            data.setdefault(key, entry)
    return {"spec": json.loads(json.dumps(to_jsonable(plan.as_run()))), "data": data}


def _identity_or_none(plan: Plan) -> dict[str, Any] | None:
    try:
        return sweep_identity(plan)
    except IdentityError:  # a data file gone: its points fail and say why; the index is still written
        return None


def check_sweep_identity(plan: Plan, sweep_dir: Path) -> None:
    """SweepDirMismatch (one line) if the sweep in `sweep_dir` started with another spec or other data."""
    recorded = _read_index(sweep_dir).get("identity")
    if not isinstance(recorded, dict):
        return  # not started, or started before sweeps recorded their identity
    try:
        now = sweep_identity(plan)
        changed = first_difference(recorded.get("spec"), now["spec"])
        if changed is not None:
            raise SweepDirMismatch(
                f"{sweep_dir}: its {SWEEP_SPEC} differs from the spec the sweep started with at {changed}; "
                "a sweep runs every point with one spec: restore it, or start a new sweep"
            )
        check_data(recorded.get("data"), now["data"], str(sweep_dir), "the sweep")
    except IdentityError as e:
        raise SweepDirMismatch(str(e)) from None


def _read_index(sweep_dir: Path) -> dict[str, Any]:
    try:
        index = json.loads((Path(sweep_dir) / SWEEP_INDEX).read_text())
    except (OSError, ValueError):
        return {}
    return index if isinstance(index, dict) else {}


def prepare_sweep_dir(plan: Plan, sweep_dir: Path) -> bool:
    """Write `sweep.yaml`, or check that the one there is this plan's and the sweep's identity is
    unchanged (`check_sweep_identity`); True when joining a sweep already started."""
    sweep_dir = Path(sweep_dir)
    path = sweep_dir / SWEEP_SPEC
    as_run = plan.as_run()
    if path.exists():
        try:
            there = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise SweepDirMismatch(f"{path}: unreadable ({e}); give another --out") from None
        if there != yaml.safe_load(yaml.safe_dump(as_run, sort_keys=False)):
            raise SweepDirMismatch(f"{sweep_dir}: holds another sweep (its {SWEEP_SPEC} differs from this one); give another --out")
        check_sweep_identity(plan, sweep_dir)  # this sweep.yaml, but edited since the sweep started?
        return True
    check_sweep_identity(plan, sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(as_run, sort_keys=False))  # same bytes from every host that races here
    return False


def point_entry(point: Point, sweep_dir: Path, now: float | None = None) -> dict[str, Any]:
    """One point's index entry, from its claim (the outcome its worker recorded) or its run record."""
    d = Path(sweep_dir) / point.dirname
    entry: dict[str, Any] = {"index": point.index, "dir": point.dirname, "values": point.values, "status": "pending"}
    info = read_claim(d)
    if info is not None:
        entry["worker"] = f"{info.get('host')}:{info.get('pid')}"
        if info.get("finished") is not None:
            entry["status"] = info.get("status", "failed")
            entry.update({k: info[k] for k in ("methods", "error", "traceback") if info.get(k) is not None})
        elif is_live(info, now):
            entry["status"] = "running"
        else:
            entry["status"] = "interrupted"
            entry["error"] = f"its worker {entry['worker']} stopped without finishing it (killed?); seqpar run --resume continues it"
        return entry
    try:  # a record from before claims existed, or written by hand
        summary = json.loads((d / SUMMARY).read_text())
        status = summary.get("status", "failed")
        entry["status"] = "interrupted" if status == "running" else status
        entry["methods"] = {r["label"]: r["status"] for r in summary.get("runs", []) if isinstance(r, dict) and "label" in r}
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    return entry


def rebuild_index(plan: Plan, sweep_dir: Path, *, final: bool = False) -> dict[str, Any]:
    """Rebuild `sweep.json` from the points' claims and records and write it atomically.

    Any worker may do this at any time: every writer writes the whole truth as it reads it.
    `final`: the caller has nothing left to run, so points still pending were not run."""
    sweep_dir = Path(sweep_dir)
    previous = _read_index(sweep_dir)
    now = time.time()
    points = [point_entry(p, sweep_dir, now) for p in plan.points]
    statuses = [e["status"] for e in points]
    if "running" in statuses or ("pending" in statuses and not final):
        status = "running"
    elif "pending" in statuses or "interrupted" in statuses:
        status = "interrupted"
    else:
        status = "failed" if "failed" in statuses else "completed"
    index = {
        "schema_version": SCHEMA_VERSION,
        "kind": "sweep",
        "name": plan.name,
        "source": previous.get("source", plan.source),  # the first writer's; workers read sweep.yaml
        "status": status,
        "started": previous.get("started") or _stamp(now),
        "axes": plan.axes,
        "pinned": previous.get("pinned", plan.pinned),
        "identity": previous.get("identity") or _identity_or_none(plan),  # the first writer's: what the sweep started with
        "points": points,
    }
    if status != "running":
        index["finished"] = _stamp(now)
    atomic_write_json(sweep_dir / SWEEP_INDEX, index)
    return index


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


# ----------------------------------------------------------------------------- one worker


def work_points(
    plan: Plan,
    sweep_dir: Path,
    run_point: RunPoint,
    on_point: Callable[[Point, str, dict[str, Any] | None], None] = lambda p, phase, summary: None,
    after_point: Callable[[Point, Path], None] = lambda p, d: None,
    *,
    owner: Owner,
    resume: bool = False,
    since: float | None = None,
    shard: tuple[int, int] | None = None,
    stop: Callable[[], bool] = lambda: False,
    poll_s: float = POLL_S,
) -> bool:
    """Run every point of `plan` this worker can claim; True if it was interrupted.

    Unclaimed points are taken, and so is a point whose worker died in it (its claim is
    unfinished and stale): the survivors of a sweep continue it from its checkpoints, so
    `run_point` must resume what it finds. That happens once per point (`MAX_TAKEOVERS`);
    a point whose workers keep dying is left to `--resume`. While other workers' points are running, this
    worker waits (polling every `poll_s`) to take over any whose worker dies. With
    `resume`, a point that finished without completing (failed, interrupted) is run again
    too, unless this command's own workers (`owner.session`) already ran it or it finished
    after `since` (another resume got there first)."""
    since = time.time() if since is None else since

    def may_take_over(info: dict[str, Any]) -> bool:
        if is_live(info) or info.get("status") == "completed":
            return False
        if info.get("finished") is None:  # its worker died mid-point
            # Once without --resume: a point that killed two workers (out of memory, say) must not kill them all.
            return resume or int(info.get(TAKEOVERS, 0)) < MAX_TAKEOVERS
        return resume and info.get("session") != owner.session and float(info["finished"]) < since

    while True:
        others_running = False
        for point in plan.points:
            if shard is not None and point.index % shard[1] != shard[0]:
                continue
            if stop():
                return True
            point_dir = Path(sweep_dir) / point.dirname
            info = read_claim(point_dir)
            if info is not None and not may_take_over(info):
                others_running |= is_live(info)  # its worker may still die in it
                continue
            note = {TAKEOVERS: int(info.get(TAKEOVERS, 0)) + 1} if info is not None and info.get("finished") is None else None
            claim = try_claim(point_dir, owner, may_take_over, lock_file=Path(sweep_dir) / CLAIMS_LOCK, note=note)
            if claim is None:
                others_running = True
                continue
            if _run_claimed(plan, sweep_dir, point, point_dir, claim, run_point, on_point, after_point):
                return True
        if not others_running:
            return False
        time.sleep(poll_s)


def _run_claimed(plan, sweep_dir, point, point_dir, claim, run_point, on_point, after_point) -> bool:
    """Run one claimed point and record its outcome in the claim; True if it was interrupted."""
    on_point(point, "start", None)
    summary, outcome, interrupted = None, {}, False
    try:
        summary = run_point(point.spec, point_dir)
        status = summary["status"]
        outcome["methods"] = {r["label"]: r["status"] for r in summary.get("runs", [])}
    except KeyboardInterrupt:
        status, interrupted = "interrupted", True
    except Exception as e:  # noqa: BLE001 - one point's crash must not stop the sweep
        status = "failed"
        outcome.update(error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
    claim.finish(status, **outcome)
    rebuild_index(plan, sweep_dir)
    on_point(point, "end", summary or {"status": status})
    if interrupted or status == "interrupted":
        return True
    try:
        after_point(point, point_dir)
    except KeyboardInterrupt:
        return True
    return False


def run_sweep(
    plan: Plan,
    sweep_dir: Path,
    run_point: RunPoint,
    on_point: Callable[[Point, str, dict[str, Any] | None], None] = lambda p, phase, summary: None,
    after_point: Callable[[Point, Path], None] = lambda p, d: None,
    *,
    resume: bool = False,
    owner: Owner | None = None,
    since: float | None = None,
    shard: tuple[int, int] | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Run the points this process can claim into `sweep_dir/<point.dirname>`; returns the rebuilt index.

    `run_point(spec, dir)` is `seqpar.train.runner.run_experiment` with its progress bound;
    `on_point(point, "start"|"end", summary)` drives a progress display; `after_point`
    exports and must not raise. With `resume`, completed points are kept and the others run
    again (bind `run_experiment(..., resume=True)` into `run_point` to continue their checkpoints).
    """
    prepare_sweep_dir(plan, sweep_dir)
    owner = owner or Owner.me(new_session())
    rebuild_index(plan, sweep_dir)
    work_points(plan, sweep_dir, run_point, on_point, after_point, owner=owner, resume=resume, since=since, shard=shard, stop=stop)
    return rebuild_index(plan, sweep_dir, final=True)


SWEEP_WORKER = f"{__name__}:sweep_worker"  # the entry point a launched sweep worker runs


def sweep_worker(job: WorkerJob) -> int:
    """A worker process's whole life (`seqpar.sweep.launch.run_job`): claim and run points until none is left."""
    from seqpar.train.loop import NullProgress
    from seqpar.train.runner import run_experiment, stop_on_signals

    sweep_dir = Path(job.directory)
    plan = load_plan(sweep_dir / SWEEP_SPEC)
    check_sweep_identity(plan, sweep_dir)  # sweep.yaml edited since the sweep started: no point runs with it
    owner = Owner.me(job.session)
    print(f"worker {job.worker + 1}/{job.workers} ({owner.host}:{owner.pid}) on {sweep_dir}", flush=True)

    def on_point(point: Point, phase: str, summary: dict[str, Any] | None) -> None:
        print(f"{phase} {point.dirname}" + (f": {summary['status']}" if summary else ""), flush=True)

    with stop_on_signals() as stop:

        def run_point(spec: Spec, d: Path) -> dict[str, Any]:
            return run_experiment(spec, d, NullProgress(), resume=True, stop=stop, tensorboard=job.tensorboard)

        interrupted = work_points(
            plan, sweep_dir, run_point, on_point, owner=owner, resume=job.resume, since=job.since, shard=job.shard, stop=stop
        )
    index = rebuild_index(plan, sweep_dir, final=True)
    if interrupted:
        return 130
    return 1 if any(e["status"] == "failed" and e.get("worker") == f"{owner.host}:{owner.pid}" for e in index["points"]) else 0


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
        self._p.update(self._tasks[label], completed=step, info=progress_info(record, self._val.get(label)))

    def advance(self, label, step):
        advance_bar(self._p, self._tasks[label], step)

    def resume(self, label, step):
        self._p.console.print(f"{label}: resuming from the checkpoint at step {step}", highlight=False)

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
        from seqpar.analysis.cost_plots import plot_costs
        from seqpar.analysis.plots import plot_records

        try:
            files, plot_warnings = plot_records([path], within_run(path, path / PLOTS))
            files += plot_costs([path], path / PLOTS)
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
    workers: int = 1,
    launcher: Launcher | None = None,
    shard: tuple[int, int] | None = None,
) -> int:
    """Run a sweep with progress, print its comparison table; returns the exit code (0, 1 failed, 130 interrupted).

    One worker runs in this process. With `workers` > 1 or a `launcher`, this process
    starts the workers (local processes or a SLURM array) and follows their progress in
    the index. With `resume`, completed points are kept and every other point continues
    from its own checkpoints (`seqpar run --resume SWEEP_DIR`). One signal handler spans
    the whole sweep, so Ctrl-C between points stops it as cleanly as Ctrl-C inside one.
    """
    from seqpar.analysis.compare import compare, rich_table
    from seqpar.train.loop import NullProgress
    from seqpar.train.runner import run_experiment, stop_on_signals

    joined = prepare_sweep_dir(plan, sweep_dir)
    session, since = new_session(), time.time()
    s0 = plan.points[0].spec
    where = f"{workers} worker(s), {launcher.description}" if launcher is not None else "in this process"
    console.print(
        f"[bold]{plan.name}[/]: sweep of {len(plan.points)} point(s) over {', '.join(plan.axes) or '(no axes)'}, "
        f"{len(s0.methods)} method(s), {s0.train.steps} steps each -> {sweep_dir} ({where}"
        f"{'; joining the workers already there' if joined and not resume else ''}"
        f"{f'; shard {shard[0]}/{shard[1]}' if shard else ''})"
    )
    for key, value in plan.pinned.items():
        console.print(f"  {key} pinned to {short_value(value)} by --set (not swept)")
    rebuild_index(plan, sweep_dir)

    if launcher is not None:
        jobs = [WorkerJob(SWEEP_WORKER, str(sweep_dir), session, since, resume, i, workers, shard, tensorboard) for i in range(workers)]
        codes = follow_workers(launcher, jobs, console, quiet, lambda: rebuild_index(plan, sweep_dir), len(plan.points))
        interrupted, crashed = 130 in codes, sum(c not in (0, 1, 130) for c in codes)
        if crashed:
            err_console.print(
                f"[red]crashed[/]: {crashed} worker(s) died (a surviving worker takes over a dead worker's point); "
                f"their logs are in {Path(sweep_dir) / WORKER_LOGS}",
                highlight=False,
            )
    else:
        crashed = 0
        owner = Owner.me(session)
        with stop_on_signals() as stop:
            if quiet:
                run_point = lambda spec, d: run_experiment(spec, d, NullProgress(), resume=True, stop=stop, tensorboard=tensorboard)  # noqa: E731
                interrupted = work_points(plan, sweep_dir, run_point, owner=owner, resume=resume, since=since, shard=shard, stop=stop)
            else:
                with SweepProgress(console, len(plan.points)) as progress:
                    run_point = lambda spec, d: run_experiment(spec, d, progress, resume=True, stop=stop, tensorboard=tensorboard)  # noqa: E731
                    interrupted = work_points(
                        plan, sweep_dir, run_point, progress.on_point, owner=owner, resume=resume, since=since, shard=shard, stop=stop
                    )
    index = rebuild_index(plan, sweep_dir, final=True)
    try:
        rows, keys, warnings = compare([sweep_dir])
        console.print(rich_table(rows, keys, title=f"{plan.name}: held-out sequential rollout, mean ± std over seeds"), crop=False)
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
    if index["status"] == "running":
        console.print("other workers are still running points; the index is complete when the last one ends", highlight=False)
    if interrupted:  # a signal (Ctrl-C, SIGTERM) reached this process or a worker
        err_console.print(f"[yellow]interrupted[/]: finished points are saved; continue with: seqpar run --resume {sweep_dir}")
        return 130
    if index["status"] == "interrupted":  # nobody asked to stop: workers died and none was left to take over
        err_console.print(f"[red]crashed[/]: points were left unfinished; continue with: seqpar run --resume {sweep_dir}")
        return 1
    return 1 if index["status"] == "failed" or crashed else 0


def follow_workers(
    launcher: Launcher,
    jobs: list[WorkerJob],
    console: Console,
    quiet: bool,
    index: Callable[[], dict[str, Any]],
    total: int,
    poll_s: float = 1.0,
    on_poll: Callable[[], None] = lambda: None,
) -> list[int]:
    """Start the workers, show the index's progress until they end, pass Ctrl-C and SIGTERM on; their exit codes.

    `on_poll` runs at every poll (a study prints the trials its workers finished)."""
    restore_sigterm = _sigterm_as_interrupt()
    bars = None
    try:
        running = launcher.start(jobs)
        bars = None if quiet else progress_bars(console)
        task = bars.add_task("points", total=total, info=f"{len(jobs)} worker(s)") if bars else None
        if bars is not None:
            bars.__enter__()
        while True:
            try:
                while not running.done():
                    on_poll()
                    if bars is not None and task is not None:
                        counts = status_counts(index())
                        done = sum(n for s, n in counts.items() if s not in ("pending", "running"))
                        info = ", ".join(f"{n} {s}" for s, n in counts.items() if s != "pending")
                        bars.update(task, completed=done, info=info)
                    time.sleep(poll_s)
                return running.wait()
            except KeyboardInterrupt:
                console.print("stopping the workers (they save what they have)...", highlight=False)
                running.stop()
    finally:
        restore_sigterm()
        if bars is not None:
            bars.__exit__(None, None, None)


def _sigterm_as_interrupt() -> Callable[[], None]:
    """Make SIGTERM stop the workers as Ctrl-C does (a scheduler's or `kill`'s way of asking), instead of
    ending this process alone and leaving them running; returns what puts the old handler back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def on_term(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    return restore

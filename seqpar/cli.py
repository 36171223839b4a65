"""`seqpar` command line: parses arguments and delegates; no logic lives here."""

from __future__ import annotations

import functools
import sys
import tempfile
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from seqpar.sweep import MAX_POINTS
from seqpar.tune import MAX_TRIALS

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="Train RNNs sequentially (BPTT, truncated BPTT) or in parallel over time (embedding-parallel tables, "
    "DEER / quasi-DEER / ELK Newton solvers), every method judged by held-out sequential rollout.",
)
# Outside a terminal (CI logs, pipes) Rich would wrap tables at 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


def _check_set(items: list[str] | None) -> list[str] | None:
    """`--set KEY VALUE` (a space for the `=`) would otherwise reach Typer as a stray argument."""
    for item in items or []:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            from seqpar.spec import shown

            _fail(
                f"--set {shown(item, quote=False)}: expected KEY=VALUE with no space around '=' "
                f"(write --set {shown(key.strip() or 'train.steps', quote=False)}=VALUE)"
            )
    return items


SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", callback=_check_set, help="override a spec key: dotted.key=value (YAML value); repeatable"),
]
_WORKERS = "Workers"
WorkersOpt = Annotated[
    int, typer.Option(help="worker processes (each claims points or trials until none is left)", rich_help_panel=_WORKERS)
]
DevicesPerWorkerOpt = Annotated[
    int | None, typer.Option(help="GPUs per local worker (sets CUDA_VISIBLE_DEVICES)", rich_help_panel=_WORKERS)
]
LauncherOpt = Annotated[str, typer.Option(help="local (processes here) or slurm (a job array via submitit)", rich_help_panel=_WORKERS)]
ShardOpt = Annotated[str | None, typer.Option(help="i/n: run only points with index % n == i", rich_help_panel=_WORKERS)]
PartitionOpt = Annotated[str | None, typer.Option(help="SLURM partition", rich_help_panel=_WORKERS)]
GpusPerTaskOpt = Annotated[int, typer.Option(help="GPUs per SLURM array task", rich_help_panel=_WORKERS)]
TimeOpt = Annotated[int, typer.Option("--time", help="SLURM time limit per array task, minutes", rich_help_panel=_WORKERS)]
ArrayParallelismOpt = Annotated[int | None, typer.Option(help="SLURM array tasks running at once", rich_help_panel=_WORKERS)]


def _fail(msg: str, code: int = 2) -> NoReturn:
    # The message is text, not markup: a path or hint with brackets (seqpar[tb]) must print as is.
    err_console.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _warn(msg: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(msg)}", highlight=False, soft_wrap=True)


def _one_line_errors(command):
    """An unexpected exception becomes one line and exit 1; `--debug` shows the full traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from seqpar.config.plugins import PluginError
        from seqpar.records.writer import WriteError

        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except WriteError as e:  # a full disk: say which file; the summary records the failure where it could be written
            if kwargs.get("debug"):
                raise
            _fail(str(e), code=1)
        except PluginError as e:  # user code that does not import: the user's to fix, like a bad spec
            if kwargs.get("debug"):
                raise
            _fail(str(e))
        except Exception as e:
            if kwargs.get("debug"):
                raise
            _fail(f"unexpected {type(e).__name__}: {e} (rerun with --debug for the traceback)", code=1)

    return wrapper


def _check_machine(specs, force: bool, source: Path, overrides: list[str] | None = None, count_devices: bool = True) -> None:
    """Refuse (exit 2) what this machine cannot run, before anything is written or allocated:
    more devices than are visible (unless `count_devices` is False), or an estimated memory
    above the machine's (or an estimate that cannot be made; `--force` overrides the memory
    check only)."""
    from seqpar.spec import SpecError, with_yaml_line
    from seqpar.train.memory import MemoryLimitError, check_all

    # Counting devices starts the backend, so only specs that ask for more than one do it.
    wanted = max((s.train.devices for s in specs if isinstance(s.train.devices, int)), default=1)
    if wanted > 1 and count_devices:
        import jax

        if wanted > jax.device_count():
            devices = jax.devices()
            err = SpecError(
                f"{source}: train.devices: {wanted} requested, but only {len(devices)} device(s) are visible "
                f"({devices[0].platform}); use at most {len(devices)}, or 'all'",
                key="train.devices",
                source=str(source),
            )
            _fail(with_yaml_line(err, source, overrides or []))
    try:
        warnings = check_all(specs, force)
    except MemoryLimitError as e:
        _fail(f"{source}: {e}")
    for w in warnings:
        _warn(w)
    from seqpar.train.usercode import UserCodeError, check_user_code

    try:
        notes = check_user_code(specs)
    except UserCodeError as e:
        _fail(f"{source}: {e}")
    for n in notes:
        console.print(n, highlight=False, markup=False)


def _exit_code(summary: dict, run_dir: Path, debug: bool) -> int:
    """Say what failed, diverged or was interrupted (the runner's `outcome`); return its exit code."""
    from seqpar.train.runner import outcome

    code, lines = outcome(summary, run_dir, with_tracebacks=debug)
    for kind, text in lines:
        if kind == "traceback":
            err_console.print(text, highlight=False, markup=False)
        else:
            err_console.print(f"[{'red' if kind == 'failed' else 'yellow'}]{kind}[/]{escape(text)}", highlight=False, soft_wrap=True)
    return code


def _worker_options(workers, devices_per_worker, launcher, shard, partition, gpus_per_task, time_min, array_parallelism):
    """The launcher options, checked (exit 2 with one line if they make no sense)."""
    from seqpar.sweep.launch import LaunchError, SlurmOptions, WorkerOptions

    opts = WorkerOptions(workers, devices_per_worker, launcher, shard, SlurmOptions(partition, gpus_per_task, time_min, array_parallelism))
    try:
        opts.check()
    except LaunchError as e:
        _fail(str(e))
    return opts


def _resume(run_dir: Path, *, quiet: bool, debug: bool, force: bool, workers=None, overrides: list[str] | None = None) -> int:
    from seqpar.analysis.report import RichProgress, results_table
    from seqpar.records.layout import SPEC, SWEEP_SPEC, is_sweep_dir
    from seqpar.records.writer import RunDirBusy
    from seqpar.train.loop import NullProgress
    from seqpar.train.runner import ResumeError, load_run_spec, run_experiment

    if is_sweep_dir(run_dir):
        from seqpar.sweep import execute as sweeps

        if overrides:
            _fail(f"--set with --resume {run_dir}: a sweep resumes with the spec it started with (--set amends one run)")

        plan = _load_plan(run_dir / SWEEP_SPEC, [], max_points=None)  # its size was accepted when it started
        _check_machine([p.spec for p in plan.points], force, run_dir / SWEEP_SPEC)
        try:
            code = sweeps.execute_sweep(
                plan,
                run_dir,
                console,
                err_console,
                quiet=quiet,
                plot=False,
                tensorboard=False,
                resume=True,
                workers=workers.workers if workers else 1,
                launcher=workers.launcher_for(run_dir) if workers else None,
                shard=workers.shard_tuple() if workers else None,
            )
        except (ResumeError, RunDirBusy, sweeps.SweepDirMismatch) as e:
            _fail(str(e))
        for point in plan.points:
            _resume_warnings(run_dir / point.dirname)
        return code
    from seqpar.spec import SpecError
    from seqpar.train.runner import amend_spec

    try:
        s = load_run_spec(run_dir)
        if overrides:  # e.g. more damping for a Newton solve that diverged: from its last checkpoint
            s = amend_spec(s, overrides, str(run_dir / SPEC))
    except (ResumeError, SpecError) as e:
        _fail(str(e))
    _check_machine([s], force, run_dir / SPEC)
    run_dir = _resume_dir(run_dir)
    console.print(f"[bold]{s.name}[/]: resuming {escape(str(run_dir))}")
    try:
        if quiet:
            summary = run_experiment(s, run_dir, NullProgress(), resume=True)
        else:
            with RichProgress(console) as progress:
                summary = run_experiment(s, run_dir, progress, resume=True)
    except (ResumeError, RunDirBusy) as e:
        _fail(str(e))
    _resume_warnings(run_dir)
    if quiet:  # the bars say it as each method starts; without them, one line
        from_step = ((summary.get("resumes") or [{}])[-1] or {}).get("from_step") or {}
        if from_step:
            console.print("resumed: " + ", ".join(f"{k} from step {v}" for k, v in from_step.items()), highlight=False, markup=False)
    console.print(results_table(summary))
    console.print(f"run record: {run_dir}", markup=False)
    return _exit_code(summary, run_dir, debug)


def _resume_dir(run_dir: Path) -> Path:
    """Where this process resumes: the run directory for process 0, a scratch copy for the others.

    Only process 0 writes the record; the others continue from a copy of it (the same
    checkpoints, the same finished methods), taken before process 0 changes anything."""
    import jax

    if jax.process_count() == 1:
        return run_dir
    from jax.experimental import multihost_utils

    from seqpar.sharding import is_writer

    here = run_dir
    if not is_writer():
        import shutil

        here = Path(tempfile.mkdtemp(prefix="seqpar-worker-"))
        shutil.copytree(run_dir, here, dirs_exist_ok=True)
    multihost_utils.sync_global_devices("seqpar resume: every copy taken")
    return here


def _resume_warnings(run_dir: Path) -> None:
    """Say which checkpoints this resume passed over and why (also kept in the summary's `resumes`)."""
    from seqpar.records.reader import BadRecord, read_summary

    try:
        summary = read_summary(run_dir, missing_ok=True)
    except BadRecord:
        return
    resumes = (summary or {}).get("resumes") or [{}]
    for w in resumes[-1].get("warnings", []) if isinstance(resumes[-1], dict) else []:
        _warn(str(w))


def _load_plan(spec_path: Path, overrides: list[str] | None, max_points: int | None = MAX_POINTS):
    """The spec's points: one for a plain spec, the validated grid for a spec with `sweep:`."""
    from seqpar.spec import SpecError, with_yaml_line
    from seqpar.sweep.plan import load_plan

    try:
        return load_plan(spec_path, overrides or [], max_points=max_points)
    except SpecError as e:
        _fail(with_yaml_line(e, spec_path, overrides or []))


MaxPointsOpt = Annotated[
    int, typer.Option("--max-points", min=1, help="refuse a sweep of more points than this (every point is validated up front)")
]
MaxTrialsOpt = Annotated[int, typer.Option("--max-trials", min=1, help="refuse a study of more trials (all methods together) than this")]
ForceOpt = Annotated[bool, typer.Option("--force", help="run even if the estimated memory exceeds the machine's")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="full tracebacks for unexpected errors")]


@app.command()
@_one_line_errors
def validate(
    spec: Annotated[Path, typer.Argument(help="YAML experiment spec", metavar="SPEC")],
    set_: SetOpt = None,
    max_points: MaxPointsOpt = MAX_POINTS,
    max_trials: MaxTrialsOpt = MAX_TRIALS,
    force: Annotated[bool, typer.Option("--force", help="pass even if the estimated memory exceeds the machine's")] = False,
    debug: DebugOpt = False,
) -> None:
    """Check a spec without running it: the spec, every sweep point (or every corner of a `tune:`
    block's search spaces), and that this machine can run it (devices, estimated memory).
    Exit 2 with a one-line error if not."""
    from seqpar.sharding import LaunchEnvError, launched_multiprocess
    from seqpar.spec import SpecError, read_yaml, with_yaml_line

    try:
        if "tune" in read_yaml(spec):
            from seqpar.tune.space import load_tune

            study = load_tune(spec, set_ or [], max_trials)
            console.print(
                f"[green]ok[/] {spec}: {study.spec.name}, study of {len(study.labels)} method(s) x {study.tune.trials} trials, "
                f"every corner of every search space valid"
            )
            return
    except SpecError as e:
        _fail(with_yaml_line(e, spec, set_ or []))
    plan = _load_plan(spec, set_, max_points)
    # Under a multi-process launch the devices of the other processes count too; `run` joins
    # them before it counts, `validate` does not join a cluster to check a file.
    try:
        several = launched_multiprocess()
    except LaunchEnvError as e:
        _fail(str(e))
    _check_machine([p.spec for p in plan.points], force, spec, set_, count_devices=not several)
    s = plan.points[0].spec
    _print_user_cell_cost(s)
    from seqpar.train.memory import check

    console.print(check(s, force=True) + (" (first point)" if plan.is_sweep else ""), highlight=False, markup=False)
    if plan.is_sweep:
        console.print(
            f"[green]ok[/] {spec}: {s.name}, sweep of {len(plan.points)} point(s) over "
            f"{', '.join(plan.axes) or '(no axes)'}, every point valid"
        )
        return
    console.print(f"[green]ok[/] {spec}: {s.name}, {len(s.methods)} method(s): {', '.join(m.display_label for m in s.methods)}")


def _print_user_cell_cost(spec) -> None:
    """`seqpar validate` on a user cell: what one step costs and what a Newton iteration's
    linearisation of a whole batch takes on this machine, per path the cell offers."""
    from seqpar.train.usercode import user_cell_costs

    found = user_cell_costs(spec)
    if found is None:
        return
    name, cost = found
    flops = f"{cost.flops:,.0f} FLOPs per step" if cost.flops is not None else "FLOPs not reported by this backend"
    times = ", ".join(f"{path} {ms:.3g} ms" for path, ms in cost.linearise_ms.items())
    positions = spec.train.batch_size * spec.task.build().seq_len
    console.print(
        f"cell {name}: {flops}; a Newton iteration linearises {positions} (state, input) pairs (batch x length): {times} "
        "(median of 5, this machine)",
        highlight=False,
        markup=False,
    )


@app.command()
@_one_line_errors
def run(
    spec: Annotated[Path | None, typer.Argument(help="YAML experiment spec (omit with --resume)", metavar="SPEC")] = None,
    out: Annotated[Path | None, typer.Option(help="run directory (default results/<name>/<run-id>)")] = None,
    set_: SetOpt = None,
    results_root: Annotated[Path, typer.Option(help="root of default run directories")] = Path("results"),
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="validate and list the runs (sweep points) without running anything")] = False,
    plot: Annotated[bool, typer.Option("--plot", help="write PNG figures to RUN_DIR/plots at the end")] = False,
    tensorboard: Annotated[
        bool,
        typer.Option(
            "--tensorboard", help="write TensorBoard event files to RUN_DIR/tensorboard (as --tracker tensorboard; needs seqpar\\[tb])"
        ),
    ] = False,
    tracker: Annotated[
        list[str] | None,
        typer.Option(
            "--tracker",
            help="live tracker besides metrics.jsonl: tensorboard or mlflow (needs seqpar\\[mlflow]); repeatable",
            metavar="NAME",
        ),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option("--tracking-uri", help="MLflow tracking URI (a server, sqlite:///..., a file store); default: RUN_DIR/mlflow.db"),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            help="continue the interrupted or crashed run in RUN_DIR (with its own spec; --set may change a method's solver settings)",
            metavar="RUN_DIR",
        ),
    ] = None,
    force: ForceOpt = False,
    max_points: MaxPointsOpt = MAX_POINTS,
    debug: Annotated[bool, typer.Option("--debug", help="full tracebacks for unexpected errors")] = False,
    workers: WorkersOpt = 1,
    devices_per_worker: DevicesPerWorkerOpt = None,
    launcher: LauncherOpt = "local",
    shard: ShardOpt = None,
    partition: PartitionOpt = None,
    gpus_per_task: GpusPerTaskOpt = 0,
    time_min: TimeOpt = 60,
    array_parallelism: ArrayParallelismOpt = None,
) -> None:
    """Train every method of SPEC (every point of its `sweep:`), judge each by held-out rollout, write the run record."""
    from seqpar.sharding import LaunchEnvError, is_writer, maybe_initialize_distributed
    from seqpar.sweep import execute as sweeps

    wopts = _worker_options(workers, devices_per_worker, launcher, shard, partition, gpus_per_task, time_min, array_parallelism)
    many = workers > 1 or launcher != "local" or shard is not None
    if not many:
        try:
            maybe_initialize_distributed()  # under a cluster launcher; must precede any JAX computation
        except LaunchEnvError as e:
            _fail(str(e))
    if resume is not None:
        if spec is not None or out is not None:
            _fail("--resume RUN_DIR continues a run with the spec it started with; give no SPEC or --out with it")
        raise typer.Exit(_resume(resume, quiet=quiet, debug=debug, force=force, workers=wopts, overrides=set_ or []))
    if spec is None:
        _fail("missing SPEC: give a YAML experiment spec, or --resume RUN_DIR")
    plan = _load_plan(spec, set_, max_points)
    if many and not plan.is_sweep:
        _fail(f"--workers, --launcher and --shard spread a sweep's points; {spec} has no sweep: (one run record, one worker)")
    if dry_run:
        console.print(sweeps.plan_table(plan))
        raise typer.Exit(0)
    tracking = _tracking([*(tracker or []), *(["tensorboard"] if tensorboard else [])], tracking_uri)
    if tracking.mlflow and plan.is_sweep:
        _fail(f"--tracker mlflow: {spec} is a sweep; MLflow tracks a single run (use --tracker tensorboard for a sweep)")
    s = plan.points[0].spec
    _check_machine([p.spec for p in plan.points], force, spec, set_)
    from seqpar.analysis.report import RichProgress, results_table
    from seqpar.records.layout import SWEEP_SPEC
    from seqpar.records.writer import OutputError, RunDirBusy, new_run_dir
    from seqpar.train.loop import NullProgress
    from seqpar.train.runner import run_experiment

    try:
        if plan.is_sweep and out is not None and (out / SWEEP_SPEC).exists():
            run_dir = out  # a sweep another command (host, worker pool) already started: join it
        # Multi-process runs: only process 0 writes the run record; the others write a scratch copy.
        elif is_writer():
            run_dir = new_run_dir(results_root, s.name, out)
        else:
            run_dir = Path(tempfile.mkdtemp(prefix="seqpar-worker-"))
    except OutputError as e:
        _fail(str(e))
    if plan.is_sweep:
        try:
            code = sweeps.execute_sweep(
                plan,
                run_dir,
                console,
                err_console,
                quiet=quiet,
                plot=plot,
                tensorboard=tracking.tensorboard,
                workers=workers,
                launcher=wopts.launcher_for(run_dir),
                shard=wopts.shard_tuple(),
            )
        except sweeps.SweepDirMismatch as e:
            _fail(str(e))
        raise typer.Exit(code)
    console.print(f"[bold]{s.name}[/]: {len(s.methods)} method(s), {s.train.steps} steps each -> {escape(str(run_dir))}")
    if tracking.tensorboard:
        console.print(f"TensorBoard (live): tensorboard --logdir {run_dir}", highlight=False, markup=False)
    if tracking.mlflow:
        from seqpar.track.mlflow import ui_command

        console.print(f"MLflow (live): {ui_command(run_dir, tracking.mlflow_uri)}", highlight=False, markup=False)
    try:
        if quiet:
            summary = run_experiment(s, run_dir, NullProgress(), tracking=tracking)
        else:
            with RichProgress(console) as progress:
                summary = run_experiment(s, run_dir, progress, tracking=tracking)
    except RunDirBusy as e:  # another run raced us to the same --out
        _fail(str(e))
    console.print(results_table(summary))
    _log_shard_memory(summary)
    notes, warnings = sweeps.export_run(run_dir, plot=plot, tensorboard=False)
    for w in warnings:
        _warn(w)
    for n in notes:
        console.print(n, highlight=False, markup=False)
    console.print(f"run record: {run_dir}", markup=False)
    raise typer.Exit(_exit_code(summary, run_dir, debug))


def _tracking(names: list[str], tracking_uri: str | None):
    """The live trackers asked for, checked: a known name, installed (exit 2 with one line if not)."""
    from seqpar.track import Tracking

    try:
        tracking = Tracking.of(names, tracking_uri)
    except ValueError as e:
        _fail(str(e))
    if tracking_uri is not None and not tracking.mlflow:
        _fail("--tracking-uri is MLflow's: give it with --tracker mlflow")
    hint = tracking.missing()
    if hint:
        _fail(hint)
    try:
        tracking.check()
    except ValueError as e:
        _fail(str(e))
    return tracking


def _log_shard_memory(summary: dict) -> None:
    """With several devices, every process reports the row-sharded state its own devices hold."""
    import jax

    from seqpar.analysis.report import human_bytes

    if jax.device_count() == 1 or not any(r.get("mesh", {}).get("data", 1) > 1 for r in summary["runs"]):
        return
    for r in summary["runs"]:
        per_device = r.get("row_state_bytes_per_device") or {}
        shown = ", ".join(f"{d} {human_bytes(b)}" for d, b in per_device.items()) or "none"
        err_console.print(f"process {jax.process_index()}: {r['label']}: row-sharded state per local device: {shown}", highlight=False)


@app.command()
@_one_line_errors
def tune(
    spec: Annotated[Path, typer.Argument(help="YAML experiment spec with a tune: block", metavar="SPEC")],
    out: Annotated[
        Path | None, typer.Option(help="study directory (default results/<name>/tune-<run-id>); run again to continue it")
    ] = None,
    set_: SetOpt = None,
    storage: Annotated[
        str | None, typer.Option(help="Optuna storage URL shared by several hosts (default: a journal file in the study directory)")
    ] = None,
    results_root: Annotated[Path, typer.Option(help="root of default study directories")] = Path("results"),
    quiet: Annotated[bool, typer.Option(help="no progress lines")] = False,
    tensorboard: Annotated[
        bool, typer.Option("--tensorboard", help="live TensorBoard event files for every trial (needs tensorboardX)")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="run even if the estimated memory exceeds the machine's")] = False,
    max_trials: MaxTrialsOpt = MAX_TRIALS,
    debug: Annotated[bool, typer.Option("--debug", help="full tracebacks for unexpected errors")] = False,
    workers: WorkersOpt = 1,
    devices_per_worker: DevicesPerWorkerOpt = None,
    launcher: LauncherOpt = "local",
    partition: PartitionOpt = None,
    gpus_per_task: GpusPerTaskOpt = 0,
    time_min: TimeOpt = 60,
    array_parallelism: ArrayParallelismOpt = None,
) -> None:
    """Tune every method at the same budget (Optuna, on validation), re-run each best with the tune seeds on test."""
    import time as _time

    from seqpar.spec import SpecError, with_yaml_line
    from seqpar.sweep.execute import follow_workers, new_session
    from seqpar.sweep.launch import WorkerJob
    from seqpar.tune import study as S
    from seqpar.tune.report import study_table, verdict_lines
    from seqpar.tune.space import load_tune

    wopts = _worker_options(workers, devices_per_worker, launcher, None, partition, gpus_per_task, time_min, array_parallelism)
    try:
        plan = load_tune(spec, set_ or [], max_trials)
    except SpecError as e:
        _fail(with_yaml_line(e, spec, set_ or []))
    if tensorboard:
        _tracking(["tensorboard"], None)
    _check_machine([plan.spec], force, spec, set_)
    if out is None:
        out = results_root / plan.spec.name / f"tune-{_time.strftime('%Y%m%d-%H%M%S')}"
    try:
        S.check_study_dir(plan, out)  # everything that can refuse, before a storage file or the directory is created
        store = S.storage_for(out, storage) if storage else None  # a URL that cannot be opened fails before anything is written
        continuing = S.prepare_study_dir(plan, out)
        store = store or S.storage_for(out)
    except (S.StudyDirMismatch, S.StorageError) as e:
        _fail(str(e))
    tag = S.study_tag(out, storage)
    t = plan.tune
    console.print(
        f"[bold]{plan.spec.name}[/]: {'continuing' if continuing else 'tuning'} {len(plan.labels)} method(s) "
        f"({', '.join(plan.labels)}), {t.trials} trials each, {plan.spec.train.steps} steps per trial, "
        f"objective: {t.objective} validation rollout loss; best re-run with seeds {t.seeds} on test -> {out}",
        highlight=False,
    )
    job = WorkerJob(S.TUNE_WORKER, str(out), new_session(), _time.time(), True, 0, workers, None, tensorboard, {"storage": storage})
    launch = wopts.launcher_for(out)

    def say(label, trial, outcome):
        if not quiet:
            value = outcome.get("value")
            shown = f"val {value:.4f}" if isinstance(value, float) else outcome.get("state", "")
            params = ", ".join(f"{k}={format(v, '.3g') if isinstance(v, float) else v}" for k, v in trial.params.items())
            console.print(f"  {label} #{trial.number}: {shown} [{outcome.get('status')}]  {params}", highlight=False, markup=False)

    if launch is None:
        code = S.tune_worker(job, on_trial=say)
    else:
        import dataclasses

        jobs = [dataclasses.replace(job, worker=i) for i in range(workers)]
        printer = S.TrialPrinter(plan, store, say, tag)
        codes = follow_workers(launch, jobs, console, True, lambda: {}, 0, on_poll=printer.poll)
        printer.poll()
        code = 130 if 130 in codes else (0 if all(c == 0 for c in codes) else 1)
    index = S.report(plan, out, store, tag)
    console.print(study_table(index))
    for line in verdict_lines(index):
        console.print(line, highlight=False)
    console.print(f"study: {out} (best.yaml reproduces the winners: seqpar run {out / 'best.yaml'}; summary tune.json)", highlight=False)
    if storage is None:
        console.print(f"dashboard: optuna-dashboard {out / 'study.journal'}", highlight=False)
    if code == 130:
        err_console.print(f"[yellow]interrupted[/]: the study is saved; continue it with the same command (--out {out})")
    raise typer.Exit(code)


@app.command()
@_one_line_errors
def tasks() -> None:
    """List the tasks: parameters with defaults, loss, and memoryless baseline."""
    from seqpar.tasks.catalog import tasks_table

    console.print(tasks_table())


PathsArg = Annotated[
    list[str], typer.Argument(help="run directories, sweep directories, directories above them, or glob patterns", metavar="PATHS")
]
ByOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--by", help="group by these settings (dotted keys, repeatable or comma-separated); default: swept and differing settings"
    ),
]
MetricOpt = Annotated[
    str, typer.Option("--metric", help="final metric to aggregate (rollout_loss_test, rollout_acc_test, objective, step_time_ms, ...)")
]


@app.command()
@_one_line_errors
def compare(
    paths: PathsArg,
    by: ByOpt = None,
    metric: MetricOpt = "rollout_loss_test",
    sort: Annotated[
        str | None,
        typer.Option(
            "--sort",
            help="sort rows by: metric, method, step_time_ms, peak_memory_mb, ... or a setting; prefix - for descending (--sort=-metric)",
        ),
    ] = None,
    diff_only: Annotated[bool, typer.Option("--diff-only", help="hide setting columns whose value is the same in every row")] = False,
    format_: Annotated[str, typer.Option("--format", help="table, markdown, csv or json")] = "table",
    at_seconds: Annotated[
        float | None,
        typer.Option(
            "--at-seconds",
            min=0,
            help="read each run at its last evaluation within S seconds of training time (compile and evaluation excluded)",
        ),
    ] = None,
    at_step: Annotated[int | None, typer.Option("--at-step", min=0, help="read each run at its last evaluation up to step N")] = None,
) -> None:
    """Aggregate run records over seeds: rollout loss mean ± std, baseline fraction, time to target, cost, status."""
    from seqpar.analysis import compare as cmp
    from seqpar.analysis.at_time import At

    if format_ not in cmp.FORMATS:
        _fail(f"--format {format_}: expected one of: {', '.join(cmp.FORMATS)}")
    if at_seconds is not None and at_step is not None:
        _fail("--at-seconds and --at-step: give one budget, not both")
    at = At(at_seconds, at_step) if at_seconds is not None or at_step is not None else None
    try:
        rows, keys, warnings = cmp.compare(paths, by, metric, sort, diff_only, at)
    except cmp.CompareError as e:
        _fail(str(e))
    for w in warnings:
        _warn(w)
    if format_ == "table":
        console.print(cmp.rich_table(rows, keys), crop=False)  # wider than the terminal: wrapped by it, not cut
    else:
        text = {"markdown": cmp.markdown, "csv": cmp.to_csv, "json": cmp.to_json}[format_](rows, keys)
        sys.stdout.write(text)


@app.command()
@_one_line_errors
def plot(
    paths: PathsArg,
    out: Annotated[Path, typer.Option("--out", help="directory for the PNG files (created)")],
    by: ByOpt = None,
    metric: MetricOpt = "rollout_loss_test",
) -> None:
    """Write PNG figures: rollout loss vs steps and seconds, objective gap, scaling vs length, final loss vs settings,
    quality vs cost (Pareto: seconds and sequential depth to target), steps to target vs lag."""
    from seqpar.analysis.compare import CompareError
    from seqpar.analysis.cost_plots import plot_costs
    from seqpar.analysis.plots import plot_records

    try:
        files, warnings = plot_records(paths, out, by, metric)
        files += plot_costs(paths, out, by)
    except CompareError as e:
        _fail(str(e))
    for w in warnings:
        _warn(w)
    for f in files:
        console.print(str(f), highlight=False, markup=False)
    if not files:
        err_console.print("[yellow]warning:[/] nothing to plot (no evaluation points in these records)")


@app.command()
@_one_line_errors
def bench(
    spec: Annotated[
        Path | None, typer.Argument(help="YAML spec whose task and methods to measure (default: built in)", metavar="SPEC")
    ] = None,
    lengths: Annotated[str, typer.Option(help="sequence lengths, comma-separated")] = "256,1024,4096",
    batch: Annotated[str, typer.Option(help="batch sizes (sequences per step), comma-separated")] = "1,8,64",
    hidden: Annotated[int, typer.Option(help="hidden size")] = 64,
    cells: Annotated[str | None, typer.Option(help="cells, comma-separated (default: the spec's)")] = None,
    unrolls: Annotated[str, typer.Option(help="lax.scan unroll factors tried for BPTT-like methods; the fastest is kept")] = "1,2,4,8,16",
    sequences: Annotated[int | None, typer.Option(help="training-set size (default: the batch, i.e. full-batch steps)")] = None,
    min_time: Annotated[float, typer.Option(help="seconds of timed steps per point (at least --repeats steps)")] = 1.0,
    repeats: Annotated[int, typer.Option(help="minimum timed steps per point")] = 10,
    overhead_steps: Annotated[int, typer.Option(help="steps of the `run` vs bare-loop check (0: skip it)")] = 200,
    overhead_rounds: Annotated[int, typer.Option(help="alternating rounds of the `run` vs bare-loop check")] = 3,
    out: Annotated[Path | None, typer.Option(help="output directory (default results/bench/<run-id>)")] = None,
    results_root: Annotated[Path, typer.Option(help="root of default output directories")] = Path("results"),
    set_: SetOpt = None,
    force: Annotated[bool, typer.Option("--force", help="measure even points whose estimated memory exceeds the machine's")] = False,
    profile: Annotated[bool, typer.Option("--profile", help="also time the embedding-parallel step in stages")] = False,
    peer: Annotated[
        str | None, typer.Option("--peer", help="also time what a user would otherwise run: torch (nn.GRU BPTT; needs seqpar\\[peer])")
    ] = None,
) -> None:
    """Step time, memory and FLOP/s of every method against length and batch; writes bench.json and bench.png."""
    from seqpar.bench import grid as B
    from seqpar.bench.machine import machine
    from seqpar.bench.report import bench_table, overhead_table, peer_table, profile_table
    from seqpar.bench.run import bench_to_dir
    from seqpar.records.writer import OutputError, new_run_dir
    from seqpar.spec import SpecError

    try:
        s = B.load_bench_spec(spec, set_)
        grid = B.Grid(
            lengths=B.parse_ints(lengths, "--lengths"),
            batches=B.parse_ints(batch, "--batch"),
            hidden=hidden,
            cells=B.parse_cells(cells) if cells else None,
            unrolls=B.parse_ints(unrolls, "--unrolls"),
            sequences=sequences,
            min_repeats=repeats,
            max_repeats=max(200, repeats),
            min_time_s=min_time,
            profile=profile,
            peer=peer,
        )
        if peer is not None:
            from seqpar.bench.peer import available

            reason = available(peer)
            if reason is not None:
                raise B.BenchError(reason)
        B.check_overhead_args(overhead_steps, overhead_rounds)
        for note in B.check_points(s, grid, force):
            _warn(note)
        run_dir = new_run_dir(results_root, "bench", out)
    except (B.BenchError, SpecError, OutputError) as e:
        _fail(str(e))
    title = s.name if s.name.startswith("bench") else f"bench {s.name}"  # the built-in spec is named bench
    console.print(f"[bold]{escape(title)}[/]: {machine()['summary']} -> {escape(str(run_dir))}")

    def on_point(r):
        line = f"  {r['label']:<14} {r['cell']:<6} T={r['length']:<6} B={r['batch']:<4} "
        if "reason" in r:
            console.print(line + f"skipped: {r['reason']}", highlight=False)
            return
        if "stage" in r:
            console.print(line + f"{r['step_ms']['median']:9.3f} ms  {r['stage']}", highlight=False)
            return
        if "peer" in r:
            ratio = f"  (seqpar bptt ÷ torch: {r['seqpar_over_torch']:.2f})" if "seqpar_over_torch" in r else ""
            console.print(line + f"{r['step_ms']['median']:9.3f} ms/step  {r['backend']}{ratio}", highlight=False)
            return
        iters = r["step_metrics"].get("newton_iters_mean")
        line += f"{r['step_ms']['median']:9.3f} ms/step" + (f"  {iters:.1f} Newton iterations" if iters is not None else "")
        console.print(line, highlight=False)

    try:
        result = bench_to_dir(s, grid, run_dir, on_point, overhead_steps, overhead_rounds)
    except B.BenchError as e:
        _fail(str(e))
    console.print(bench_table(result))
    if result.get("profile"):
        console.print(profile_table(result["profile"]))
    if result.get("loop_overhead"):
        console.print(overhead_table(result["loop_overhead"]))
    if result.get("peer"):
        console.print(peer_table(result["peer"]))
    console.print(f"bench record: {run_dir / 'bench.json'}, plot: {run_dir / 'bench.png'}")


@app.command()
@_one_line_errors
def predictability(
    gains: Annotated[str, typer.Option(help="gains g of the mean-field tanh RNN, comma-separated")] = "0.5,0.75,1,1.25,1.5,1.75,2",
    hidden: Annotated[int, typer.Option(min=1, help="D: units of the recurrence")] = 100,
    lengths: Annotated[str, typer.Option(help="sequence lengths T, comma-separated")] = "100,300,1000",
    dtype: Annotated[str, typer.Option(help="float32 or float64")] = "float64",
    init: Annotated[str, typer.Option(help="Newton's initial guess: zeros or random (uniform in [-1, 1], the paper's)")] = "random",
    sequences: Annotated[int, typer.Option(min=1, help="draws (weights, inputs, initial state) per gain, each its own seed")] = 3,
    solvers: Annotated[str, typer.Option(help="deer, quasi-deer, elk (comma-separated)")] = "deer,quasi-deer,elk",
    max_iters: Annotated[int | None, typer.Option(min=1, help="iteration cap (default: T, the paper's)")] = None,
    damping: Annotated[float, typer.Option(min=0, help="ELK's λ")] = 1.0,
    burn_in: Annotated[int, typer.Option(min=0, help="LLE steps run but not counted")] = 100,
    out: Annotated[Path, typer.Option(help="output directory of predictability.json")] = Path("results/predictability"),
) -> None:
    """DEER, quasi-DEER and ELK iterations against the gain of a mean-field tanh RNN, beside its LLE
    (Gonzalez, Kozachkov et al. 2025, Fig. 2): writes predictability.json, a list of points."""
    from seqpar.bench.grid import BenchError, parse_floats, parse_ints
    from seqpar.bench.predictability import SOLVERS, PredictabilityGrid, run_predictability
    from seqpar.records.writer import atomic_write_json

    try:
        names = tuple(x.strip() for x in solvers.split(",") if x.strip())
        bad = [n for n in names if n not in SOLVERS]
        if bad or not names:
            raise BenchError(f"--solvers: {bad[0] if bad else solvers!r} is not one of {', '.join(SOLVERS)}")
        if dtype not in ("float32", "float64"):
            raise BenchError(f"--dtype: expected float32 or float64, got {dtype!r}")
        if init not in ("zeros", "random"):
            raise BenchError(f"--init: expected zeros or random, got {init!r}")
        grid = PredictabilityGrid(
            gains=parse_floats(gains, "--gains"),
            hidden=hidden,
            lengths=parse_ints(lengths, "--lengths"),
            dtype=dtype,  # type: ignore[arg-type]
            init=init,  # type: ignore[arg-type]
            sequences=sequences,
            solvers=names,
            max_iters=max_iters,
            damping=damping,
            burn_in=burn_in,
        )
    except BenchError as e:
        _fail(str(e))

    def on_point(p):
        state = f"{p['iterations']:5d} iterations" + ("" if p["converged"] else f" (not converged by {p['cap']})")
        console.print(
            f"  {p['solver']:<10} g={p['gain']:<5g} T={p['length']:<5} draw {p['draw']}  {state}  LLE {p['lle']:+.3f}", highlight=False
        )

    result = run_predictability(grid, on_point)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "predictability.json", result)
    console.print(f"written: {out / 'predictability.json'}", highlight=False, markup=False)


@app.command()
@_one_line_errors
def tolerance(
    lengths: Annotated[str, typer.Option(help="sequence lengths, comma-separated")] = "256,1024,4096",
    hidden: Annotated[int, typer.Option(min=1, help="hidden size")] = 64,
    sequences: Annotated[int, typer.Option(min=1, help="sequences solved per point")] = 4,
    iterations: Annotated[int, typer.Option(min=1, help="Newton iterates measured (1, 2, ..., this)")] = 16,
    out: Annotated[Path, typer.Option(help="output directory of tolerance.json")] = Path("results/tolerance"),
) -> None:
    """Newton's residual, state error and gradient error against its iterations in float32: the
    measurement `tol: auto` is chosen from (writes tolerance.json)."""
    from seqpar.bench.grid import BenchError, parse_ints
    from seqpar.bench.tolerance import ToleranceGrid, run_tolerance
    from seqpar.records.writer import atomic_write_json

    try:
        grid = ToleranceGrid(parse_ints(lengths, "--lengths"), hidden, sequences, iterations)
    except BenchError as e:
        _fail(str(e))

    def on_point(p):
        where = f"  {p['cell']:<8} {p['jacobian']:<8} T={p['length']:<5} k={p['iteration']:<3}"
        errors = f"residual {p['residual']:.2e}  state error {p['state_error']:.2e}  gradient {p['grad_relerr']:.2e}"
        console.print(f"{where} {errors}", highlight=False)

    result = run_tolerance(grid, on_point)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "tolerance.json", result)
    console.print(f"written: {out / 'tolerance.json'}", highlight=False, markup=False)


findings_app = typer.Typer(
    help="Every findings table, figure and number, generated from the committed store (findings/): regenerate, check, add a study.",
    no_args_is_help=False,
)
app.add_typer(findings_app, name="findings")


@findings_app.callback(invoke_without_command=True)
@_one_line_errors
def findings(
    ctx: typer.Context,
    check: Annotated[bool, typer.Option("--check", help="change nothing; exit 1 when a generated block or figure differs")] = False,
    only: Annotated[str | None, typer.Option(help="only the blocks and figures whose name starts with this")] = None,
    debug: DebugOpt = False,
) -> None:
    """Rewrite the generated blocks of README.md and docs/ (between findings markers) and the
    findings figures from the store; --check compares instead (CI runs it)."""
    if ctx.invoked_subcommand is not None:
        return
    from seqpar.analysis.findings import generate

    report = generate(check=check, only=only)
    for line in report.problems:
        _warn(line) if not check else err_console.print(f"[red]differs[/] {escape(line)}", highlight=False, soft_wrap=True)
    if check:
        if report.problems:
            raise typer.Exit(1)
        console.print("findings: every generated block and figure matches the store", highlight=False)
        return
    for w in report.written:
        console.print(f"regenerated {w}", highlight=False, markup=False)
    if report.problems:
        raise typer.Exit(1)
    if not report.written:
        console.print("findings: nothing to regenerate", highlight=False)


@findings_app.command("add")
@_one_line_errors
def findings_add(
    study: Annotated[str, typer.Argument(help="the study's name in the store (findings/STUDY)")],
    sources: Annotated[list[Path], typer.Argument(help="run, sweep or study directories; or one JSON record with --json")],
    command: Annotated[list[str] | None, typer.Option("--command", help="a command that produced it (repeatable)")] = None,
    json_name: Annotated[str | None, typer.Option("--json", help="the source is a JSON record kept under this file name")] = None,
    debug: DebugOpt = False,
) -> None:
    """Copy a study's records into the store, slimmed (no checkpoints, environments or machine paths; curves subsampled)."""
    from seqpar.analysis.findings.store import FindingsError, add_json, add_runs, store_bytes

    try:
        if json_name is not None:
            if len(sources) != 1:
                raise FindingsError("--json takes one source file")
            add_json(study, sources[0], json_name, command or [])
        else:
            add_runs(study, list(sources), command or [])
    except FindingsError as e:
        _fail(str(e))
    console.print(f"findings/{study}: added; the store holds {store_bytes() / 1e6:.2f} MB", highlight=False, markup=False)


def main() -> None:  # console-script entry point
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()

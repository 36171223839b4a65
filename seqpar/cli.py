"""`seqpar` command line: parses arguments and delegates; no logic lives here."""

from __future__ import annotations

import functools
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="Train RNNs with BPTT or embedding-parallel, judged by rollout.",
)
# Outside a terminal (CI logs, pipes) Rich would wrap tables at 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="override a spec key: dotted.key=value (YAML value); repeatable")]


def _fail(msg: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _one_line_errors(command):
    """An unexpected exception becomes one line and exit 1; `--debug` shows the full traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as e:
            if kwargs.get("debug"):
                raise
            _fail(f"unexpected {type(e).__name__}: {e} (rerun with --debug for the traceback)", code=1)

    return wrapper


def _check_memory(specs, force: bool, source: Path) -> None:
    """Refuse (exit 2) a spec whose estimated memory exceeds the machine's, before anything is allocated."""
    from seqpar.train.memory import MemoryLimitError, check

    seen, notes = set(), []
    for s in specs:
        shape = s.model_dump_json(exclude={"seed", "name"})  # sweep points differing only by seed need one estimate
        if shape in seen:
            continue
        seen.add(shape)
        try:
            notes.append(check(s, force))
        except MemoryLimitError as e:
            _fail(f"{source}: {e}")
    if force and any("over the limit" in n for n in notes):
        err_console.print(f"[yellow]warning:[/] {next(n for n in notes if 'over the limit' in n)}", highlight=False)


def _exit_code(summary: dict, run_dir: Path, debug: bool) -> int:
    """Say what failed or was interrupted; 0 completed/diverged, 1 any failed, 130 interrupted."""
    for r in summary["runs"]:
        if r["status"] == "failed":
            err_console.print(
                f"[red]failed[/] {r['label']}: {r.get('error')} (traceback in {run_dir / 'summary.json'})", highlight=False, soft_wrap=True
            )
            if debug and r.get("traceback"):
                err_console.print(r["traceback"], highlight=False, markup=False)
        elif r["status"] == "diverged":
            err_console.print(f"[yellow]diverged[/] {r['label']}: {r.get('error')}", highlight=False, soft_wrap=True)
    if summary.get("error"):
        err_console.print(f"[red]failed[/]: {summary['error']}", highlight=False, soft_wrap=True)
        if debug and summary.get("traceback"):
            err_console.print(summary["traceback"], highlight=False, markup=False)
    if summary["status"] == "interrupted":
        err_console.print(
            f"[yellow]interrupted[/]: results so far are saved; continue with: seqpar run --resume {run_dir}",
            highlight=False,
            soft_wrap=True,
        )
        return 130
    return 1 if summary["status"] == "failed" else 0


def _resume(run_dir: Path, *, quiet: bool, debug: bool, force: bool) -> int:
    from seqpar.analysis.report import RichProgress, results_table
    from seqpar.records.layout import SPEC, SWEEP_SPEC, is_sweep_dir
    from seqpar.records.writer import RunDirBusy
    from seqpar.train.loop import NullProgress
    from seqpar.train.runner import ResumeError, load_run_spec, run_experiment

    if is_sweep_dir(run_dir):
        from seqpar.sweep import execute as sweeps

        plan = _load_plan(run_dir / SWEEP_SPEC, [])
        _check_memory([p.spec for p in plan.points], force, run_dir / SWEEP_SPEC)
        try:
            return sweeps.execute_sweep(plan, run_dir, console, err_console, quiet=quiet, plot=False, tensorboard=False, resume=True)
        except (ResumeError, RunDirBusy) as e:
            _fail(str(e))
    try:
        s = load_run_spec(run_dir)
    except ResumeError as e:
        _fail(str(e))
    _check_memory([s], force, run_dir / SPEC)
    console.print(f"[bold]{s.name}[/]: resuming {run_dir}")
    try:
        if quiet:
            summary = run_experiment(s, run_dir, NullProgress(), resume=True)
        else:
            with RichProgress(console) as progress:
                summary = run_experiment(s, run_dir, progress, resume=True)
    except (ResumeError, RunDirBusy) as e:
        _fail(str(e))
    console.print(results_table(summary))
    console.print(f"run record: {run_dir}")
    return _exit_code(summary, run_dir, debug)


def _load_plan(spec_path: Path, overrides: list[str] | None):
    """The spec's points: one for a plain spec, the validated grid for a spec with `sweep:`."""
    from seqpar.spec import SpecError, with_yaml_line
    from seqpar.sweep.plan import load_plan

    try:
        return load_plan(spec_path, overrides or [])
    except SpecError as e:
        _fail(with_yaml_line(e, spec_path, overrides or []))


@app.command()
def validate(spec: Annotated[Path, typer.Argument(help="YAML experiment spec")], set_: SetOpt = None) -> None:
    """Check a spec without running it (exit 2 with a one-line error if it is invalid)."""
    plan = _load_plan(spec, set_)
    s = plan.points[0].spec
    if plan.is_sweep:
        console.print(
            f"[green]ok[/] {spec}: {s.name}, sweep of {len(plan.points)} point(s) over "
            f"{', '.join(plan.axes) or '(no axes)'}, every point valid"
        )
        return
    console.print(f"[green]ok[/] {spec}: {s.name}, {len(s.methods)} method(s): {', '.join(m.display_label for m in s.methods)}")


@app.command()
@_one_line_errors
def run(
    spec: Annotated[Path | None, typer.Argument(help="YAML experiment spec (omit with --resume)")] = None,
    out: Annotated[Path | None, typer.Option(help="run directory (default results/<name>/<run-id>)")] = None,
    set_: SetOpt = None,
    results_root: Annotated[Path, typer.Option(help="root of default run directories")] = Path("results"),
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="validate and list the runs (sweep points) without running anything")] = False,
    plot: Annotated[bool, typer.Option("--plot", help="write PNG figures to RUN_DIR/plots at the end")] = False,
    tensorboard: Annotated[
        bool, typer.Option("--tensorboard", help="write TensorBoard event files to RUN_DIR/tensorboard (needs seqpar[tb])")
    ] = False,
    resume: Annotated[
        Path | None,
        typer.Option("--resume", help="continue the interrupted or crashed run in RUN_DIR (with its own spec)", metavar="RUN_DIR"),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="run even if the estimated memory exceeds the machine's")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="full tracebacks for unexpected errors")] = False,
) -> None:
    """Train every method of SPEC (every point of its `sweep:`), judge each by held-out rollout, write the run record."""
    from seqpar.sharding import is_writer, maybe_initialize_distributed
    from seqpar.sweep import execute as sweeps

    maybe_initialize_distributed()  # under a cluster launcher; must precede any JAX computation
    if resume is not None:
        if spec is not None or out is not None or set_:
            _fail("--resume RUN_DIR continues a run with the spec it started with; give no SPEC, --out or --set with it")
        raise typer.Exit(_resume(resume, quiet=quiet, debug=debug, force=force))
    if spec is None:
        _fail("missing SPEC: give a YAML experiment spec, or --resume RUN_DIR")
    plan = _load_plan(spec, set_)
    if dry_run:
        console.print(sweeps.plan_table(plan))
        raise typer.Exit(0)
    if tensorboard:
        from seqpar.analysis.tensorboard import INSTALL_HINT, available

        if not available():
            _fail(INSTALL_HINT)
    s = plan.points[0].spec
    _check_memory([p.spec for p in plan.points], force, spec)
    from seqpar.analysis.report import RichProgress, results_table
    from seqpar.records.writer import OutputError, new_run_dir
    from seqpar.train.loop import NullProgress
    from seqpar.train.runner import run_experiment

    try:
        # Multi-process runs: only process 0 writes the run record; the others write a scratch copy.
        run_dir = new_run_dir(results_root, s.name, out) if is_writer() else Path(tempfile.mkdtemp(prefix="seqpar-worker-"))
    except OutputError as e:
        _fail(str(e))
    if plan.is_sweep:
        raise typer.Exit(sweeps.execute_sweep(plan, run_dir, console, err_console, quiet=quiet, plot=plot, tensorboard=tensorboard))
    console.print(f"[bold]{s.name}[/]: {len(s.methods)} method(s), {s.train.steps} steps each -> {run_dir}")
    if quiet:
        summary = run_experiment(s, run_dir, NullProgress())
    else:
        with RichProgress(console) as progress:
            summary = run_experiment(s, run_dir, progress)
    console.print(results_table(summary))
    _log_shard_memory(summary)
    notes, warnings = sweeps.export_run(run_dir, plot=plot, tensorboard=tensorboard)
    for w in warnings:
        err_console.print(f"[yellow]warning:[/] {w}", highlight=False)
    for n in notes:
        console.print(n, highlight=False)
    console.print(f"run record: {run_dir}")
    raise typer.Exit(_exit_code(summary, run_dir, debug))


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
def tasks() -> None:
    """List the tasks: parameters with defaults, loss, and memoryless baseline."""
    from seqpar.tasks.catalog import tasks_table

    console.print(tasks_table())


PathsArg = Annotated[list[str], typer.Argument(help="run directories, sweep directories, directories above them, or glob patterns")]
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
) -> None:
    """Aggregate run records over seeds: rollout loss mean ± std, baseline fraction, time to target, cost, status."""
    from seqpar.analysis import compare as cmp

    if format_ not in cmp.FORMATS:
        _fail(f"--format {format_}: expected one of: {', '.join(cmp.FORMATS)}")
    try:
        rows, keys, warnings = cmp.compare(paths, by, metric, sort, diff_only)
    except cmp.CompareError as e:
        _fail(str(e))
    for w in warnings:
        err_console.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
    if format_ == "table":
        console.print(cmp.rich_table(rows, keys))
    else:
        text = {"markdown": cmp.markdown, "csv": cmp.to_csv, "json": cmp.to_json}[format_](rows, keys)
        sys.stdout.write(text)


@app.command()
def plot(
    paths: PathsArg,
    out: Annotated[Path, typer.Option("--out", help="directory for the PNG files (created)")],
    by: ByOpt = None,
    metric: MetricOpt = "rollout_loss_test",
) -> None:
    """Write PNG figures: rollout loss vs steps and seconds, objective gap, scaling vs length, final loss vs settings."""
    from seqpar.analysis.compare import CompareError
    from seqpar.analysis.plots import plot_records

    if out.exists() and not out.is_dir():
        _fail(f"--out {out}: is a file, expected a directory")
    try:
        files, warnings = plot_records(paths, out, by, metric)
    except CompareError as e:
        _fail(str(e))
    for w in warnings:
        err_console.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
    for f in files:
        console.print(str(f), highlight=False)
    if not files:
        err_console.print("[yellow]warning:[/] nothing to plot (no evaluation points in these records)")


@app.command()
def bench(
    spec: Annotated[Path | None, typer.Argument(help="YAML spec whose task and methods to measure (default: built in)")] = None,
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
) -> None:
    """Step time, memory and FLOP/s of every method against length and batch; writes bench.json and bench.png."""
    from seqpar.bench import measure as B
    from seqpar.bench.report import bench_table, overhead_table
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
        )
        B.check_overhead_args(overhead_steps, overhead_rounds)
        B.check_points(s, grid)
        run_dir = new_run_dir(results_root, "bench", out)
    except (B.BenchError, SpecError, OutputError) as e:
        _fail(str(e))
    console.print(f"[bold]bench[/] {s.name}: {B.machine()['summary']} -> {run_dir}")

    def on_point(r):
        line = f"  {r['label']:<14} {r['cell']:<6} T={r['length']:<6} B={r['batch']:<4} "
        if "reason" in r:
            console.print(line + f"skipped: {r['reason']}", highlight=False)
            return
        iters = r["step_metrics"].get("newton_iters_mean")
        line += f"{r['step_ms']['median']:9.3f} ms/step" + (f"  {iters:.1f} Newton iterations" if iters is not None else "")
        console.print(line, highlight=False)

    try:
        result = B.bench_to_dir(s, grid, run_dir, on_point, overhead_steps, overhead_rounds)
    except B.BenchError as e:
        _fail(str(e))
    console.print(bench_table(result))
    if result.get("loop_overhead"):
        console.print(overhead_table(result["loop_overhead"]))
    console.print(f"bench record: {run_dir / 'bench.json'}, plot: {run_dir / 'bench.png'}")


def main() -> None:  # console-script entry point
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()

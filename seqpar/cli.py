"""`seqpar` command line: parses arguments and delegates; no logic lives here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train RNNs with BPTT or embedding-parallel, judged by rollout.")
# Outside a terminal (CI logs, pipes) Rich would wrap tables at 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="override a spec key: dotted.key=value (YAML value); repeatable")]


def _fail(msg: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _load(spec_path: Path, overrides: list[str] | None):
    from seqpar.spec import SpecError, load_spec

    try:
        return load_spec(spec_path, overrides or [])
    except SpecError as e:
        _fail(str(e))


@app.command()
def validate(spec: Annotated[Path, typer.Argument(help="YAML experiment spec")], set_: SetOpt = None) -> None:
    """Check a spec without running it (exit 2 with a one-line error if it is invalid)."""
    s = _load(spec, set_)
    console.print(f"[green]ok[/] {spec}: {s.name}, {len(s.methods)} method(s): {', '.join(m.display_label for m in s.methods)}")


@app.command()
def run(
    spec: Annotated[Path, typer.Argument(help="YAML experiment spec")],
    out: Annotated[Optional[Path], typer.Option(help="run directory (default results/<name>/<run-id>)")] = None,
    set_: SetOpt = None,
    results_root: Annotated[Path, typer.Option(help="root of default run directories")] = Path("results"),
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    """Train every method of SPEC, judge each by held-out rollout, write the run record."""
    s = _load(spec, set_)
    from seqpar.report import RichProgress, results_table
    from seqpar.results import OutputError, new_run_dir
    from seqpar.runner import run_experiment
    from seqpar.train import NullProgress

    try:
        run_dir = new_run_dir(results_root, s.name, out)
    except OutputError as e:
        _fail(str(e))
    console.print(f"[bold]{s.name}[/]: {len(s.methods)} method(s), {s.train.steps} steps each -> {run_dir}")
    if quiet:
        summary = run_experiment(s, run_dir, NullProgress())
    else:
        with RichProgress(console) as progress:
            summary = run_experiment(s, run_dir, progress)
    console.print(results_table(summary))
    console.print(f"run record: {run_dir}")
    if summary["status"] == "interrupted":
        err_console.print("[yellow]interrupted[/]: results so far are saved")
        raise typer.Exit(130)
    raise typer.Exit(1 if summary["status"] == "failed" else 0)


def main() -> None:  # console-script entry point
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()

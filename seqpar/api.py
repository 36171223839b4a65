"""The Python API: what `seqpar run`, `seqpar compare` and a run directory give, for a notebook.

    import seqpar
    record = seqpar.run("experiments/quickstart.yaml", out="results/qs", overrides=["train.steps=50"])
    record.methods[0].rollout_loss_test
    rows = seqpar.compare(["results/qs"], by=["train.steps"]); rows.to_pandas()
    seqpar.load("results/qs").metrics()

The same functions the command line calls underneath (validation, the memory check, the
runner, the compare table), with Python values in and out instead of text and exit codes:
a bad spec raises `SpecError` (its one-line message), a run directory is never overwritten.
Importing this module imports no JAX; `run` does, when called.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seqpar.records.reader import read_metrics, read_summary

if TYPE_CHECKING:
    from seqpar.spec import Spec

__all__ = ["CompareRows", "MethodResult", "RunRecord", "compare", "load", "run"]


@dataclass(frozen=True)
class MethodResult:
    """One method's result in a run: the fields of its record in summary.json, typed."""

    label: str
    method: str  # its `type:`
    status: str  # completed, diverged, failed or interrupted
    steps_done: int
    rollout_loss_test: float | None  # the final held-out sequential rollout loss (the headline number)
    rollout_loss_val: float | None
    rollout_acc_test: float | None
    objective: float | None  # the training objective at the last evaluation
    baseline_loss: float | None  # the task's memoryless baseline (formula, else the trained one)
    steps_to_target: int | None  # judged on validation
    seconds_to_target: float | None
    step_time_ms: float | None
    steps_per_s: float | None
    compile_s: float | None
    peak_memory_mb: float | None
    wall_s: float | None  # training seconds (compile and evaluation excluded)
    lle: float | None  # largest Lyapunov exponent per step of the trained recurrence, last evaluation
    sequential_depth: float | None  # dependent steps on one training step's critical path
    stop_reason: str | None  # steps, max_seconds, or the status
    error: str | None
    record: dict[str, Any] = field(repr=False)  # the whole record as written (final, diagnostics, ...)

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> MethodResult:
        final = r.get("final") or {}
        return cls(
            label=r["label"],
            method=r.get("method", r["label"]),
            status=r["status"],
            steps_done=int(r.get("steps_done") or 0),
            rollout_loss_test=final.get("rollout_loss_test"),
            rollout_loss_val=final.get("rollout_loss_val"),
            rollout_acc_test=final.get("rollout_acc_test"),
            objective=final.get("objective"),
            baseline_loss=r.get("baseline_loss"),
            steps_to_target=r.get("steps_to_target"),
            seconds_to_target=r.get("seconds_to_target"),
            step_time_ms=r.get("step_time_ms"),
            steps_per_s=r.get("steps_per_s"),
            compile_s=r.get("compile_s"),
            peak_memory_mb=r.get("peak_memory_mb"),
            wall_s=r.get("wall_s"),
            lle=final.get("lle"),
            sequential_depth=r.get("sequential_depth"),
            stop_reason=r.get("stop_reason"),
            error=r.get("error"),
            record=r,
        )


@dataclass(frozen=True)
class RunRecord:
    """A run directory's summary.json, typed: the run's status and one `MethodResult` per method."""

    run_dir: Path
    name: str
    seed: int
    status: str  # completed, failed, interrupted (resume it) or running
    started: str | None
    finished: str | None
    spec: dict[str, Any] = field(repr=False)  # the resolved spec, as recorded
    task: dict[str, Any] = field(repr=False)  # loss name, baseline formula and value
    methods: list[MethodResult] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict, repr=False)  # summary.json as written

    @classmethod
    def from_summary(cls, run_dir: str | Path, summary: dict[str, Any]) -> RunRecord:
        return cls(
            run_dir=Path(run_dir),
            name=summary["name"],
            seed=summary["seed"],
            status=summary["status"],
            started=summary.get("started"),
            finished=summary.get("finished"),
            spec=summary["spec"],
            task=summary.get("task") or {},
            methods=[MethodResult.from_record(r) for r in summary["runs"]],
            summary=summary,
        )

    def method(self, label: str) -> MethodResult:
        """The result of the method labelled `label` (its type when it has no label)."""
        for m in self.methods:
            if m.label == label:
                return m
        raise KeyError(f"no method labelled {label!r} in {self.run_dir}; methods: {', '.join(m.label for m in self.methods)}")

    def metrics(self, label: str | None = None) -> list[dict[str, Any]]:
        """The logged points of metrics.jsonl (one dict per log/eval point), of one method if `label` is given."""
        lines = read_metrics(self.run_dir)
        return [ln for ln in lines if label is None or ln.get("method") == label]


def load(run_dir: str | Path) -> RunRecord:
    """The record of a run directory (raises `seqpar.records.reader.BadRecord` for a garbled or missing one)."""
    return RunRecord.from_summary(run_dir, read_summary(Path(run_dir)))


def _spec(spec: Spec | dict[str, Any] | str | Path, overrides: Sequence[str], data: Any = None, base_dir: Any = None) -> Spec:
    from seqpar.spec import Spec, SpecError, blame_overrides, parse_override, set_dotted, validate_spec

    if isinstance(spec, (str, Path)) and data is None:
        from seqpar.sweep.plan import load_plan

        plan = load_plan(spec, list(overrides))
        if plan.is_sweep:
            raise SpecError(f"{spec}: sweep: a grid of {len(plan.points)} runs; seqpar.run runs one spec (seqpar run runs a sweep)")
        return plan.points[0].spec
    if isinstance(spec, (str, Path)):
        from seqpar.spec import read_yaml, with_spec_dir

        raw = with_spec_dir(read_yaml(Path(spec)), Path(spec))
    else:
        raw = copy.deepcopy(spec.model_dump(mode="json") if isinstance(spec, Spec) else dict(spec))
    source = str(spec) if isinstance(spec, (str, Path)) else "spec"
    if data is not None:
        task = raw.get("task")
        if not (isinstance(task, dict) and task.get("type") == "dataset" and task.get("path") is None):
            raise SpecError(f"{source}: task: data= is given, so the task must be {{type: dataset}} with no path (the arrays are its data)")
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(raw, key, value, source=f"--set {item}")
    if "sweep" in raw or "tune" in raw:
        block = "sweep" if "sweep" in raw else "tune"
        raise SpecError(f"spec: {block}: seqpar.run runs one spec; use `seqpar run` for a sweep, `seqpar tune` for a study")
    try:
        return validate_spec(raw, source=source, base_dir=base_dir, data=data)
    except SpecError as e:
        raise blame_overrides(e, list(overrides)) from None


def _keep_data(spec: Spec, run_dir: Path) -> Spec:
    """A spec whose data were given in memory, with those arrays saved in the run directory (so a
    resume, a worker or a later reader has them) and `task.path` pointing there."""
    import numpy as np

    from seqpar.records.layout import DATA
    from seqpar.records.writer import atomic_write
    from seqpar.spec import validate_spec

    given = spec.task.given
    atomic_write(run_dir / DATA, lambda f: np.savez(f, **given.arrays), mode="wb")
    raw = spec.model_dump(mode="json")
    raw["task"]["path"] = str((run_dir / DATA).resolve())
    return validate_spec(raw, source=str(run_dir / DATA))


def run(
    spec: Spec | dict[str, Any] | str | Path,
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    results_root: str | Path = "results",
    tracker: Sequence[str] = (),
    tracking_uri: str | None = None,
    progress: bool = False,
    force: bool = False,
    data: dict[str, Any] | None = None,
    base_dir: str | Path | None = None,
) -> RunRecord:
    """Train every method of `spec` into a new run directory and return its record.

    `spec`: a YAML path, a dict as in YAML, or a `seqpar.spec.Spec`. `overrides`: `--set`
    assignments (`"train.steps=50"`). A relative path or module in a YAML file resolves against
    the file's directory; in a dict, against `base_dir` (default: the working directory).
    `data`: arrays in memory for `task: {type: dataset}` with no `path` (the keys and checks of
    a dataset file: `x`, `y`, optionally `mask`, `score_at`, `x_val`, ...); they are saved as
    the run directory's `data.npz`, which the recorded spec names, so the run resumes like any.
    `out`: the run directory (must be new or empty; default `results_root/<name>/<run id>`).
    `tracker`: live trackers besides metrics.jsonl (`"tensorboard"`, `"mlflow"`; `tracking_uri`
    for MLflow). `progress`: Rich bars on stdout. `force`: run even if the estimated memory
    exceeds the machine's. Raises `SpecError` for a bad spec, `MemoryLimitError` for one too big,
    `OutputError` for an unusable `out`, `ValueError` for a tracking URI MLflow cannot open. A
    method that fails or diverges is a result (its `status`), not an exception."""
    from seqpar.records.writer import new_run_dir
    from seqpar.track import Tracking
    from seqpar.train.loop import NullProgress
    from seqpar.train.memory import check_all
    from seqpar.train.runner import run_experiment
    from seqpar.train.usercode import check_user_code

    s = _spec(spec, overrides, data, base_dir)
    tracking = Tracking.of(list(tracker), tracking_uri)
    hint = tracking.missing()
    if hint:
        raise ImportError(hint)
    tracking.check()  # a tracking URI MLflow cannot open: ValueError, before anything is written
    for note in check_all([s], force):
        warnings.warn(note, stacklevel=2)
    for note in check_user_code([s]):
        warnings.warn(note, stacklevel=2)
    run_dir = new_run_dir(Path(results_root), s.name, Path(out) if out is not None else None)
    if data is not None:
        s = _keep_data(s, run_dir)
    if progress:
        from rich.console import Console

        from seqpar.analysis.report import RichProgress

        with RichProgress(Console()) as bars:
            summary = run_experiment(s, run_dir, bars, tracking=tracking)
    else:
        summary = run_experiment(s, run_dir, NullProgress(), tracking=tracking)
    return RunRecord.from_summary(run_dir, summary)


class CompareRows(list):
    """`seqpar compare`'s rows: one dict per (method, settings) with the metric's mean, std and n
    over seeds (the keys of `seqpar compare --format json`); `keys` are the settings grouped by,
    `warnings` what was skipped and why."""

    def __init__(self, rows: list[dict[str, Any]], keys: list[str], warnings: list[str]):
        super().__init__(rows)
        self.keys = keys
        self.warnings = warnings

    def flat(self) -> list[dict[str, Any]]:
        """One flat dict per row, as `--format csv` writes it (settings as columns)."""
        from seqpar.analysis.compare import flat_row

        return [flat_row(r, self.keys) for r in self]

    def to_pandas(self) -> Any:
        """The flat rows as a `pandas.DataFrame` (needs pandas: pip install 'seqpar[pandas]')."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("CompareRows.to_pandas needs pandas: pip install 'seqpar[pandas]' (or pip install pandas)") from None
        return pd.DataFrame(self.flat())


def compare(
    paths: str | Path | Sequence[str | Path],
    by: Sequence[str] | None = None,
    metric: str = "rollout_loss_test",
    sort: str | None = None,
    diff_only: bool = False,
) -> CompareRows:
    """`seqpar compare` as rows: run, sweep or study directories (or globs) aggregated over seeds.

    `by`: the settings to group by (dotted keys; default: swept and differing settings).
    Raises `seqpar.analysis.compare.CompareError` for a bad metric or key, or nothing to read."""
    from seqpar.analysis import compare as cmp

    if isinstance(paths, (str, Path)):
        paths = [paths]
    rows, keys, notes = cmp.compare([str(p) for p in paths], list(by) if by is not None else None, metric, sort, diff_only)
    return CompareRows(rows, keys, notes)

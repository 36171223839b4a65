"""What every study's renderer needs: its results from the store, grouped, and how it was run."""

from __future__ import annotations

import functools
import json
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from seqpar.analysis.findings.stats import fmt
from seqpar.analysis.findings.store import ROOT, NotInStore, read_study, require, study_dir
from seqpar.records.layout import SWEEP_INDEX
from seqpar.records.reader import Result, load, read_metrics, results


@functools.cache
def study_results(store: Path, name: str) -> tuple[Result, ...]:
    """Every method record of the study's runs (cached per process: a regeneration reads each once)."""
    folder = require(name, store)
    loaded = load([folder])
    return tuple(results(loaded.runs))


def with_optional(store: Path, primary: str, *optional: str) -> list[Result]:
    """The primary study's results (`NotInStore` without it) and those of the optional studies the store holds."""
    out = list(study_results(store, primary))
    for name in optional:
        try:
            out += study_results(store, name)
        except NotInStore:
            pass
    return out


def provenances(store: Path, *names: str) -> str:
    """Each study's provenance; a study the store lacks is said to be not measured (the first is required)."""
    parts = [provenance(store, names[0])]
    for name in names[1:]:
        try:
            parts.append(provenance(store, name))
        except NotInStore:
            parts.append(f"`{name}`: not measured (the findings store holds no record of it).\n")
    return "\n".join(parts)


def ratio(r: Result, metric: str = "rollout_loss_test") -> float | None:
    """The metric ÷ the run's memoryless baseline (None where either is missing)."""
    v, b = r.value(metric), r.value("baseline_loss")
    return v / b if v is not None and b else None


def grouped(rs: Iterable[Result], *keys: str) -> dict[tuple, list[Result]]:
    """Results by the values of `keys` (settings, or `label`), each group sorted by seed."""
    out: dict[tuple, list[Result]] = defaultdict(list)
    for r in rs:
        out[tuple(r.label if k == "label" else r.settings.get(k) for k in keys)].append(r)
    return {k: sorted(v, key=lambda r: r.seed if r.seed is not None else -1) for k, v in out.items()}


def median(values: Iterable[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return statistics.median(got) if got else None


def steps_cell(rs: list[Result], metric: str = "steps_to_target") -> str:
    """Steps (or seconds) to the target: the median over the seeds that reached it, and how many did."""
    got = [r.value(metric) for r in rs]
    reached = [v for v in got if v is not None]
    if not reached:
        return f"never (0/{len(rs)})"
    return f"{fmt(statistics.median(reached), 3)} ({len(reached)}/{len(rs)})"


def curve(r: Result, key: str) -> list[tuple[int, float]]:
    """(step, value) of `key` along the run's kept evaluation lines."""
    lines = read_metrics(r.run_dir)
    return [(ln["step"], ln[key]) for ln in lines if ln.get("method") == r.label and isinstance(ln.get(key), (int, float))]


def provenance(store: Path, name: str) -> str:
    """The study's commands, machine, dates and training time, as one paragraph."""
    info = read_study(name, store)
    parts = []
    for src in info.get("sources", []):
        when = src.get("finished") or src.get("date") or ""
        hours = src.get("training_seconds")
        ran = f", {src['runs']} run{'s' if src['runs'] != 1 else ''}" if src.get("runs") else ""
        spent = f", {fmt(hours / 60, 2)} min of training" if hours else ""
        if src.get("seconds"):
            spent = f", {fmt(src['seconds'] / 60, 2)} min of solves (compiles included)"
        parts.append(f"`{src['name']}`{ran}{spent} on {src.get('machine') or 'an unnamed machine'}, {when[:10]}")
    commands = "\n".join(f"    {c}" for c in info.get("commands", []))
    return f"Produced by\n\n{commands}\n\n({'; '.join(parts)}; record: `findings/{name}/`).{coverage(store, name)}\n"


def coverage(store: Path, name: str) -> str:
    """A sentence where the record holds fewer sweep points than the spec it names declares (a study run
    at a reduced sweep, by the `--set` in its command), else nothing."""
    import itertools

    import yaml

    info = read_study(name, store)
    sources = [src for src in info.get("sources", []) if src.get("runs")]
    specs = set()
    for src in sources:
        index = study_dir(name, store) / src["name"] / SWEEP_INDEX
        if index.is_file():
            specs.add(json.loads(index.read_text()).get("source"))
    if len(specs) != 1 or None in specs or not (ROOT / str(next(iter(specs)))).is_file():
        return ""
    spec = next(iter(specs))
    raw = yaml.safe_load((ROOT / spec).read_text()) or {}
    sweep = raw.get("sweep") or {}
    if not isinstance(sweep, dict) or not all(isinstance(v, list) for v in sweep.values()):
        return ""
    declared = len(list(itertools.product(*sweep.values())))
    held = sum(src["runs"] for src in sources)
    out = ""
    if held < declared:
        axes = ", ".join(f"`{k}`" for k in sweep)
        out += (
            f" **The record holds {held} of the {declared} sweep points `{spec}` declares** (over {axes}): the commands above "
            "narrow the sweep; every table on this page covers those points only."
        )
    methods = raw.get("methods") or []
    named = [m.get("label") or m.get("type") for m in methods if isinstance(m, dict)]
    ran = {r.label for r in study_results(store, name)}
    if ran and (missing := [m for m in named if m not in ran]):
        them = "it" if len(missing) == 1 else "them"
        out += (
            f" **The record has no run of {', '.join(f'`{m}`' for m in missing)}**, which the spec lists: the commands above "
            f"leave {them} out."
        )
    return out


def by_label(rs: Iterable[Result], order: Callable[[str], Any] | None = None) -> list[str]:
    labels = list(dict.fromkeys(r.label for r in rs))
    return sorted(labels, key=order) if order else labels


def new_figure(width: float, height: float) -> Any:
    """A matplotlib figure drawn without a display (the Agg canvas), laid out to fit."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def lle_note(rs: Iterable[Result]) -> str:
    """How the records' LLE was estimated: the burn-in each rollout ran before counting (records
    written before the burn-in existed counted every step, and say nothing)."""
    burns = sorted({r.record.get("lle_burn_in") for r in rs}, key=lambda b: -1 if b is None else b)
    if burns == [None]:
        return "the LLE counted from the first step (no burn-in: a transient bias of the order of 1/T)"
    said = " or ".join(str(b) for b in burns if b is not None)
    older = " in the runs that record one (the others counted from the first step)" if None in burns else ""
    return f"the LLE after a burn-in of {said} steps per rollout{older} (`lle_stderr` in the records: its standard error)"

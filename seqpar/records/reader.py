"""Reading run records back: run dirs, sweep dirs and globs -> per-method results, never a traceback.

A *result* is one method's record inside one run directory's `summary.json`.
Its *settings* are the run's resolved spec flattened to dotted keys (`task.length`,
`model.hidden`, ...) plus its own method's config as `method.*` (a sweep key
`methods.1.consistency_weight` is `method.consistency_weight` here).

Corrupt or partial run directories (truncated JSON, no summary yet, a foreign
file) are skipped with a one-line warning that names them; `compare`, `plot` and
the TensorBoard export all read through here.
"""

from __future__ import annotations

import glob
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

from seqpar.records.layout import FINAL, METRICS, SPEC, SUMMARY, SWEEP_INDEX, TRIALS, TUNE_SPEC


@dataclass(frozen=True)
class RunDir:
    path: Path
    summary: dict[str, Any]


@dataclass(frozen=True)
class Result:
    """One method's run record from one run directory."""

    run_dir: Path
    label: str
    method: str
    status: str
    seed: int | None
    record: dict[str, Any]
    settings: dict[str, Any]
    task: dict[str, Any] = field(default_factory=dict)  # summary["task"]: loss name, baseline formula

    def sources(self) -> tuple[dict[str, Any], ...]:
        """Where metrics are looked up, in order: `final`, `diagnostics`, the record itself."""
        return tuple(d for d in (self.record.get("final"), self.record.get("diagnostics"), self.record) if isinstance(d, dict))

    def value(self, metric: str) -> float | None:
        """`final[metric]`, else `diagnostics[metric]`, else the record's own field; None if absent or not a finite number."""
        for src in self.sources():
            if metric in src:
                return number(src[metric])
        return None


def number(v: Any) -> float | None:
    """A finite float, or None for anything else (None, NaN, strings, booleans)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


@dataclass
class Loaded:
    runs: list[RunDir] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    swept: list[str] = field(default_factory=list)  # sweep axes (as result settings keys) of the sweeps given


def load(paths: Sequence[str | Path]) -> Loaded:
    """Run directories from run dirs, sweep dirs, parents of either, and glob patterns."""
    out = Loaded()
    seen: set[Path] = set()
    for arg in paths:
        arg = str(arg)
        matches = [Path(arg)] if Path(arg).exists() or not glob.has_magic(arg) else [Path(p) for p in sorted(glob.glob(arg))]
        if not matches or not matches[0].exists():
            out.warnings.append(f"{arg}: no such file or directory" if not glob.has_magic(arg) else f"{arg}: matches nothing")
            continue
        for path in matches:
            for run_dir in _run_dirs(path, out):
                if run_dir.resolve() in seen:
                    continue
                seen.add(run_dir.resolve())
                try:
                    out.runs.append(RunDir(run_dir, read_summary(run_dir)))
                except BadRecord as e:
                    out.warnings.append(f"skipping {run_dir}: {e}")
    return out


def _run_dirs(path: Path, out: Loaded) -> list[Path]:
    if path.is_file():
        if path.name in (SUMMARY, SPEC, METRICS):
            return [path.parent]
        if path.name == SWEEP_INDEX:
            return _run_dirs(path.parent, out)
        out.warnings.append(f"skipping {path}: not a run directory (expected a directory with {SUMMARY})")
        return []
    if (path / SUMMARY).exists():
        return [path]
    if (path / SPEC).exists():
        out.warnings.append(f"skipping {path}: no {SUMMARY} (the run was killed before it started or is still starting)")
        return []
    dirs: list[Path] = []
    if (path / SWEEP_INDEX).exists():
        dirs += _sweep_points(path, out)
    # Any other records below (a results/ tree, a sweep without a readable index).
    for summary in sorted(path.rglob(SUMMARY)):
        if summary.parent not in dirs:
            dirs.append(summary.parent)
    for spec in sorted(path.rglob(SPEC)):
        if not (spec.parent / SUMMARY).exists():
            out.warnings.append(f"skipping {spec.parent}: no {SUMMARY} (the run was killed before it started or is still starting)")
    if not dirs:
        out.warnings.append(f"{path}: no run records found (no {SUMMARY} below it)")
    return dirs


def _sweep_points(sweep_dir: Path, out: Loaded) -> list[Path]:
    try:
        index = json.loads((sweep_dir / SWEEP_INDEX).read_text())
        if not isinstance(index.get("axes"), dict) or not isinstance(index.get("points"), list):
            raise TypeError("no 'axes' mapping or 'points' list")
    except (OSError, ValueError, TypeError, AttributeError, RecursionError) as e:
        out.warnings.append(f"{sweep_dir / SWEEP_INDEX}: unreadable sweep index ({e}); using the run records found below it")
        return []
    for key in index["axes"]:
        key = setting_key(str(key))
        if key not in out.swept and key != "seed":
            out.swept.append(key)
    dirs, not_run = [], []
    for p in (p for p in index["points"] if isinstance(p, dict)):
        d = sweep_dir / str(p.get("dir", ""))
        if (d / SUMMARY).exists():
            dirs.append(d)
        elif p.get("status") == "failed":
            out.warnings.append(f"sweep point {d}: failed before writing a record: {p.get('error', 'no error recorded')}")
        else:
            not_run.append(str(p.get("dir")))
    if not_run:
        out.warnings.append(
            f"sweep {sweep_dir}: {len(not_run)} point(s) have no record yet ({', '.join(not_run[:3])}{', ...' if len(not_run) > 3 else ''})"
        )
    return dirs


# A summary nests a few levels (spec -> methods -> optimizer); everything that reads one recurses
# through it (flattening settings, rendering), so a deeper one is refused as corrupt.
MAX_DEPTH = 64


def _depth_exceeds(obj: Any, limit: int) -> bool:
    """True if `obj` nests dicts/lists more than `limit` levels deep (checked without recursion)."""
    stack = [(obj, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth >= limit:
                return True
            stack.extend((v, depth + 1) for v in (node.values() if isinstance(node, dict) else node))
    return False


class BadRecord(ValueError):
    """A run directory whose summary.json is missing, corrupt or not a seqpar summary; the message is one line."""


@overload
def read_summary(run_dir: Path, *, missing_ok: Literal[False] = False) -> dict[str, Any]: ...
@overload
def read_summary(run_dir: Path, *, missing_ok: bool) -> dict[str, Any] | None: ...
def read_summary(run_dir: Path, *, missing_ok: bool = False) -> dict[str, Any] | None:
    """The parsed, shape-checked summary.json; BadRecord with a one-line reason otherwise.

    With `missing_ok`, a run directory without a summary yet gives None."""
    try:
        text = (Path(run_dir) / SUMMARY).read_text()
    except FileNotFoundError:
        if missing_ok:
            return None
        raise BadRecord(f"no {SUMMARY}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BadRecord(f"cannot read {SUMMARY} ({e})") from None
    try:
        s = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadRecord(f"{SUMMARY} is not valid JSON ({e.msg} at line {e.lineno}); the file is corrupt or truncated") from None
    except RecursionError:
        raise BadRecord(f"{SUMMARY} nests too deeply to read; not a seqpar run summary") from None
    if _depth_exceeds(s, MAX_DEPTH):
        raise BadRecord(f"{SUMMARY} nests more than {MAX_DEPTH} levels deep; not a seqpar run summary")
    if not isinstance(s, dict) or not isinstance(s.get("runs"), list) or not isinstance(s.get("spec"), dict):
        raise BadRecord(f"{SUMMARY} is not a seqpar run summary (no 'runs' list or 'spec' mapping)")
    for r in s["runs"]:
        if not isinstance(r, dict) or not isinstance(r.get("label"), str) or not isinstance(r.get("status"), str):
            raise BadRecord(f"{SUMMARY}: a method record lacks 'label' or 'status'")
    return s


STUDY_PART = "study"  # the settings key saying where in a study directory a record lies: trial or final


def study_part(run_dir: Path) -> str | None:
    """`trial` for a record under a study directory's trials/, `final` under its final/ (the
    best settings re-run on the tune seeds); None outside a study. A trial and its final
    re-run can share every setting and the seed: this is what keeps them apart."""
    run_dir = Path(run_dir)
    for parent in list(run_dir.parents)[:3]:  # trials/<index>-<label>/<number>/ is the deepest
        if (parent / TUNE_SPEC).is_file():
            first = run_dir.relative_to(parent).parts[0]
            return {TRIALS: "trial", FINAL: "final"}.get(first)
    return None


# Settings a record leaves out at their default (`seqpar.spec.ModelConfig` records one layer as
# before stacks existed, so old hashes hold): read back as that default, so `--by model.layers`
# says 1, not "—".
OMITTED_AT_DEFAULT = {"model.layers": 1}


def results(runs: list[RunDir]) -> list[Result]:
    out = []
    for rd in runs:
        s = rd.summary
        spec = s["spec"]
        common = flatten({k: v for k, v in spec.items() if k not in ("methods", "seed")})
        if isinstance(spec.get("model"), dict):
            common = {**OMITTED_AT_DEFAULT, **common}
        part = study_part(rd.path)
        if part is not None:
            common[STUDY_PART] = part
        methods = {
            (m.get("label") or m.get("type")): m
            for m in (spec.get("methods") if isinstance(spec.get("methods"), list) else [])
            if isinstance(m, dict)
        }
        for r in s["runs"]:
            settings = dict(common)
            settings.update(flatten(methods.get(r["label"], {}), "method."))
            seed = s.get("seed", spec.get("seed"))
            seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
            task = s["task"] if isinstance(s.get("task"), dict) else {}
            out.append(Result(rd.path, r["label"], str(r.get("method", r["label"])), r["status"], seed, r, settings, task))
    return out


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """`{"task": {"length": 8}}` -> `{"task.length": 8}`; lists by index."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(obj, list) and obj and any(isinstance(v, (dict, list)) for v in obj):
        out = {}
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}{i}."))
        return out
    return {prefix.rstrip("."): obj}


def setting_key(key: str) -> str:
    """A spec's dotted key as a result settings key: `methods.1.lr` -> `method.lr`."""
    return re.sub(r"^methods\.\d+\.", "method.", key)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """A run's metrics.jsonl lines; a torn last line (crash mid-write) or any garbage line is skipped."""
    return read_metrics_checked(run_dir)[0]


def read_metrics_checked(run_dir: Path) -> tuple[list[dict[str, Any]], int]:
    """(lines, how many lines were skipped as corrupt), not counting a torn last line, which a
    process killed mid-write leaves. A line is kept when it is a JSON object with a string
    `method` and a non-negative integer `step`: everything downstream sorts and groups by those."""
    lines, bad = [], 0
    try:
        with open(Path(run_dir) / METRICS, errors="replace") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except (json.JSONDecodeError, RecursionError):
                    bad += line.endswith("\n")  # no newline: the torn last line of a kill, not corruption
                    continue
                step = rec.get("step") if isinstance(rec, dict) else None
                if isinstance(rec.get("method") if isinstance(rec, dict) else None, str) and _is_step(step):
                    lines.append(rec)
                else:
                    bad += 1
    except OSError:
        pass
    return lines, bad


def _is_step(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0

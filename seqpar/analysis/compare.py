"""`seqpar compare`: aggregate run records over seeds into one table (Rich, markdown, CSV or JSON).

Results (one method's record in one run directory, see `seqpar.records.reader`) are
grouped by method label and the grouping keys; the seed is what a group
aggregates over. By default the grouping keys are the swept keys of any sweep
given plus every setting that differs between runs (of the same method).
Everything here is a plain function of loaded records, so tests build records by hand.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from seqpar.analysis.at_time import At, add_column, annotate, flat, results_at
from seqpar.records.reader import STUDY_PART, Result, load, results, setting_key

# Numbers a row reports beside the headline metric; also valid `--sort` keys.
ROW_NUMBERS = ("mean", "std", "n", "baseline_frac", "steps_to_target", "seconds_to_target", "step_time_ms", "peak_memory_mb", "lle")


# Metrics every run record has (possibly as null, e.g. a run that failed before its first evaluation).
STANDARD_METRICS = (
    "rollout_loss_test",
    "rollout_loss_val",
    "rollout_loss_train",
    "rollout_acc_test",
    "rollout_acc_val",
    "objective",
    "step_time_ms",
    "steps_per_s",
    "peak_memory_mb",
    "wall_s",
    "compile_s",
    "steps_to_target",
    "seconds_to_target",
)


# Settings that follow the seed unless pinned (a dataset's split shuffle): they vary with it and
# are what a group aggregates over, not a grouping key (a sweep that sweeps one still shows it).
SEED_DERIVED = ("task.split_seed",)


class CompareError(Exception):
    """Bad `compare`/`plot` arguments (unknown metric or key, nothing to read); the CLI exits 2."""


# ----------------------------------------------------------------------------- grouping


def varying_keys(rs: list[Result]) -> list[str]:
    """Settings with more than one value among the results that have them.

    `method.*` keys are compared only within one method label (BPTT has no
    consistency weight; that is not a difference). A key some records lack
    (written by an older seqpar, or another task type, which `task.type` shows)
    is not a difference by itself."""
    keys: list[str] = []
    for r in rs:
        keys += [k for k in r.settings if k not in keys]
    out = []
    for k in keys:
        if k in SEED_DERIVED:
            continue
        by_label: dict[str, set[str]] = {}
        for r in rs:
            if k in r.settings:
                by_label.setdefault(r.label if k.startswith("method.") else "", set()).add(hashable(r.settings[k]))
        if any(len(v) > 1 for v in by_label.values()):
            out.append(k)
    return out


def hashable(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def group_keys(rs: list[Result], loaded_swept: list[str], by: list[str] | None) -> list[str]:
    keys = _group_keys(rs, loaded_swept, by)
    # A study's trials and its final re-runs are never one group, whatever --by says.
    if STUDY_PART not in keys and len({r.settings.get(STUDY_PART) for r in rs}) > 1:
        keys.insert(0, STUDY_PART)
    return keys


def _group_keys(rs: list[Result], loaded_swept: list[str], by: list[str] | None) -> list[str]:
    if by:
        known = {k for r in rs for k in r.settings} | {"seed"}
        keys = []
        for raw in by:
            for k in filter(None, (p.strip() for p in raw.split(","))):
                k = setting_key(k)
                if k not in known:
                    close = difflib.get_close_matches(k, sorted(known), n=3, cutoff=0.5)
                    hint = (
                        f"; did you mean {' or '.join(close)}?" if close else f" (settings look like {', '.join(sorted(known)[:4])}, ...)"
                    )
                    raise CompareError(f"--by {k}: no such setting in these runs{hint}")
                keys.append(k)
        return keys
    keys = [k for k in loaded_swept if any(k in r.settings for r in rs)]
    return keys + [k for k in varying_keys(rs) if k not in keys]


def known_metrics(rs: list[Result]) -> list[str]:
    names: list[str] = []
    for r in rs:
        for src in r.sources():
            names += [k for k, v in src.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in names]
    return names


def val_companion(metric: str) -> str | None:
    """The validation counterpart of a test metric (`rollout_loss_test` -> `rollout_loss_val`), shown beside it."""
    return metric.removesuffix("_test") + "_val" if metric.endswith("_test") else None


def _mean_std_of(vals: list[float]) -> tuple[float | None, float | None]:
    return (statistics.fmean(vals) if vals else None), (statistics.stdev(vals) if len(vals) > 1 else None)


def aggregate(
    rs: list[Result],
    keys: list[str],
    metric: str = "rollout_loss_test",
) -> list[dict[str, Any]]:
    """One row per (method label, values of `keys`): mean/std/n of `metric` over the group's runs,
    and of its validation counterpart (`val_*`) when `metric` is a test metric.

    std is the sample standard deviation (n - 1), None for n = 1; runs without a
    finite value (failed, diverged before an evaluation) are not in n but are in
    the status counts. Steps and seconds to target are judged on validation (see the loop)."""
    if rs and metric not in STANDARD_METRICS and metric not in known_metrics(rs):
        raise CompareError(f"--metric {metric}: not recorded in these runs; known: {', '.join(known_metrics(rs))}")
    groups: dict[tuple, list[Result]] = {}
    for r in rs:
        gid = (r.label, *(hashable(r.seed if k == "seed" else r.settings.get(k)) for k in keys))
        groups.setdefault(gid, []).append(r)
    loss_like = "loss" in metric or metric == "objective"
    val_metric = val_companion(metric)
    rows = []
    for members in groups.values():
        vals = [v for v in (m.value(metric) for m in members) if v is not None]
        val_mean, val_std = _mean_std_of([v for v in (m.value(val_metric) for m in members) if v is not None] if val_metric else [])
        frac_metric = metric if loss_like else "rollout_loss_test"
        pairs = [(m.value(frac_metric), m.value("baseline_loss")) for m in members]
        fracs = [v / b for v, b in pairs if v is not None and b is not None and b > 0]
        with_target = [m for m in members if any(m.settings.get(f"train.target_{k}") is not None for k in ("loss", "fraction"))]
        reached = [m for m in with_target if m.value("steps_to_target") is not None]
        statuses: dict[str, int] = {}
        for m in members:
            statuses[m.status] = statuses.get(m.status, 0) + 1
        first = members[0]
        rows.append(
            {
                "method": first.label,
                "settings": {k: (first.seed if k == "seed" else first.settings.get(k)) for k in keys},
                "metric": metric,
                "mean": statistics.fmean(vals) if vals else None,
                "std": statistics.stdev(vals) if len(vals) > 1 else None,
                "n": len(vals),
                "val_metric": val_metric,
                "val_mean": val_mean,
                "val_std": val_std,
                "runs": len(members),
                "baseline_frac": statistics.fmean(fracs) if fracs else None,
                "baseline_frac_of": frac_metric,
                "target": bool(with_target),
                "reached": len(reached),
                "steps_to_target": _median([m.value("steps_to_target") for m in reached]),
                "seconds_to_target": _median([m.value("seconds_to_target") for m in reached]),
                "step_time_ms": _median([m.value("step_time_ms") for m in members]),
                "peak_memory_mb": max((v for v in (m.value("peak_memory_mb") for m in members) if v is not None), default=None),
                # The trained recurrence's largest Lyapunov exponent at the last evaluation (`seqpar.model.lle`).
                "lle": _mean_std_of([v for v in (m.value("lle") for m in members) if v is not None])[0],
                "status": statuses,
                "seeds": sorted({m.seed for m in members if m.seed is not None}),
                "run_dirs": [str(m.run_dir) for m in members],
            }
        )
    return rows


def _median(vals: list[float | None]) -> float | None:
    present = [v for v in vals if v is not None]
    return statistics.median(present) if present else None


def natural_key(v: Any) -> tuple:
    if v is None:
        return (2, "")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, v)
    return (1, str(v))


def sort_rows(
    rows: list[dict[str, Any]], keys: list[str], sort: str | None = None, method_order: list[str] | None = None
) -> list[dict[str, Any]]:
    """Default: by the settings (natural order), then by method in order of appearance.

    `sort`: `metric` (the headline mean), a row number (`step_time_ms`, ...), `method`
    or a settings key; a leading `-` sorts descending. Missing values go last."""
    order = {m: i for i, m in enumerate(method_order or [])}
    rows = sorted(rows, key=lambda r: (*(natural_key(r["settings"].get(k)) for k in keys), order.get(r["method"], len(order)), r["method"]))
    if not sort:
        return rows
    desc = sort.startswith("-")
    key = sort.lstrip("-")
    key = "mean" if key in ("metric", rows[0]["metric"] if rows else "") else setting_key(key)
    if key == "method":

        def get(r):
            return r["method"]
    elif key in ROW_NUMBERS:

        def get(r):
            return r[key]
    elif key in keys:

        def get(r):
            return r["settings"].get(key)
    else:
        raise CompareError(
            f"--sort {sort}: expected metric, method, one of {', '.join(ROW_NUMBERS[3:])} or a shown setting ({', '.join(keys) or 'none'})"
        )
    present = [r for r in rows if get(r) is not None]
    missing = [r for r in rows if get(r) is None]
    return sorted(present, key=lambda r: natural_key(get(r)), reverse=desc) + missing


def drop_constant(rows: list[dict[str, Any]], keys: list[str]) -> list[str]:
    """`--diff-only`: the keys whose value is not the same in every row."""
    return [k for k in keys if len({hashable(r["settings"].get(k)) for r in rows}) > 1]


def compare(
    paths: Sequence[str | Path],
    by: list[str] | None = None,
    metric: str = "rollout_loss_test",
    sort: str | None = None,
    diff_only: bool = False,
    at: At | None = None,
) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """Load, group and sort: (rows, settings keys shown, warnings). Raises CompareError on bad arguments.

    `at`: read every run at its last evaluation within that training budget (`seqpar.analysis.at_time`)."""
    loaded = load(paths)
    rs = results(loaded.runs)
    if not rs:
        raise CompareError("nothing to compare: " + ("; ".join(loaded.warnings) or "no run records"))
    keys = group_keys(rs, loaded.swept, by)
    if at is not None:
        rs = results_at(rs, at)
    rows = aggregate(rs, keys, metric)
    if at is not None:
        annotate(rows, rs, at)
    method_order = list(dict.fromkeys(r.label for r in rs))
    rows = sort_rows(rows, keys, sort, method_order)
    if diff_only:
        keys = drop_constant(rows, keys)
    return rows, keys, loaded.warnings


# ----------------------------------------------------------------------------- rendering


def _num(v: Any, spec: str = ".4g") -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def decimals(v: float, figures: int = 4, at_least: int = 4) -> int | None:
    """Decimal places that show `v` to `figures` significant figures (and at least `at_least`
    places); None where that would take more than 12 (write it in e-notation instead)."""
    if v == 0 or not math.isfinite(v):
        return at_least
    places = max(at_least, figures - 1 - math.floor(math.log10(abs(v))))
    return places if places <= 12 else None


def sig(v: float, places: int | None) -> str:
    return format(v, f".{places}f") if places is not None else format(v, ".3e")


def _mean_std(r: dict[str, Any], prefix: str = "") -> str:
    """`mean ± std`, both to the places that give the mean 4 significant figures: a small loss
    (0.002388) keeps its digits instead of reading 0.0024, and a number is rounded, never cut."""
    mean, std = r[prefix + "mean"], r[prefix + "std"]
    if mean is None:
        return "—"
    places = decimals(mean)
    return f"{sig(mean, places)} ± {sig(std, places)}" if std is not None else sig(mean, places)


def _to_target(r: dict[str, Any], field_: str, spec: str) -> str:
    if not r["target"]:
        return "—"
    v = r[field_]
    return f"{'never' if v is None else format(v, spec)} ({r['reached']}/{r['runs']})"


def _status(r: dict[str, Any]) -> str:
    return " ".join(f"{n} {s}" for s, n in sorted(r["status"].items(), key=lambda kv: (kv[0] != "completed", kv[0])))


def short_names(keys: list[str]) -> dict[str, str]:
    """Column headers: the last part of a dotted key when that is unambiguous."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}


def text_rows(rows: list[dict[str, Any]], keys: list[str]) -> tuple[list[str], list[list[str]]]:
    metric = rows[0]["metric"] if rows else "rollout_loss_test"
    frac_of = rows[0]["baseline_frac_of"] if rows else metric
    # Records written before the validation split have no val numbers: no empty column for them.
    val_metric = rows[0].get("val_metric") if rows and any(r.get("val_mean") is not None for r in rows) else None
    lle = any(r.get("lle") is not None for r in rows)  # records written before the estimator have none
    names = short_names(keys)
    header = [
        "method",
        *(names[k] for k in keys),
        f"{metric} (mean ± std)",
        *([f"{val_metric} (mean ± std)"] if val_metric else []),
        "n",
        {"rollout_loss_test": "test loss", "rollout_loss_train": "train loss"}.get(frac_of, frac_of) + " / baseline",
        "steps to target (val)",
        "s to target (val)",
        "step ms",
        "peak MB",
        *(["LLE"] if lle else []),
        "status",
    ]
    body = [
        [
            r["method"],
            *(_num(r["settings"].get(k), "g") for k in keys),
            _mean_std(r),
            *([_mean_std(r, "val_")] if val_metric else []),
            str(r["n"]),
            "—" if r["baseline_frac"] is None else sig(r["baseline_frac"], decimals(r["baseline_frac"], 3, 3)),
            _to_target(r, "steps_to_target", "g"),
            _to_target(r, "seconds_to_target", ".1f"),
            _num(r["step_time_ms"], ".3g"),
            _num(r["peak_memory_mb"], ".1f"),
            *([_num(r.get("lle"), ".3f")] if lle else []),
            _status(r),
        ]
        for r in rows
    ]
    return add_column(rows, header, body)


def rich_table(rows: list[dict[str, Any]], keys: list[str], title: str | None = None) -> Table:
    header, body = text_rows(rows, keys)
    t = Table(title=title or "held-out sequential rollout, mean ± std over seeds (n = runs with a finite value)")
    for i, col in enumerate(header):
        # Cells keep their width: a narrow terminal wraps the headers, never cuts a number ("0.002388…").
        widest = max((len(cells[i]) for cells in body), default=0)
        t.add_column(col, justify="left" if i == 0 or col == "status" else "right", min_width=widest, overflow="fold")
    for r, cells in zip(rows, body, strict=True):
        style = "" if set(r["status"]) == {"completed"} else "yellow"
        t.add_row(*cells, style=style)
    return t


def markdown(rows: list[dict[str, Any]], keys: list[str]) -> str:
    header, body = text_rows(rows, keys)
    align = ["---" if i == 0 or h == "status" else "---:" for i, h in enumerate(header)]
    lines = [header, align, *body]
    return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in lines) + "\n"


def flat_row(r: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    m = r["metric"]
    return {
        "method": r["method"],
        **{k: r["settings"].get(k) for k in keys},
        f"{m}_mean": r["mean"],
        f"{m}_std": r["std"],
        **({f"{r['val_metric']}_mean": r["val_mean"], f"{r['val_metric']}_std": r["val_std"]} if r.get("val_metric") else {}),
        "n": r["n"],
        "runs": r["runs"],
        f"{r['baseline_frac_of']}_over_baseline": r["baseline_frac"],
        "steps_to_target": r["steps_to_target"],
        "seconds_to_target": r["seconds_to_target"],
        "reached_target": r["reached"] if r["target"] else None,
        "step_time_ms": r["step_time_ms"],
        "peak_memory_mb": r["peak_memory_mb"],
        "lle": r.get("lle"),
        **flat(r),
        "status": ";".join(f"{s}:{n}" for s, n in sorted(r["status"].items())),
    }


def to_csv(rows: list[dict[str, Any]], keys: list[str]) -> str:
    flat = [flat_row(r, keys) for r in rows]
    buf = io.StringIO()
    if flat:
        w = csv.DictWriter(buf, fieldnames=list(flat[0]), lineterminator="\n")
        w.writeheader()
        for f in flat:
            w.writerow({k: ("" if v is None else json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in f.items()})
    return buf.getvalue()


def to_json(rows: list[dict[str, Any]], keys: list[str]) -> str:
    out = [{**r, "settings": {k: r["settings"].get(k) for k in keys}} for r in rows]
    return json.dumps(out, indent=2, allow_nan=False) + "\n"


FORMATS = ("table", "markdown", "csv", "json")

"""docs/findings/lag.md: the seed's prediction, steps to target against the lag; and docs/findings/tuning.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from seqpar.analysis.findings import block, figure
from seqpar.analysis.findings.common import curve, grouped, median, new_figure, provenance, ratio, steps_cell, study_results
from seqpar.analysis.findings.stats import MIN_SLOPE_POINTS, fmt, seeds_cell, slope, table
from seqpar.analysis.findings.store import read_json

STUDY = "lag-steps"
HORIZON_STEPS = (100, 200, 400, 1000, 2000)


def _data(store: Path) -> tuple[list[int], list[str], dict[tuple, list]]:
    rs = study_results(store, STUDY)
    lags = sorted({int(r.settings["task.lag"]) for r in rs})
    labels = list(dict.fromkeys(r.label for r in rs))
    return lags, labels, grouped(rs, "label", "task.lag")


def _slope(groups: dict[tuple, list], label: str, lags: list[int]) -> tuple[float | None, int]:
    xs, ys = [], []
    for lag in lags:
        s = median([r.value("steps_to_target") for r in groups.get((label, lag), [])])
        if s is not None:
            xs.append(float(lag))
            ys.append(s)
    return slope(xs, ys), len(xs)


@block("lag.table")
def lag_table(store: Path) -> str:
    lags, labels, groups = _data(store)
    rows = []
    for label in labels:
        cells = [
            f"{steps_cell(groups.get((label, lag), []))}; {seeds_cell([ratio(r) for r in groups.get((label, lag), [])])}" for lag in lags
        ]
        sl, n = _slope(groups, label, lags)
        rows.append([label, *cells, fmt(sl, 3) if sl is not None else f"— ({n} lags reached it; a slope needs {MIN_SLOPE_POINTS})"])
    return (
        "Steps to the validation target (the median over the seeds that reached it, and how many did); then test loss ÷ baseline "
        "at the end; the least-squares slope of steps to target against the lag, fitted only through at least "
        f"{MIN_SLOPE_POINTS} lags that reached it.\n\n"
        + table(["method", *(f"lag {lag}" for lag in lags), "slope (steps per unit lag)"], rows)
    )


@block("lag.horizon")
def horizon(store: Path) -> str:
    lags, labels, groups = _data(store)
    rows = []
    for label in labels:
        for lag in lags:
            rs = groups.get((label, lag), [])
            cs = [dict(curve(r, "agreement_horizon")) for r in rs]
            if not any(cs):
                continue
            cells = []
            for step in HORIZON_STEPS:
                vals = [max((v for s, v in c.items() if s <= step), default=None) if c else None for c in cs]
                at = [c.get(max((s for s in c if s <= step), default=-1)) for c in cs]
                cells.append(fmt(median(at), 3) if any(v is not None for v in vals) else "—")
            rows.append([label, str(lag), *cells])
    head = ["method", "lag", *(f"step {s}" for s in HORIZON_STEPS)]
    return (
        "The agreement horizon (the leading steps whose mean table–rollout distance is under 0.1) at the last evaluation at or "
        "before each step (median over seeds):\n\n" + table(head, rows)
    )


@block("lag.provenance")
def lag_provenance(store: Path) -> str:
    return provenance(store, STUDY)


@figure("lag", "steps to target against the lag")
def lag_figure(store: Path) -> tuple[dict[str, Any], Any]:
    lags, labels, groups = _data(store)
    data = {
        label: {
            "lag": lags,
            "steps": [median([r.value("steps_to_target") for r in groups.get((label, lag), [])]) for lag in lags],
            "last": [median([float(r.record.get("steps_done") or 0) for r in groups.get((label, lag), [])]) for lag in lags],
        }
        for label in labels
    }
    return data, _draw


def _draw(data: dict[str, Any], png: Path) -> None:
    fig = new_figure(6.5, 4)
    ax = fig.subplots()
    for i, (label, d) in enumerate(data.items()):
        reached = [(lag, s) for lag, s in zip(d["lag"], d["steps"], strict=True) if s is not None]
        never = [(lag, last) for lag, s, last in zip(d["lag"], d["steps"], d["last"], strict=True) if s is None]
        ax.plot([x for x, _ in reached], [y for _, y in reached], "o-", color=f"C{i}", label=label)
        ax.plot([x for x, _ in never], [y for _, y in never], "o", mfc="none", color=f"C{i}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("lag (steps)")
    ax.set_ylabel("steps to target (hollow: never, at the last step)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    fig.savefig(png, dpi=100)


# ----------------------------------------------------------------------------- tuning.md

TUNE = "tune-lag4"


@block("tuning.table")
def tuning_table(store: Path) -> str:
    index = read_json(TUNE, "tune.json", store)
    rows = []
    for m in index.get("methods", []):
        counts = m.get("trials") or {}
        best = m.get("best") or {}
        default = m.get("default") or {}
        final = [r for r in m.get("final") or [] if r.get("rollout_loss_test") is not None]
        ratios = [r["rollout_loss_test"] / r["baseline_loss"] for r in final if r.get("baseline_loss")]
        params = ", ".join(f"{k} {fmt(v, 3) if isinstance(v, float) else v}" for k, v in (best.get("params") or {}).items())
        rows.append(
            [
                str(m.get("method")),
                " / ".join(str(counts.get(k, 0)) for k in ("completed", "pruned", "failed")),
                fmt(best.get("value"), 3),
                fmt(default.get("value"), 3) + (" (kept)" if default.get("chosen") == "default" else ""),
                seeds_cell(ratios),
                params or "—",
            ]
        )
    head = ["method", "trials done / pruned / failed", "best val", "untuned val", "test ÷ baseline, final seeds", "best configuration"]
    return (
        f"{index['trials_per_method']} trials per method, {index['steps_per_trial']} steps each, {index['sampler']} sampler, "
        f"{index['pruner']} pruner; objective: {index['objective']}; each method's best re-run with seeds "
        f"{', '.join(map(str, index['seeds']))} on the test split.\n\n" + table(head, rows)
    )


@block("tuning.provenance")
def tuning_provenance(store: Path) -> str:
    return provenance(store, TUNE)

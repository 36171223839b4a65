"""docs/findings/verdict.md: every method on every memory task, judged against the memoryless baseline."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from seqpar.analysis.findings import block, figure
from seqpar.analysis.findings.common import median, new_figure, provenances, ratio, with_optional
from seqpar.analysis.findings.stats import LEARNED, count, fmt, seeds_cell, table
from seqpar.records.reader import Result

STUDIES = ("verdict", "verdict-paragru")
ORDER = (
    "baseline_trained",
    "bptt",
    "tbptt-k8",
    "parallel-plain",
    "parallel-init-rollout",
    "shoot-k4",
    "parallel-newton",
    "deer",
    "quasi-deer",
    "picard",
    "elk",
)


def task_name(r: Result) -> str:
    t = r.settings.get("task.type")
    return f"recall lag {r.settings.get('task.lag')}" if t == "delayed_recall" else "digits" if t == "dataset" else str(t)


def method_name(r: Result) -> str:
    cell = r.settings.get("model.cell") or r.settings.get("model.cell.type")
    return r.label if cell in (None, "gru") else f"{r.label} ({cell})"


def _all(store: Path) -> list[Result]:
    return with_optional(store, *STUDIES)


def _order(name: str) -> tuple[int, str]:
    base = name.split(" (")[0]
    return (ORDER.index(base) if base in ORDER else len(ORDER), name)


def _grid(store: Path) -> tuple[list[str], list[str], dict[tuple, list[Result]]]:
    rs = _all(store)
    tasks = sorted({task_name(r) for r in rs})
    methods = sorted({method_name(r) for r in rs}, key=_order)
    groups: dict[tuple, list[Result]] = {}
    for r in rs:
        groups.setdefault((method_name(r), task_name(r)), []).append(r)
    return tasks, methods, {k: sorted(v, key=lambda r: r.seed or 0) for k, v in groups.items()}


@block("verdict.table")
def verdict_table(store: Path) -> str:
    tasks, methods, groups = _grid(store)
    rows = [[m, *(seeds_cell([ratio(r) for r in groups.get((m, t), [])]) if (m, t) in groups else "—" for t in tasks)] for m in methods]
    return (
        "Test rollout loss ÷ the task's memoryless baseline (the formula; `baseline_trained` is the same model trained with its "
        f"recurrence cut); **bold**: below {LEARNED} of it. Seeds that disagree are shown one by one, else their mean.\n\n"
        + table(["method", *tasks], rows)
    )


@block("verdict.cost")
def verdict_cost(store: Path) -> str:
    """Each method's training step against BPTT's in the same run (one process, one machine state)."""
    tasks, methods, groups = _grid(store)
    rows = []
    for m in methods:
        if m.startswith(("bptt", "baseline_trained")):
            continue
        cell_bptt = "bptt" + m[len(m.split(" (")[0]) :]
        per_point = []
        for t in tasks:
            for r, b in zip(groups.get((m, t), []), groups.get((cell_bptt, t), []), strict=False):
                a, c = r.value("step_time_ms"), b.value("step_time_ms")
                if a and c and r.run_dir == b.run_dir:
                    per_point.append(a / c)
        depth = median([r.value("sequential_depth") for t in tasks for r in groups.get((m, t), [])])
        iters = median([r.value("train_newton_iters_mean") for t in tasks for r in groups.get((m, t), [])])
        fell = sum((r.value("train_newton_fallback_total") or 0) > 0 for t in tasks for r in groups.get((m, t), []))
        runs = sum(len(groups.get((m, t), [])) for t in tasks)
        rows.append(
            [
                m,
                fmt(median(per_point), 2) if per_point else "—",
                f"{fmt(min(per_point), 2)}–{fmt(max(per_point), 2)}" if per_point else "—",
                count(depth),
                count(iters),
                f"{fell}/{runs}" if iters is not None else "—",
            ]
        )
    head = [
        "method",
        "step time ÷ BPTT's (median)",
        "range over tasks and seeds",
        "sequential depth",
        "Newton iterations",
        "runs that fell back",
    ]
    return (
        "Step time ÷ BPTT's in the same run (the methods of a point run one after another in one process, on one machine state); "
        "sequential depth: dependent cell-sized steps on one training step's critical path (median over points); Newton iterations: "
        "the mean per solve at the last logged step (median over points); runs that fell back: runs in which some step took "
        "BPTT's gradient because a solve stopped unconverged.\n\n" + table(head, rows)
    )


@block("verdict.summary")
def summary(store: Path) -> str:
    tasks, methods, groups = _grid(store)
    lines = []
    for m in methods:
        meds = {t: median([ratio(r) for r in groups.get((m, t), [])]) for t in tasks}
        got = {t: v for t, v in meds.items() if v is not None}
        if not got:
            continue
        below = [t for t, v in got.items() if v < 1.0]
        learned = [t for t, v in got.items() if v < LEARNED]
        lines.append(
            f"- **{m}:** below the baseline on {len(below)} of {len(got)} tasks"
            + (f" ({', '.join(below)})" if 0 < len(below) < len(got) else "")
            + f", below half of it on {len(learned)} (medians over seeds)."
        )
    # Newton with BPTT's gradient against BPTT, run for run.
    for m in methods:
        if m.split(" (")[0] not in ("deer", "quasi-deer", "picard", "elk"):
            continue
        b = "bptt" + m[len(m.split(" (")[0]) :]
        diffs = []
        for t in tasks:
            for r, q in zip(groups.get((m, t), []), groups.get((b, t), []), strict=False):
                a, c = r.value("rollout_loss_test"), q.value("rollout_loss_test")
                if a is not None and c is not None and c > 0:
                    diffs.append(abs(a - c) / c)
        if diffs:
            lines.append(
                f"- **{m} against {b}, run for run:** test losses within {fmt(statistics.median(diffs) * 100, 2)}% (median) and "
                f"{fmt(max(diffs) * 100, 2)}% (largest) of BPTT's, over {len(diffs)} runs."
            )
    return "\n".join(lines) + "\n"


@block("verdict.provenance")
def verdict_provenance(store: Path) -> str:
    return provenances(store, *STUDIES)


@figure("verdict", "test loss ÷ baseline, every method, every task, each seed a point")
def verdict_figure(store: Path) -> tuple[dict[str, Any], Any]:
    tasks, methods, groups = _grid(store)
    data = {
        "tasks": tasks,
        "methods": methods,
        "ratios": {m: {t: [ratio(r) for r in groups.get((m, t), [])] for t in tasks} for m in methods},
    }
    return data, _draw


def _draw(data: dict[str, Any], png: Path) -> None:
    tasks, methods = data["tasks"], data["methods"]
    fig = new_figure(11, 4.2)
    ax = fig.subplots()
    width = 0.8 / max(len(methods), 1)
    for i, m in enumerate(methods):
        for j, t in enumerate(tasks):
            vals = [v for v in data["ratios"][m][t] if v is not None]
            x = j + (i - len(methods) / 2) * width
            ax.plot([x] * len(vals), vals, "o", markersize=3, color=f"C{i % 10}", label=m if j == 0 else None)
    ax.axhline(1.0, color="k", linewidth=1, label="memoryless baseline")
    ax.axhline(LEARNED, color="0.5", linestyle=":", linewidth=1)
    ax.set_yscale("log")
    ax.set_xticks(range(len(tasks)), tasks, rotation=15)
    ax.set_ylabel("test rollout loss ÷ baseline (each seed a point)")
    ax.legend(fontsize=7, ncol=2, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(True, axis="y", alpha=0.3)
    fig.savefig(png, dpi=100)

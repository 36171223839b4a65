"""docs/findings/frontier.md: ParaRNN's cells and stacks, Newton and the LLE (dense gru/lstm against paragru/paralstm)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from seqpar.analysis.findings import block, figure
from seqpar.analysis.findings.common import curve, lle_note, median, new_figure, provenances, ratio, with_optional
from seqpar.analysis.findings.stats import fmt, seeds_cell, spearman, table
from seqpar.records.reader import Result

STUDIES = ("frontier", "frontier-lstm")
CELLS = ("gru", "lstm", "paragru", "paralstm")


def _task(r: Result) -> str:
    return f"lag {r.settings.get('task.lag')}" if r.settings.get("task.type") == "delayed_recall" else "digits"


def _key(r: Result) -> tuple[str, int]:
    return (str(r.settings.get("model.cell")), int(r.settings.get("model.layers") or 1))


def _all(store: Path) -> list[Result]:
    return with_optional(store, *STUDIES)


def _grid(store: Path) -> tuple[list[tuple[str, int]], list[str], dict[tuple, list[Result]]]:
    rs = _all(store)
    keys = sorted({_key(r) for r in rs}, key=lambda k: (CELLS.index(k[0]) if k[0] in CELLS else 9, k[1]))
    tasks = sorted({_task(r) for r in rs}, key=lambda t: (t == "digits", t))
    groups: dict[tuple, list[Result]] = {}
    for r in rs:
        groups.setdefault((*_key(r), r.label, _task(r)), []).append(r)
    return keys, tasks, {k: sorted(v, key=lambda r: r.seed or 0) for k, v in groups.items()}


def _its(rs: list[Result], key: str = "train_newton_iters_mean") -> tuple[float | None, float | None]:
    """Median over runs of the first and the last logged iterations (at initialisation, after training)."""
    cs = [[v for _, v in curve(r, key)] for r in rs]
    cs = [c for c in cs if c]
    return median([c[0] for c in cs]), median([c[-1] for c in cs])


@block("frontier.table")
def frontier_table(store: Path) -> str:
    keys, tasks, groups = _grid(store)
    rows = []
    for cell, layers in keys:
        row = [f"{cell}", str(layers)]
        for label in ("bptt", "parallel-tuned"):
            row.append(" · ".join(seeds_cell([ratio(r) for r in groups.get((cell, layers, label, t), [])]) for t in tasks))
        for label in ("deer", "quasi-deer"):
            row.append(
                " · ".join(
                    "→".join(fmt(v, 2) for v in _its(groups.get((cell, layers, label, t), [])))
                    if groups.get((cell, layers, label, t))
                    else "—"
                    for t in tasks
                )
            )
        row.append(" · ".join(fmt(median([r.value("lle") for r in groups.get((cell, layers, "bptt", t), [])]), 2) for t in tasks))
        rows.append(row)
    order = " · ".join(tasks)
    head = [
        "cell",
        "L",
        f"BPTT ÷ baseline ({order})",
        f"embedding-parallel ÷ baseline ({order})",
        f"DEER iterations, first → last logged step ({order})",
        f"quasi-DEER iterations ({order})",
        f"LLE after BPTT ({order})",
    ]
    every = [r for g in groups.values() for r in g]
    return (
        "Test rollout loss ÷ the memoryless baseline (seeds that disagree shown one by one); Newton iterations per solve at the "
        "first and the last logged training step (medians over seeds; on paragru and paralstm both Newton methods are exact "
        f"Newton in the cell's structure); the LLE of the recurrence BPTT trained ({lle_note(every)}).\n\n"
        + table(head, rows, "l" + "r" * (len(head) - 1))
    )


@block("frontier.summary")
def summary(store: Path) -> str:
    keys, tasks, groups = _grid(store)
    lines = []
    # Newton against BPTT, run for run.
    for label in ("deer", "quasi-deer"):
        diffs: list[float] = []
        for cell, layers in keys:
            for t in tasks:
                for r in groups.get((cell, layers, label, t), []):
                    b = next((q for q in groups.get((cell, layers, "bptt", t), []) if q.seed == r.seed), None)
                    a, c = r.value("rollout_loss_test"), b.value("rollout_loss_test") if b else None
                    if a is not None and c:
                        diffs.append(abs(a - c) / c)
        if diffs:
            lines.append(
                f"- **{label} against BPTT, run for run:** test losses within {fmt(statistics.median(diffs) * 100, 2)}% (median), "
                f"{fmt(max(diffs) * 100, 2)}% at most, over {len(diffs)} runs."
            )
    # ParaRNN's three iterations.
    for cell in ("paragru", "paralstm"):
        firsts, lasts = [], []
        for c, layers in keys:
            if c != cell:
                continue
            for t in tasks:
                f, last = _its(groups.get((c, layers, "deer", t), []))
                if f is not None and last is not None:
                    firsts.append(f)
                    lasts.append(last)
        if firsts:
            lines.append(
                f"- **{cell}, exact Newton iterations per solve:** {fmt(min(firsts), 2)}–{fmt(max(firsts), 2)} at the first logged "
                f"step, {fmt(min(lasts), 2)}–{fmt(max(lasts), 2)} at the last (medians over seeds, per layers and task), solved to "
                "`tol: auto` from zeros."
            )
    # The LLE against Newton's iterations and the table's drift, within each cell first.
    for label, metric, what in (
        ("deer", "train_newton_iters_mean", "Newton iterations"),
        ("parallel-tuned", "table_rollout_dist", "the table's drift"),
    ):
        per_cell = []
        pooled_x, pooled_y = [], []
        for cell in CELLS:
            xs, ys = [], []
            for c, layers in keys:
                if c != cell:
                    continue
                for t in tasks:
                    for r in groups.get((c, layers, label, t), []):
                        x, y = r.value("lle"), r.value(metric)
                        if x is not None and y is not None:
                            xs.append(x)
                            ys.append(y)
            rho = spearman(xs, ys)
            if rho is not None:
                per_cell.append(f"{cell} {fmt(rho, 2)} ({len(xs)} runs)")
                pooled_x += xs
                pooled_y += ys
        if per_cell:
            pooled = spearman(pooled_x, pooled_y)
            lines.append(
                f"- **The LLE against {what} ({label}), Spearman within each cell:** {'; '.join(per_cell)}; pooled over cells "
                f"{fmt(pooled, 2)} (cells are solved with different structures, so the pooled figure mixes them)."
            )
    return "\n".join(lines) + "\n"


@block("frontier.provenance")
def frontier_provenance(store: Path) -> str:
    return provenances(store, *STUDIES)


@figure("frontier", "Newton iterations against the LLE, per cell")
def frontier_figure(store: Path) -> tuple[dict[str, Any], Any]:
    keys, tasks, groups = _grid(store)
    points = []
    for cell, layers in keys:
        for t in tasks:
            for r in groups.get((cell, layers, "deer", t), []) + groups.get((cell, layers, "quasi-deer", t), []):
                x, y = r.value("lle"), r.value("train_newton_iters_mean")
                if x is not None and y is not None:
                    points.append({"cell": cell, "layers": layers, "solver": r.label, "lle": x, "iterations": y})
    return {"points": points}, _draw


def _draw(data: dict[str, Any], png: Path) -> None:
    fig = new_figure(9, 3.8)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, solver in zip(axes, ("deer", "quasi-deer"), strict=True):
        for i, cell in enumerate(CELLS):
            pts = [p for p in data["points"] if p["solver"] == solver and p["cell"] == cell]
            if pts:
                ax.plot([p["lle"] for p in pts], [p["iterations"] for p in pts], "o", color=f"C{i}", markersize=4, label=cell)
        ax.set_title(f"{solver}: iterations at the last logged step against the LLE", fontsize=9)
        ax.set_xlabel("LLE per step (the trained recurrence)")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    axes[0].set_ylabel("Newton iterations per solve")
    fig.savefig(png, dpi=100)

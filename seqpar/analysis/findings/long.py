"""docs/findings/long.md: long sequences at equal wall-clock (every method 40 s of training)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from seqpar.analysis.findings import block, figure
from seqpar.analysis.findings.common import curve, median, new_figure, provenances, ratio, with_optional
from seqpar.analysis.findings.stats import LEARNED, fmt, seeds_cell, table
from seqpar.records.reader import Result

STUDIES = ("long", "long-paragru")
LAUNCH_US = 5.0  # the projection's cost of one dependent step on an accelerator (a kernel launch), microseconds
EXACT = ("quasi-deer", "deer")  # gradient: BPTT's (the exact adjoint)


def _cell(r: Result) -> str:
    return str(r.settings.get("model.cell") or r.settings.get("model.cell.type") or "gru")


def _name(r: Result) -> str:
    return f"{r.label} ({_cell(r)})"


def _col(r: Result) -> tuple[str, int]:
    return (str(r.settings.get("task.type")), int(r.settings.get("task.length") or 0))


def _grid(store: Path) -> tuple[list[str], list[tuple[str, int]], dict[tuple, list[Result]]]:
    rs = with_optional(store, *STUDIES)
    cols = sorted({_col(r) for r in rs}, key=lambda c: (c[0], c[1]))
    order = ["bptt", "tbptt-k64", "parallel", "quasi-deer", "quasi-deer-diag-grad", "deer"]
    names = sorted(
        {_name(r) for r in rs}, key=lambda n: (n.endswith("(paragru)"), order.index(n.split(" (")[0]) if n.split(" (")[0] in order else 99)
    )
    groups: dict[tuple, list[Result]] = {}
    for r in rs:
        groups.setdefault((_name(r), _col(r)), []).append(r)
    return names, cols, {k: sorted(v, key=lambda r: r.seed or 0) for k, v in groups.items()}


@block("long.table")
def long_table(store: Path) -> str:
    names, cols, groups = _grid(store)
    rows = []
    for n in names:
        cells = []
        for c in cols:
            rs = groups.get((n, c), [])
            div = sum(r.status == "diverged" for r in rs)
            cell = seeds_cell([ratio(r) for r in rs])
            cells.append(cell + (f", {div} diverged" if div else "") if rs else "—")
        mb = median([r.value("peak_memory_mb") for c in cols if c[1] == max(cc[1] for cc in cols) for r in groups.get((n, c), [])])
        rows.append([n, *cells, fmt(mb, 3)])
    head = ["method (cell)", *(f"{t} {n}" for t, n in cols), f"peak MB at T = {max(c[1] for c in cols)}"]
    return (
        "Test rollout loss ÷ the memoryless baseline after 40 s of training; **bold**: below half of it. Seeds that disagree are "
        "shown one by one; a diverged run counts with its last finite evaluation.\n\n" + table(head, rows)
    )


def _bptt_at(bptt: Result, step: int) -> float | None:
    """BPTT's validation loss at `step` (the last evaluation at or before it)."""
    pts = [(s, v) for s, v in curve(bptt, "rollout_loss_val") if s <= step]
    return pts[-1][1] if pts else None


@block("long.same_steps")
def same_steps(store: Path) -> str:
    """The exact-gradient Newton methods against BPTT's own curve at the steps each reached."""
    names, cols, groups = _grid(store)
    rows = []
    for n in names:
        if n.split(" (")[0] not in EXACT:
            continue
        bn = "bptt" + n[len(n.split(" (")[0]) :]
        for c in cols:
            pairs = []
            for r in groups.get((n, c), []):
                b = next((q for q in groups.get((bn, c), []) if q.seed == r.seed), None)
                steps = r.record.get("steps_done")
                if b is None or not steps:
                    continue
                mine, theirs = r.value("rollout_loss_val"), _bptt_at(b, int(steps))
                if mine is not None and theirs is not None:
                    pairs.append((steps, mine, theirs, b.record.get("steps_done")))
            if pairs:
                rows.append(
                    [
                        n,
                        f"{c[0]} {c[1]}",
                        fmt(statistics.median(p[0] for p in pairs), 3),
                        fmt(statistics.median(p[3] for p in pairs), 3),
                        fmt(statistics.median(abs(p[1] - p[2]) / max(abs(p[2]), 1e-12) for p in pairs) * 100, 2),
                    ]
                )
    head = ["method (cell)", "task T", "its steps in 40 s (median)", "BPTT's steps in 40 s", "|val loss − BPTT's at that step| ÷ BPTT's, %"]
    return (
        "Equal wall-clock, for a method whose gradient is BPTT's, means fewer steps of the same training: its validation loss at "
        "the end, against BPTT's own curve read at the same step (the last evaluation at or before it; seeds matched):\n\n"
        + table(head, rows)
    )


@block("long.projection")
def projection(store: Path) -> str:
    names, cols, groups = _grid(store)
    rows = []
    t_max = max(c[1] for c in cols)
    for n in names:
        rs = [r for c in cols if c[1] == t_max for r in groups.get((n, c), [])]
        depth = median([r.value("sequential_depth") for r in rs])
        its = [[v for _, v in curve(r, "train_newton_iters_max")] for r in rs]
        its = [c for c in its if c]
        it_cell = (
            " → ".join(fmt(median([c[i] for c in its]), 3) for i in (0, -1))
            + f" (median {fmt(median([statistics.median(c) for c in its]), 3)})"
            if its
            else "—"
        )
        rows.append([n, fmt(depth, 4), it_cell, fmt(depth * LAUNCH_US / 1000 if depth else None, 3)])
    head = [
        "method (cell)",
        f"sequential depth at T = {t_max} (the adjoint the run used)",
        "Newton iterations per step: first → last logged (median over training)",
        f"projected ms per step at {fmt(LAUNCH_US)} µs per dependent step",
    ]
    return (
        "**A projection, not a measurement.** If every dependent step cost one accelerator launch of "
        f"{fmt(LAUNCH_US)} µs and nothing else, a training step would take its sequential depth times that. The depth counts the "
        "adjoint each run used (on this CPU the sequential one: T steps) and the Newton iterations the runs logged across "
        "training (the depth is the mean over the run's logged steps, each counted with that step's iterations).\n\n" + table(head, rows)
    )


@block("long.summary")
def summary(store: Path) -> str:
    names, cols, groups = _grid(store)
    lines = []
    for n in names:
        learned = [f"{c[0]} {c[1]}" for c in cols if (m := median([ratio(r) for r in groups.get((n, c), [])])) is not None and m < LEARNED]
        runs = [r for c in cols for r in groups.get((n, c), [])]
        nonfinite = sum((r.value("train_newton_nonfinite") or 0) > 0 or (r.value("train_newton_fallback_total") or 0) > 0 for r in runs)
        div = sum(r.status == "diverged" for r in runs)
        extra = []
        if div:
            extra.append(f"{div} of {len(runs)} runs diverged (a non-finite training metric)")
        if nonfinite:
            extra.append(f"{nonfinite} runs had a solve stop unconverged or go non-finite and fall back to BPTT's gradient")
        lines.append(
            f"- **{n}:** below half the baseline (median of seeds) at {', '.join(learned) if learned else 'no point'}"
            + (f"; {'; '.join(extra)}" if extra else "")
            + "."
        )
    return "\n".join(lines) + "\n"


@block("long.provenance")
def long_provenance(store: Path) -> str:
    return provenances(store, *STUDIES)


@figure("long", "validation loss against training steps, seed 0, every task and length")
def long_figure(store: Path) -> tuple[dict[str, Any], Any]:
    names, cols, groups = _grid(store)
    data: dict[str, Any] = {"cols": [f"{t} {n}" for t, n in cols], "curves": {}}
    for c in cols:
        for n in names:
            rs = groups.get((n, c), [])
            if rs:
                r = rs[0]  # seed 0's curve: seconds on the x axis need one run's clock
                pts = [(ln_s, v) for ln_s, v in curve(r, "rollout_loss_val")]
                b = r.value("baseline_loss") or 1.0
                data["curves"][f"{c[0]} {c[1]}|{n}"] = {"step": [s for s, _ in pts], "ratio": [v / b for _, v in pts]}
    return data, _draw


def _draw(data: dict[str, Any], png: Path) -> None:
    cols = data["cols"]
    fig = new_figure(12, 7)
    axes = fig.subplots(3, 3, squeeze=False)
    for ax, col in zip(axes.flat, cols, strict=False):
        for key, c in data["curves"].items():
            where, name = key.split("|")
            if where == col:
                ax.plot(c["step"], c["ratio"], label=name, linewidth=1)
        ax.axhline(1.0, color="k", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xscale("symlog")
        ax.set_title(col, fontsize=9)
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=6, frameon=False)
    fig.supxlabel("training step (seed 0; each method stops at 40 s)")
    fig.supylabel("validation rollout loss ÷ baseline")
    fig.savefig(png, dpi=100)

"""Rich output: live progress per method and the end-of-run results table."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


def fmt(v: Any, spec: str = ".4f") -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return format(v, spec) if math.isfinite(v) else "—"
    return str(v)


def human_bytes(n: float | None) -> str:
    if not n:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return ""  # unreachable


def progress_bars(console: Console) -> Progress:
    """The bar layout every seqpar progress display uses: name, bar, n/total, info, time."""
    return Progress(
        TextColumn("[bold]{task.description:<14}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
    )


def progress_info(record: dict[str, Any], val: float | None) -> str:
    """A bar's text at a log point: the training objective there (with its step: the bar moves
    on between log points, the numbers do not) and the last validation rollout loss."""
    obj = record.get("train_objective", record.get("objective"))
    info = f"objective {fmt(obj)} @ {record['step']}" if isinstance(obj, float) and "step" in record else f"objective {fmt(obj)}"
    return info + f"  rollout(val) {fmt(val)}"


class RichProgress:
    """One bar per method with the training objective at the last log point and the last
    validation rollout loss (training shows validation only: the test split is for the final
    table). The bar itself moves every step (`advance`, at most 10 times a second)."""

    def __init__(self, console: Console):
        self._p = progress_bars(console)
        self._tasks: dict[str, Any] = {}
        self._val: dict[str, float] = {}
        self._total: dict[str, int] = {}

    def __enter__(self):
        self._p.__enter__()
        return self

    def __exit__(self, *exc):
        return self._p.__exit__(*exc)

    def start(self, label, total):
        self._tasks[label] = self._p.add_task(label, total=total, info="compiled, starting")
        self._total[label] = total

    def update(self, label, step, record):
        if "rollout_loss_val" in record:
            self._val[label] = record["rollout_loss_val"]
        self._p.update(self._tasks[label], completed=step, info=progress_info(record, self._val.get(label)))

    def advance(self, label, step):
        advance_bar(self._p, self._tasks[label], step)

    def resume(self, label, step):
        self._p.console.print(f"{label}: resuming from the checkpoint at step {step} of {self._total.get(label, '?')}", highlight=False)

    def finish(self, label, status):
        if status != "completed" and label in self._tasks:
            self._p.update(self._tasks[label], info=f"[red]{status}")


def advance_bar(progress, task, step: int) -> None:
    """Move a Rich progress bar to `step` between log points: the count only (nothing is fetched
    from the device), the numbers staying those of the last log point."""
    if progress.tasks[task].fields.get("info") == "compiled, starting":  # no log point yet
        progress.update(task, completed=step, info="training")
    else:
        progress.update(task, completed=step)


def newton_cell(diagnostics: dict[str, Any]) -> str:
    """`mean/max` Newton iterations of the last logged step, and the rows that hit max_iters so far."""
    mean, top = diagnostics.get("train_newton_iters_mean"), diagnostics.get("train_newton_iters_max")
    if mean is None:
        return "—"
    hit = diagnostics.get("train_newton_hit_max_total") or 0
    fell_back = diagnostics.get("train_newton_fallback_total") or 0
    return (
        f"{fmt(mean, '.1f')}/{fmt(top, '.0f')}"
        + (f" [yellow]({hit:.0f} at max)" if hit else "")
        + (f" [yellow]({fell_back:.0f} fell back)" if fell_back else "")
    )


def results_table(summary: dict[str, Any]) -> Table:
    t = Table(title=f"{summary['name']} (seed {summary['seed']}): judged by held-out sequential rollout")
    # The Newton column only when a run has one (a Newton method): other tables stay as they were.
    newton = any("train_newton_iters_mean" in (r.get("diagnostics") or {}) for r in summary["runs"])
    cols = ["method", "status", "rollout val", "rollout test", "acc test", "baseline", "objective", "to target (val)", "steps/s"]
    cols += ["Newton it"] if newton else []
    lle = any((r.get("final") or {}).get("lle") is not None for r in summary["runs"])
    cols += ["LLE"] if lle else []
    for col in (*cols, "compile s", "peak MB", "table"):
        t.add_column(col, justify="left" if col in ("method", "status") else "right")
    for r in summary["runs"]:
        final = r.get("final") or {}
        status = r["status"]
        style = {"completed": "green", "diverged": "yellow"}.get(status, "red")
        t.add_row(
            r["label"],
            f"[{style}]{status}",
            fmt(final.get("rollout_loss_val")),
            fmt(final.get("rollout_loss_test")),
            fmt(final.get("rollout_acc_test"), ".3f"),
            fmt(r.get("baseline_loss")),
            fmt(final.get("objective")),
            fmt(r.get("steps_to_target")),
            fmt(r.get("steps_per_s"), ".1f"),
            *([newton_cell(r.get("diagnostics") or {})] if newton else []),
            *([fmt(final.get("lle"), ".3f")] if lle else []),
            fmt(r.get("compile_s"), ".2f"),
            fmt(r.get("peak_memory_mb"), ".1f"),
            human_bytes(r.get("state_table_bytes")),
        )
    captions = [baseline_caption(summary.get("task") or {})]
    if newton:
        captions.append(
            "Newton it: mean/max Newton iterations over the batch at the last logged step; (n at max): rows that hit max_iters so far; "
            "(n fell back): steps that took BPTT's gradient because a solve stopped unconverged"
        )
    if lle:
        captions.append("LLE: largest Lyapunov exponent per step of the trained recurrence along validation rollouts (< 0: predictable)")
    t.caption = "\n".join(c for c in captions if c) or None
    return t


def baseline_caption(task: dict[str, Any]) -> str | None:
    """The memoryless baseline as a line under the table: the formula and, when trained, the trained one."""
    parts = []
    if task.get("baseline_loss") is not None:
        parts.append(f"formula {task.get('baseline_formula', '')} = {fmt(task['baseline_loss'])}")
    trained = task.get("baseline_trained") or {}
    if trained:
        val, test = fmt(trained.get("val")), fmt(trained.get("test"))
        parts.append(f"trained (same model, recurrence cut; row baseline_trained): val {val}, test {test}")
    return "memoryless baseline: " + "; ".join(parts) if parts else None

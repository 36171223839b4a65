"""`seqpar plot`: PNG figures from run records (matplotlib, Agg, no pyplot global state).

Figures, each written only when the records hold what it needs:
  rollout_vs_steps.png      held-out rollout loss vs optimizer steps, one panel per setting
  rollout_vs_seconds.png    the same vs training wall-clock seconds (compile and eval excluded)
  objective_vs_rollout.png  methods whose training objective is not their rollout loss
                            (embedding-parallel, ...): objective and rollout loss on one axis
  scaling_vs_length.png     median step time and peak memory vs task.length, log-log
  final_vs_<key>.png        final held-out rollout loss vs each swept setting (the key file-safe)
  final_by_method.png       when several seeds ran: the final test rollout loss of every run as a
                            point, one panel per task setting, one column per method, the
                            memoryless baseline as a line (the figure to look at first)
  lle_vs_parallel.png       Newton iterations / table-rollout distance against the LLE
                            over training (`seqpar.analysis.predictability`)
Lines are the mean over seeds, shaded bands the min-max over seeds; the memoryless
baseline is the dashed grey line. Figure sizes are fixed (`figure_size`), so a
figure's pixel size depends only on its number of panels.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from seqpar.analysis.compare import CompareError, aggregate, group_keys, hashable, natural_key, short_names
from seqpar.analysis.predictability import plot_lle
from seqpar.records.layout import METRICS
from seqpar.records.reader import Result, load, read_metrics, read_metrics_checked, results

DPI = 100
PANEL_W, PANEL_H = 5.0, 3.6  # inches per panel
HEADER_H = 0.9  # inches for the title and the legend below the panels
MIN_W = 7.0  # inches: a one-panel figure still has room for its title and legend
METRIC_NAMES = {
    "rollout_loss_test": "held-out rollout loss",
    "rollout_loss_train": "training-set rollout loss",
    "rollout_acc_test": "held-out rollout accuracy",
}
MAX_PANELS = 12
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]
BASELINE_STYLE = {"color": "0.45", "linestyle": "--", "linewidth": 1.3}
TRAINED_BASELINE = "baseline_trained"  # the label the runner gives the trained memoryless baseline (seqpar.methods.memoryless)


def figure_size(panels: int, ncols_max: int = 3) -> tuple[int, int]:
    """Pixel (width, height) of a figure with `panels` panels."""
    ncols = min(panels, ncols_max)
    nrows = math.ceil(panels / ncols)
    return round(max(PANEL_W * ncols, MIN_W) * DPI), round((PANEL_H * nrows + HEADER_H) * DPI)


def _figure(panels: int, title: str, ncols_max: int = 3, sharey: bool = False) -> tuple[Figure, list[Axes]]:
    """`sharey`: every panel on one y-axis (scale and limits), so panels compare at a glance."""
    w, h = figure_size(panels, ncols_max)
    fig = Figure(figsize=(w / DPI, h / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ncols = min(panels, ncols_max)
    axes = fig.subplots(math.ceil(panels / ncols), ncols, squeeze=False, sharey=sharey).ravel().tolist()
    for ax in axes[panels:]:
        ax.set_visible(False)
    fig.suptitle("\n".join(textwrap.wrap(title, width=int(w / 8.5))), fontsize=12)  # ~8.5 px per character
    return fig, axes[:panels]


def _save(fig: Figure, path: Path, handles: list, labels: list[str]) -> Path:
    if handles:
        # As many columns as fit the figure's width (about 6 px per character at fontsize 9).
        width_px = fig.get_figwidth() * DPI
        ncols = max(1, min(len(labels), 4, int(width_px // (6 * max(map(len, labels)) + 50))))
        fig.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize=9, frameon=False)
    fig.savefig(path, dpi=DPI)
    return path


def _loss_label(rs: list[Result], what: str = "held-out rollout loss") -> str:
    loss = next((r.task.get("loss") for r in rs if r.task.get("loss")), None)
    unit = {"cross-entropy": "cross-entropy, nats", "mse": "MSE"}.get(loss or "", loss or "")
    return f"{what} ({unit})" if unit else what


def _maybe_log(ax: Axes, values: list[float], axis: str = "y", span: float = 20.0) -> None:
    """Log scale when every value is positive and they span more than `span`x."""
    pos = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    if pos and len(pos) == len([v for v in values if v is not None]) and max(pos) / min(pos) > span:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


def _baseline(ax: Axes, rs: list[Result]) -> Line2D | None:
    b = next((b for b in (r.value("baseline_loss") for r in rs) if b is not None), None)
    if b is None:
        return None
    return ax.axhline(b, **BASELINE_STYLE)


def _baseline_label(rs: list[Result], with_value: bool = True) -> str:
    formula = next((r.task.get("baseline_formula") for r in rs if r.task.get("baseline_formula")), None)
    value = next((b for b in (r.value("baseline_loss") for r in rs) if b is not None), None)
    shown = " = ".join([*([formula] if formula else []), *([f"{value:.3f}"] if with_value and value is not None else [])])
    return "memoryless baseline" + (f" ({shown})" if shown else "")


def _shared_y(axes: list[Axes], ys: list[float]) -> None:
    """One y-scale for every panel of a figure: log when all its values span decades, with plain ticks."""
    _maybe_log(axes[0], ys)
    if axes[0].get_yscale() == "log":
        for ax in axes:
            ax.set_yscale("log")
        plain_log_ticks(axes[0], "y")


def plain_log_ticks(ax: Axes, axis: str, at: list[float] | None = None) -> None:
    """Log axis labelled 2, 5, 10, 20 (or exactly `at`) instead of 2x10^0."""
    a = ax.xaxis if axis == "x" else ax.yaxis
    lo, hi = ax.get_xlim() if axis == "x" else ax.get_ylim()
    if at is not None and len(at) <= 12:
        a.set_major_locator(FixedLocator(sorted(set(at))))
    elif hi / lo < 10:  # under a decade a log locator leaves one tick or none
        a.set_major_locator(MaxNLocator(nbins=5))
    else:
        a.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    a.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    a.set_minor_formatter(NullFormatter())


# ----------------------------------------------------------------------------- curves


def _curves(r: Result) -> list[dict[str, Any]]:
    return [line for line in read_metrics(r.run_dir) if line.get("method") == r.label and "rollout_loss_test" in line]


def _mean_band(runs: list[list[dict[str, Any]]], x: str, y: str) -> tuple[np.ndarray, ...] | None:
    """Per evaluated step: mean x, mean / min / max y over the seeds that have a finite y there."""
    by_step: dict[int, list[tuple[float, float]]] = {}
    for lines in runs:
        for line in lines:
            xv, yv = line.get(x), line.get(y)
            if isinstance(xv, (int, float)) and isinstance(yv, (int, float)) and math.isfinite(yv):
                by_step.setdefault(line["step"], []).append((float(xv), float(yv)))
    if not by_step:
        return None
    steps = sorted(by_step)
    xs = np.array([np.mean([p[0] for p in by_step[s]]) for s in steps])
    ys = [np.array([p[1] for p in by_step[s]]) for s in steps]
    return xs, np.array([a.mean() for a in ys]), np.array([a.min() for a in ys]), np.array([a.max() for a in ys])


def _panels(rs: list[Result], keys: list[str]) -> list[tuple[str, list[Result]]]:
    """One panel per combination of `keys`; a result that lacks a key (BPTT has no
    consistency weight) is drawn in every panel that matches it on the keys it has."""
    names = short_names(keys)
    groups: dict[str, tuple[tuple, str, list[Result], list]] = {}
    for r in rs:
        if all(k in r.settings for k in keys):
            vals = [r.settings[k] for k in keys]
            title = ", ".join(f"{names[k]}={_fmt(v)}" for k, v in zip(keys, vals, strict=True))
            groups.setdefault(hashable(vals), (tuple(natural_key(v) for v in vals), title, [], vals))[2].append(r)
    for r in rs:
        if not all(k in r.settings for k in keys):
            matching = [
                g for g in groups.values() if all(k not in r.settings or r.settings[k] == v for k, v in zip(keys, g[3], strict=True))
            ]
            if not matching:  # nothing to join: its own panel
                vals = [r.settings.get(k) for k in keys]
                title = ", ".join(f"{names[k]}={_fmt(v)}" for k, v in zip(keys, vals, strict=True) if k in r.settings) or "all settings"
                matching = [groups.setdefault(hashable(vals), (tuple(natural_key(v) for v in vals), title, [], vals))]
            for g in matching:
                g[2].append(r)
    ordered = sorted(groups.values(), key=lambda g: g[0])
    return [(title, members) for _, title, members, _ in ordered]


def _fmt(v: Any) -> str:
    return format(v, "g") if isinstance(v, float) else str(v)


def _method_colors(rs: list[Result]) -> dict[str, str]:
    labels = list(dict.fromkeys(r.label for r in rs))
    return {label: COLORS[i % len(COLORS)] for i, label in enumerate(labels)}


LINESTYLES = ["-", "--", "-.", ":"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X"]


def _method_styles(rs: list[Result]) -> dict[str, dict[str, Any]]:
    """Colour, line style and marker per method: two methods whose curves coincide (BPTT and
    DEER compute the same gradients) still show both, dashes over a solid line, two markers."""
    labels = list(dict.fromkeys(r.label for r in rs))
    colors = _method_colors(rs)
    return {
        label: {"color": colors[label], "linestyle": LINESTYLES[i % len(LINESTYLES)], "marker": MARKERS[i % len(MARKERS)]}
        for i, label in enumerate(labels)
    }


def _same_curve(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-6, atol=1e-9))


def _identical_notes(curves: list[dict[str, np.ndarray]]) -> dict[str, str]:
    """Per method, a legend note naming an earlier method whose curve is identical to it
    (in every panel where both are drawn, or in how many of them)."""
    labels = list(dict.fromkeys(label for panel in curves for label in panel))
    notes: dict[str, str] = {}
    for j, later in enumerate(labels):
        for earlier in labels[:j]:
            both = [p for p in curves if later in p and earlier in p]
            same = sum(_same_curve(p[later], p[earlier]) for p in both)
            if same:
                where = "" if same == len(both) else f" in {same} of {len(both)} panels"
                notes[later] = f"identical to {earlier}{where}, drawn over it"
                break
    return notes


def _finish_loss_panel(ax, members: list[Result], ys: list[float], handles: dict[str, Any], title: str, xlabel: str, ylabel: str) -> None:
    """The parts every loss-over-training panel shares: dashed memoryless baseline, title,
    labels (integer ticks over steps) and grid; the y-scale is the figure's (`_shared_y`)."""
    b = _baseline(ax, members)
    if b is not None:
        handles.setdefault(_baseline_label(members), b)
        ys.append(float(np.asarray(b.get_ydata())[0]))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    if xlabel == "optimizer steps":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)


def _markevery(n: int) -> int:
    return max(1, n // 12)  # a dozen markers a line: enough to tell lines apart, few enough to read


def plot_curves(rs: list[Result], panels: list[tuple[str, list[Result]]], x: str, path: Path, title: str) -> Path | None:
    styles = _method_styles(rs)
    fig, axes = _figure(len(panels), title, sharey=True)
    handles: dict[str, Any] = {}
    lines: dict[str, tuple[Any, set[int]]] = {}  # label -> (first line drawn, runs per panel)
    curves: list[dict[str, np.ndarray]] = []
    all_ys: list[float] = []
    for ax, (ptitle, members) in zip(axes, panels, strict=True):
        ys: list[float] = []
        drawn: dict[str, np.ndarray] = {}
        for label in dict.fromkeys(m.label for m in members):
            runs = [_curves(m) for m in members if m.label == label]
            band = _mean_band(runs, x, "rollout_loss_test")
            if band is None:
                continue
            xs, mean, lo, hi = band
            n = sum(1 for lines_ in runs if lines_)
            (line,) = ax.plot(xs, mean, linewidth=1.8, markersize=4, markevery=_markevery(len(xs)), **styles[label])
            if n > 1:
                ax.fill_between(xs, lo, hi, color=styles[label]["color"], alpha=0.18, linewidth=0)
            lines.setdefault(label, (line, set()))[1].add(n)
            drawn[label] = np.stack([xs, mean])  # identical means the same points: vs seconds, timings differ
            ys += list(lo) + list(hi)
        curves.append(drawn)
        xlabel = "optimizer steps" if x == "step" else "training wall-clock (s, compile and eval excluded)"
        _finish_loss_panel(ax, members, ys, handles, ptitle, xlabel, _loss_label(members))
        all_ys += ys
    if not lines:
        return None
    _shared_y(axes, all_ys)
    notes = _identical_notes(curves)
    legend: dict[str, Any] = {}
    for label, (line, ns) in lines.items():
        # One legend for every panel: a method with 3 seeds at one length and 1 at another says so.
        runs = f"{min(ns)} runs" if len(ns) == 1 else f"{min(ns)}-{max(ns)} runs per panel"
        text = label if max(ns) == 1 else f"{label} (mean of {runs}, band min-max)"
        legend[text + (f" [{notes[label]}]" if label in notes else "")] = line
    legend.update(handles)  # the baseline last
    return _save(fig, path, list(legend.values()), list(legend))


def _has_gap(r: Result, lines: list[dict[str, Any]]) -> bool:
    """True when the training objective is not the rollout loss (BPTT's objective *is* its rollout loss)."""
    for line in lines:
        o, t = line.get("objective"), line.get("rollout_loss_train")
        if isinstance(o, (int, float)) and isinstance(t, (int, float)) and abs(o - t) > 1e-6 * max(1.0, abs(t)):
            return True
    return False


def plot_objective_gap(rs: list[Result], panels: list[tuple[str, list[Result]]], path: Path, title: str) -> Path | None:
    gap_labels = [label for label in dict.fromkeys(r.label for r in rs) if any(_has_gap(r, _curves(r)) for r in rs if r.label == label)]
    if not gap_labels:
        return None
    colors = _method_colors(rs)
    markers = {label: st["marker"] for label, st in _method_styles(rs).items()}
    fig, axes = _figure(len(panels), title, sharey=True)
    handles: dict[str, Any] = {}
    all_ys: list[float] = []
    for ax, (ptitle, members) in zip(axes, panels, strict=True):
        ys: list[float] = []
        for label in gap_labels:
            runs = [_curves(m) for m in members if m.label == label]
            for metric, style, what in (("objective", "-", "training objective"), ("rollout_loss_train", "--", "rollout loss (train set)")):
                band = _mean_band(runs, "step", metric)
                if band is None:
                    continue
                xs, mean, lo, hi = band
                (line,) = ax.plot(
                    xs, mean, color=colors[label], linestyle=style, marker=markers[label], markersize=4, markevery=_markevery(len(xs))
                )
                if len([r for r in runs if r]) > 1:
                    ax.fill_between(xs, lo, hi, color=colors[label], alpha=0.15, linewidth=0)
                handles.setdefault(f"{label}: {what}", line)
                ys += list(lo) + list(hi)
        _finish_loss_panel(ax, members, ys, handles, ptitle, "optimizer steps", _loss_label(members, "loss"))
        all_ys += ys
    _shared_y(axes, all_ys)
    return _save(fig, path, list(handles.values()), list(handles))


# ----------------------------------------------------------------------------- across settings


def _series(rows: list[dict[str, Any]], x_key: str, keys: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Rows split into lines: one per method and combination of the other settings, sorted by x."""
    names = short_names(keys)
    others = [k for k in keys if k != x_key]
    lines: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        extra = ", ".join(f"{names[k]}={_fmt(r['settings'].get(k))}" for k in others)
        lines.setdefault(r["method"] + (f" ({extra})" if extra else ""), []).append(r)
    return {k: sorted(v, key=lambda r: natural_key(r["settings"].get(x_key))) for k, v in lines.items()}


def _line_colors(series: dict[str, list[dict[str, Any]]], base: dict[str, str]) -> dict[str, str]:
    """Same method -> same colour when there is one line per method, else one colour per line."""
    if len(series) == len({rows[0]["method"] for rows in series.values()}):
        return {name: base.get(rows[0]["method"], COLORS[0]) for name, rows in series.items()}
    return {name: COLORS[i % len(COLORS)] for i, name in enumerate(series)}


def _numeric(vals: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)


def plot_scaling(rs: list[Result], keys: list[str], path: Path, length_key: str = "task.length") -> Path | None:
    lengths = list({hashable(v): v for v in (r.settings.get(length_key) for r in rs)}.values())  # values may be lists
    if length_key not in keys or len(lengths) < 2 or not _numeric(lengths):
        return None
    rows = aggregate(rs, [k for k in keys if k != "seed"], "rollout_loss_test")
    series = _series(rows, length_key, [k for k in keys if k != "seed"])
    colors = _line_colors(series, _method_colors(rs))
    fig, axes = _figure(2, "Cost vs sequence length (median over seeds), log-log", ncols_max=2)
    handles: dict[str, Any] = {}
    for ax, field_, ylabel in (
        (axes[0], "step_time_ms", "median step time (ms)"),
        (axes[1], "peak_memory_mb", "peak memory of one step (MB)"),
    ):
        any_data = False
        for name, srows in series.items():
            pts = [(r["settings"][length_key], r[field_]) for r in srows if r[field_] is not None and r[field_] > 0]
            if not pts:
                continue
            (line,) = ax.plot(*zip(*pts, strict=True), marker="o", color=colors[name], linewidth=1.8)
            handles.setdefault(name, line)
            any_data = True
        ax.set_xscale("log")
        plain_log_ticks(ax, "x", sorted(float(v) for v in lengths if v is not None))
        if any_data:
            ax.set_yscale("log")
            plain_log_ticks(ax, "y")
        else:
            ax.text(0.5, 0.5, "not recorded on this backend", ha="center", va="center", transform=ax.transAxes, color="0.4")
        ax.set_xlabel("sequence length (steps, task.length)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_title("time per optimizer step", fontsize=10)
    axes[1].set_title("compiled step memory (XLA memory analysis)", fontsize=10)
    return _save(fig, path, list(handles.values()), list(handles))


def plot_final_vs(rs: list[Result], keys: list[str], x_key: str, metric: str, path: Path) -> Path | None:
    gkeys = [k for k in keys if k != "seed"]
    rows = aggregate(rs, gkeys, metric)
    # Rows without the key (BPTT in a consistency-weight sweep) become horizontal reference lines.
    refs = [r for r in rows if r["settings"].get(x_key) is None]
    rows = [r for r in rows if r["settings"].get(x_key) is not None]
    xs_all = list({hashable(v): v for v in (r["settings"].get(x_key) for r in rows)}.values())  # values may be lists
    if len(xs_all) < 2:
        return None
    numeric = _numeric(xs_all)
    cats = sorted(xs_all, key=natural_key)
    pos = (lambda v: v) if numeric else (lambda v: cats.index(v))
    series = _series(rows, x_key, gkeys)
    colors = _line_colors(series, _method_colors(rs))
    names = short_names(gkeys)
    what = METRIC_NAMES.get(metric, metric.replace("_", " "))
    fig, (ax,) = _figure(1, f"Final {what} vs {x_key} (mean ± std over seeds)")
    handles: dict[str, Any] = {}
    ys: list[float] = []
    dashes = {name: (LINESTYLES[i % len(LINESTYLES)], MARKERS[i % len(MARKERS)]) for i, name in enumerate(series)}
    drawn: dict[str, np.ndarray] = {}
    for name, srows in series.items():
        pts = [(pos(r["settings"].get(x_key)), r["mean"], r["std"] or 0.0) for r in srows if r["mean"] is not None]
        if not pts:
            continue
        x, y, e = (np.array(a, dtype=float) for a in zip(*pts, strict=True))
        style, marker = dashes[name]
        line = ax.errorbar(x, y, yerr=e, marker=marker, linestyle=style, capsize=3, color=colors[name], linewidth=1.8)
        drawn[name] = np.stack([x, y, e])
        handles[name] = line
        ys += list(y - e) + list(y + e)
    notes = _identical_notes([drawn])
    handles = {(f"{name} [{notes[name]}]" if name in notes else name): h for name, h in handles.items()}
    ref_colors = _method_colors(rs)
    for r in refs:
        if r["mean"] is not None:
            line = ax.axhline(r["mean"], color=ref_colors.get(r["method"], COLORS[0]), linestyle=":", linewidth=1.8)
            handles.setdefault(f"{r['method']} (has no {x_key.rsplit('.', 1)[-1]}; {r['n']} runs)", line)
            ys.append(r["mean"])
    if "loss" in metric or metric == "objective":
        # The baseline may depend on the swept key (e.g. vocab), so draw it per x.
        base: dict[Any, float] = {}
        for r in rs:
            b = r.value("baseline_loss")
            if b is not None:
                base.setdefault(hashable(r.settings.get(x_key)), b)
        bx = [v for v in cats if hashable(v) in base]
        if bx:
            bl = ax.plot([pos(v) for v in bx], [base[hashable(v)] for v in bx], **BASELINE_STYLE)[0]
            handles.setdefault(_baseline_label(rs, with_value=len(set(base.values())) == 1), bl)
            ys += [base[hashable(v)] for v in bx]
    if not handles:
        return None
    if numeric:
        _maybe_log(ax, [float(v) for v in xs_all], axis="x", span=7.5)
        if ax.get_xscale() == "log":
            plain_log_ticks(ax, "x", [float(v) for v in xs_all])
        elif len(xs_all) <= 12:
            ax.set_xticks(sorted(float(v) for v in xs_all), [_fmt(v) for v in sorted(xs_all)])
    else:
        ax.set_xticks(range(len(cats)), [_fmt(c) for c in cats])
    _shared_y([ax], ys)
    ax.set_xlabel(f"{x_key}" + (" (sequence length, steps)" if x_key == "task.length" else ""))
    ax.set_ylabel(_loss_label(rs, f"final {what}") if "loss" in metric else f"final {what}")
    others = [names[k] for k in gkeys if k != x_key]
    if others:
        ax.set_title(f"one line per method and {', '.join(others)}", fontsize=10)
    ax.grid(True, alpha=0.3)
    return _save(fig, path, list(handles.values()), list(handles))


# ----------------------------------------------------------------------------- seeds as points


def _has_several_seeds(rs: list[Result], keys: list[str]) -> bool:
    groups: dict[str, set[int | None]] = {}
    for r in rs:
        groups.setdefault(hashable([r.label, *(r.settings.get(k) for k in keys)]), set()).add(r.seed)
    return any(len(seeds) > 1 for seeds in groups.values())


def plot_final_by_method(rs: list[Result], keys: list[str], metric: str, path: Path) -> Path | None:
    """Every run's final `metric` as a point (seeds side by side), one panel per task setting."""
    task_keys = [k for k in keys if k.startswith("task.")]
    if not _has_several_seeds(rs, [k for k in keys if k != "seed"]):
        return None
    panels = _panels(rs, task_keys) if task_keys else [("all runs", rs)]
    panels = panels[:MAX_PANELS]
    colors = _method_colors(rs)
    what = METRIC_NAMES.get(metric, metric.replace("_", " "))
    fig, axes = _figure(len(panels), f"Final {what} of every run (points: seeds; bar: mean)", sharey=True)
    handles: dict[str, Any] = {}
    drawn = False
    all_ys: list[float] = []
    # The legend explains the trained baseline only where one ran (it is a column of its own).
    trained = any(r.label == TRAINED_BASELINE for r in rs)
    baseline_text = "memoryless baseline (formula)" + (f"; {TRAINED_BASELINE}: the same model with its recurrence cut" if trained else "")
    for ax, (ptitle, members) in zip(axes, panels, strict=True):
        labels = list(dict.fromkeys(m.label for m in members))
        ys: list[float] = []
        for i, label in enumerate(labels):
            vals = [v for v in (m.value(metric) for m in members if m.label == label) if v is not None]
            if not vals:
                continue
            offsets = np.linspace(-0.18, 0.18, len(vals)) if len(vals) > 1 else np.zeros(1)
            ax.scatter(i + offsets, vals, s=22, color=colors[label], zorder=3)
            ax.hlines(float(np.mean(vals)), i - 0.3, i + 0.3, color=colors[label], linewidth=2, zorder=2)
            ys += vals
            drawn = True
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(labels) - 0.4)
        b = _baseline(ax, members) if "loss" in metric else None
        if b is not None:
            handles.setdefault(baseline_text, b)
            ys.append(float(np.asarray(b.get_ydata())[0]))
        all_ys += ys
        ax.set_title("\n".join(textwrap.wrap(ptitle, width=60)), fontsize=8)
        ax.set_ylabel(_loss_label(members, f"final {what}") if "loss" in metric else f"final {what}", fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    if not drawn:
        return None
    _shared_y(axes, all_ys)
    return _save(fig, path, list(handles.values()), list(handles))


# ----------------------------------------------------------------------------- entry point


def file_part(key: str) -> str:
    """A setting key as part of a file name: anything but letters, digits, `.`, `_` and `-` becomes `-`
    (a key is the user's, and may hold `/`)."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", key)


def plot_records(
    paths: Sequence[str | Path], out_dir: Path, by: list[str] | None = None, metric: str = "rollout_loss_test"
) -> tuple[list[Path], list[str]]:
    """Write every applicable figure for the records under `paths` into `out_dir`: (files, warnings)."""
    loaded = load(paths)
    rs = results(loaded.runs)
    if not rs:
        raise CompareError("nothing to plot: " + ("; ".join(loaded.warnings) or "no run records"))
    keys = [k for k in group_keys(rs, loaded.swept, by) if k != "seed"]
    aggregate(rs, keys, metric)  # validates --metric before any figure is drawn
    warnings = list(loaded.warnings)
    for run_dir in dict.fromkeys(r.run_dir for r in rs):
        bad = read_metrics_checked(run_dir)[1]
        if bad:
            warnings.append(f"{run_dir / METRICS}: skipped {bad} corrupt line(s) (not JSON, or no method name or integer step)")
    panels = _panels(rs, keys)
    if len(panels) > MAX_PANELS:
        warnings.append(f"{len(panels)} settings combinations; the curve figures show the first {MAX_PANELS} (use --by to choose fewer)")
        panels = panels[:MAX_PANELS]
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CompareError(f"--out {out_dir}: is a file, expected a directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # e.g. a file where a parent directory should be, or a read-only filesystem
        raise CompareError(f"--out {out_dir}: cannot create the directory ({e.strerror or e})") from None
    name = rs[0].settings.get("name") or "run"
    written = [
        plot_curves(rs, panels, "step", out_dir / "rollout_vs_steps.png", f"{name}: held-out sequential rollout loss vs optimizer steps"),
        plot_curves(rs, panels, "wall_s", out_dir / "rollout_vs_seconds.png", f"{name}: held-out sequential rollout loss vs training time"),
        plot_objective_gap(
            rs,
            panels,
            out_dir / "objective_vs_rollout.png",
            f"{name}: training objective vs sequential rollout loss, both on the training set",
        ),
        plot_scaling(rs, keys, out_dir / "scaling_vs_length.png"),
    ]
    for key in keys:
        written.append(plot_final_vs(rs, keys, key, metric, out_dir / f"final_vs_{file_part(key)}.png"))
    written.append(plot_final_by_method(rs, keys, metric, out_dir / "final_by_method.png"))
    written.append(plot_lle(rs, out_dir / "lle_vs_parallel.png", f"{name}: parallel solvers against the trained recurrence's LLE"))
    return [p for p in written if p is not None], warnings

"""`seqpar plot`, the cost figures: what each run's quality cost, and how steps to target grow with the lag.

  pareto_seconds.png  final held-out loss against seconds per step × steps to target, one
                      point per run (filled: reached the target; hollow: did not, placed at
                      seconds per step × its steps done, a lower bound on its cost)
  pareto_depth.png    the same against sequential depth × steps to target: a cost that no
                      machine changes (`sequential_depth`, README "Sequential depth")
  steps_vs_lag.png    for a sweep over task.lag: steps to target against the lag, one point
                      per run, per method the median line and a least-squares slope over the
                      runs that reached the target (hollow: not reached, at its last step)
The held-out loss against training seconds is `rollout_vs_seconds.png` (`seqpar.analysis.plots`).
Panels are the task settings (type, length, ...); lines and colours are methods, as there.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seqpar.analysis.compare import group_keys
from seqpar.analysis.plots import (
    MAX_PANELS,
    _baseline,
    _baseline_label,
    _figure,
    _loss_label,
    _maybe_log,
    _method_colors,
    _panels,
    _save,
    plain_log_ticks,
)
from seqpar.records.reader import Result, load, results

LAG_KEY = "task.lag"
HOLLOW = "hollow: target not reached (x: the whole run)"
HOLLOW_LAG = "hollow: target not reached (drawn at its last step)"


def seconds_cost(r: Result, steps: float) -> float | None:
    ms = r.value("step_time_ms")
    return None if ms is None else ms / 1e3 * steps


def depth_cost(r: Result, steps: float) -> float | None:
    d = r.value("sequential_depth")
    return None if d is None else d * steps


def cost_point(r: Result, cost: Callable[[Result, float], float | None]) -> tuple[float, bool] | None:
    """(cost, reached): the cost to target, or for a run that never reached it, the cost of its whole run."""
    to_target = r.value("steps_to_target")
    steps = to_target if to_target is not None else r.value("steps_done")
    if steps is None:
        return None
    c = cost(r, max(steps, 1.0))  # a target met at step 0 still cost the evaluation's step, not nothing
    return None if c is None or c <= 0 else (c, to_target is not None)


def _task_panels(rs: list[Result], keys: list[str], drop: tuple[str, ...] = ()) -> list[tuple[str, list[Result]]]:
    task_keys = [k for k in keys if k.startswith("task.") and k not in drop]
    return (_panels(rs, task_keys) if task_keys else [("all runs", rs)])[:MAX_PANELS]


def plot_pareto(rs: list[Result], keys: list[str], cost: Callable[[Result, float], float | None], xlabel: str, path: Path) -> Path | None:
    panels = _task_panels(rs, keys)
    colors = _method_colors(rs)
    fig, axes = _figure(len(panels), f"Final held-out rollout loss against {xlabel} (one point per run)")
    handles: dict[str, Any] = {}
    drawn = False
    for ax, (title, members) in zip(axes, panels, strict=True):
        ys: list[float] = []
        for r in members:
            pt, y = cost_point(r, cost), r.value("rollout_loss_test")
            if pt is None or y is None:
                continue
            x, reached = pt
            face = colors[r.label] if reached else "none"
            h = ax.scatter([x], [y], s=30, facecolors=face, edgecolors=colors[r.label], zorder=3)
            handles.setdefault(r.label, h)
            if not reached and HOLLOW not in handles:
                handles[HOLLOW] = ax.scatter([], [], s=30, facecolors="none", edgecolors="0.3")
            ys.append(y)
            drawn = True
        b = _baseline(ax, members)
        if b is not None:
            handles.setdefault(_baseline_label(members), b)
            ys.append(float(np.asarray(b.get_ydata())[0]))
        ax.set_xscale("log")
        plain_log_ticks(ax, "x")
        _maybe_log(ax, ys)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(_loss_label(members, "final held-out rollout loss"))
        ax.grid(True, which="both", alpha=0.3)
    if not drawn:
        return None
    return _save(fig, path, list(handles.values()), list(handles))


def lag_slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of steps to target against lag (None without two distinct lags)."""
    if len({x for x, _ in points}) < 2:
        return None
    x, y = (np.array(a, dtype=float) for a in zip(*points, strict=True))
    return float(np.polyfit(x, y, 1)[0])


def plot_steps_vs_lag(rs: list[Result], keys: list[str], path: Path) -> Path | None:
    lags = {r.settings.get(LAG_KEY) for r in rs}
    if LAG_KEY not in keys or len(lags) < 2 or not all(isinstance(v, int) for v in lags):
        return None
    panels = _task_panels(rs, keys, drop=(LAG_KEY,))
    colors = _method_colors(rs)
    fig, axes = _figure(len(panels), "Steps to the target (validation) against the lag: one point per run, slope fitted per method")
    handles: dict[str, Any] = {}
    for ax, (title, members) in zip(axes, panels, strict=True):
        for label in dict.fromkeys(m.label for m in members):
            runs = [m for m in members if m.label == label]
            hit = [(float(m.settings[LAG_KEY]), v) for m in runs if (v := m.value("steps_to_target")) is not None]
            miss = [(float(m.settings[LAG_KEY]), v) for m in runs if m.value("steps_to_target") is None and (v := m.value("steps_done"))]
            c = colors[label]
            if hit:
                ax.scatter(*zip(*hit, strict=True), s=26, color=c, zorder=3)
                by_lag: dict[float, list[float]] = {}
                for x, y in hit:
                    by_lag.setdefault(x, []).append(y)
                xs = sorted(by_lag)
                (line,) = ax.plot(xs, [statistics.median(by_lag[x]) for x in xs], color=c, linewidth=1.6)
                slope = lag_slope(hit)
                shown = f"{label}: slope {slope:.3g} steps per unit lag" if slope is not None else f"{label} (one lag reached: no slope)"
                handles.setdefault(f"{shown} ({len(hit)}/{len(runs)} runs reached)", line)
            if miss:
                ax.scatter(*zip(*miss, strict=True), s=26, facecolors="none", edgecolors=c, zorder=3)
                if HOLLOW_LAG not in handles:
                    handles[HOLLOW_LAG] = ax.scatter([], [], s=26, facecolors="none", edgecolors="0.3")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("lag (task.lag, steps between a token and its recall)")
        ax.set_ylabel("optimizer steps to target (validation)")
        ax.grid(True, alpha=0.3)
    if not handles:
        return None
    return _save(fig, path, list(handles.values()), list(handles))


def plot_costs(paths: Sequence[str | Path], out_dir: Path, by: list[str] | None = None) -> list[Path]:
    """The cost figures for the records under `paths` (those the records can fill) into `out_dir`."""
    loaded = load(paths)
    rs = results(loaded.runs)
    if not rs:
        return []
    keys = [k for k in group_keys(rs, loaded.swept, by) if k != "seed"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [
        plot_pareto(rs, keys, seconds_cost, "seconds per step × steps to target (s)", out_dir / "pareto_seconds.png"),
        plot_pareto(rs, keys, depth_cost, "sequential depth × steps to target", out_dir / "pareto_depth.png"),
        plot_steps_vs_lag(rs, keys, out_dir / "steps_vs_lag.png"),
    ]
    return [p for p in written if p is not None]

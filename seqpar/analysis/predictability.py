"""`seqpar plot`'s predictability figure: what the parallel solvers needed against the LLE.

Gonzalez, Kozachkov et al. (2025) predict that a recurrence with a negative largest
Lyapunov exponent (eval metric `lle`) is cheap to solve in parallel and one with a
positive LLE is not. Over training, each evaluation gives one point per run:

  lle_vs_parallel.png  left: Newton iterations (eval `newton_iters_mean`, DEER-family runs)
                       against the LLE; right: the embedding table's distance from the true
                       rollout (eval `table_rollout_dist`, embedding-parallel runs) against it.
Points of one run are joined in step order (a marker for the last evaluation), one colour
per method label; the dotted line is LLE = 0. Written only when the records hold the pairs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from seqpar.records.reader import Result, read_metrics

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]
# (eval metric on the y axis, panel title, y label)
PANELS = (
    ("newton_iters_mean", "Newton iterations vs LLE (DEER, quasi-DEER, ELK)", "Newton iterations (mean over rows)"),
    ("table_rollout_dist", "embedding table vs LLE (embedding-parallel)", "table–rollout distance (mean ‖E_t − s_t‖)"),
)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _series(rs: list[Result], metric: str) -> dict[str, list[list[tuple[int, float, float]]]]:
    """Per method label, per run: (step, lle, metric) of every evaluation that recorded both."""
    out: dict[str, list[list[tuple[int, float, float]]]] = {}
    cache: dict[Path, list[dict[str, Any]]] = {}
    for r in rs:
        lines = cache.setdefault(r.run_dir, read_metrics(r.run_dir))
        pts = sorted(
            (ln["step"], float(ln["lle"]), float(ln[metric]))
            for ln in lines
            if ln.get("method") == r.label and _finite(ln.get("lle")) and _finite(ln.get(metric))
        )
        if pts:
            out.setdefault(r.label, []).append(pts)
    return out


def plot_lle(rs: list[Result], path: Path, title: str) -> Path | None:
    """Draw `lle_vs_parallel.png` (see the module doc) or return None when no run has the pairs."""
    panels = [(metric, t, y, s) for metric, t, y in PANELS if (s := _series(rs, metric))]
    if not panels:
        return None
    fig = Figure(figsize=(5.0 * len(panels) + 0.5, 4.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False).ravel()
    labels = list(dict.fromkeys(r.label for r in rs))
    colors = {label: COLORS[i % len(COLORS)] for i, label in enumerate(labels)}
    for ax, (_, ptitle, ylabel, series) in zip(axes, panels, strict=True):
        for label, runs in series.items():
            for i, pts in enumerate(runs):
                x, y = [p[1] for p in pts], [p[2] for p in pts]
                ax.plot(x, y, "-", color=colors[label], alpha=0.5, linewidth=1, marker=".")
                ax.plot(x[-1:], y[-1:], "o", color=colors[label], label=label if i == 0 else None)
        ax.axvline(0.0, color="0.45", linestyle=":", linewidth=1.2)
        ax.set_title(ptitle, fontsize=10)
        ax.set_xlabel("largest Lyapunov exponent per step (validation rollouts)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
    fig.suptitle(f"{title} (one point per evaluation; big marker: last)", fontsize=11)
    fig.savefig(path, dpi=100)
    return path

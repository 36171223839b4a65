"""docs/findings/predictability.md: the gain sweep of Gonzalez, Kozachkov et al. (2025, Fig. 2), from `seqpar predictability`."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from seqpar.analysis.findings import block, figure
from seqpar.analysis.findings.common import new_figure, provenance
from seqpar.analysis.findings.stats import count, fmt, spearman, table
from seqpar.analysis.findings.store import FindingsError, NotInStore, read_json, require

STUDY = "predictability"
RECORDS = {"float64": "predictability-float64", "float32": "predictability-float32"}  # file-name prefixes
NAMES = {"deer": "DEER", "quasi-deer": "quasi-DEER", "elk": "ELK"}


def _records(store: Path, dtype: str) -> list[dict[str, Any]]:
    files = sorted(p.name for p in require(STUDY, store).glob(f"{RECORDS[dtype]}*.json"))
    if not files:
        raise NotInStore(STUDY, f"{dtype} record")
    return [read_json(STUDY, f, store) for f in files]


def _points(store: Path, dtype: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The dtype's records merged (ELK may run at fewer lengths, in a record of its own): the first
    record's grid, every record's points."""
    records = _records(store, dtype)
    return records[0], [p for r in records for p in r["points"]]


def _lle_by_gain(points: list[dict[str, Any]]) -> dict[float, float]:
    """The median LLE of each gain, over its draws and lengths (each point's own estimate)."""
    by: dict[float, list[float]] = defaultdict(list)
    for p in points:
        by[p["gain"]].append(p["lle"])
    return {g: statistics.median(v) for g, v in sorted(by.items())}


def _cell(pts: list[dict[str, Any]]) -> str:
    """Median iterations over draws; how many did not converge by the cap."""
    if not pts:
        return "—"
    med = statistics.median(p["iterations"] for p in pts)
    failed = sum(not p["converged"] for p in pts)
    text = count(med)
    return f"{text} ({failed}/{len(pts)} not by {pts[0]['cap']})" if failed else text


def _same(p: dict[str, Any], q: dict[str, Any]) -> bool:
    return (p["gain"], p["length"], p["draw"]) == (q["gain"], q["length"], q["draw"])


def _draws(xs: list[Any]) -> str:
    return f"{len(xs)} draw{'s' if len(xs) != 1 else ''}"


def _grid(points: list[dict[str, Any]]) -> tuple[list[float], list[int], list[str]]:
    gains = sorted({p["gain"] for p in points})
    lengths = sorted({p["length"] for p in points})
    solvers = [s for s in NAMES if any(p["solver"] == s for p in points)]
    return gains, lengths, solvers


def _table(store: Path, dtype: str) -> str:
    record, points = _points(store, dtype)
    gains, lengths, solvers = _grid(points)
    lle = _lle_by_gain(points)
    spread = max(p["lle_spread"] for p in points)
    rows = []
    for g in gains:
        cells = [f"{fmt(g, 3)}", f"{lle[g]:+.3f}"]
        for s in solvers:
            for t in lengths:
                pts = [p for p in points if p["gain"] == g and p["solver"] == s and p["length"] == t]
                cells.append(_cell(pts))
        rows.append(cells)
    head = ["gain g", "LLE / step (median)", *(f"{NAMES[s]} T = {t}" for s in solvers for t in lengths)]
    grid = record["grid"]
    elk = next((r["grid"] for r in _records(store, dtype) if "elk" in r["grid"]["solvers"]), None)
    damping = f", ELK's λ = {fmt(elk['damping'])}" if elk else ""
    return (
        f"{dtype}, D = {grid['hidden']}, {grid['sequences']} draws per gain (weights, inputs and initial state), initial guess "
        f"{grid['init']}{damping}; the LLE with {grid['burn_in']} burn-in steps, its spread between "
        f"tangent vectors at most {fmt(spread)}. Median Newton iterations to a residual of "
        f"{'1e-8' if dtype == 'float64' else 'tol: auto'} (the cap is T, the paper's):\n\n" + table(head, rows)
    )


@block("predictability.provenance")
def predictability_provenance(store: Path) -> str:
    return provenance(store, STUDY)


@block("predictability.float64")
def table64(store: Path) -> str:
    return _table(store, "float64")


@block("predictability.float32")
def table32(store: Path) -> str:
    return _table(store, "float32")


def _jump(points: list[dict[str, Any]], solver: str, length: int) -> tuple[list[float], list[float]]:
    """Iterations ÷ T of the converged-or-capped solves, below and above LLE 0."""
    below, above = [], []
    for p in points:
        if p["solver"] == solver and p["length"] == length:
            (below if p["lle"] < 0 else above).append(p["iterations"] / length)
    return below, above


@block("predictability.summary")
def summary(store: Path) -> str:
    lines = []
    for dtype in RECORDS:
        try:
            _, points = _points(store, dtype)
        except FindingsError:
            continue
        gains, lengths, solvers = _grid(points)
        t = max(lengths)
        for s in solvers:
            below, above = _jump(points, s, t)
            rho = spearman(
                [p["lle"] for p in points if p["solver"] == s and p["length"] == t],
                [p["iterations"] for p in points if p["solver"] == s and p["length"] == t],
            )
            if below and above:
                lines.append(
                    f"- **{NAMES[s]}, {dtype}, T = {t}:** median {count(statistics.median(below) * t)} iterations where the LLE is "
                    f"negative ({_draws(below)}), {count(statistics.median(above) * t)} where it is positive ({_draws(above)}, "
                    f"the cap is {t}); Spearman's ρ between LLE and iterations {fmt(rho)} (this solver, this T)."
                )
            elif below or above:
                lines.append(f"- **{NAMES[s]}, {dtype}, T = {t}:** every draw's LLE is {'negative' if below else 'positive'}.")
        deer = [p for p in points if p["solver"] == "deer" and p["converged"] and p.get("grad_cos") is not None]
        for sign, mine in (("negative", [p for p in deer if p["lle"] < 0]), ("positive", [p for p in deer if p["lle"] >= 0])):
            if mine:
                lines.append(
                    f"- **The gradient ({dtype}, LLE {sign}):** where DEER converged, its adjoint gradient's cosine with BPTT's "
                    f"(both in {dtype}) is at least {fmt(min(p['grad_cos'] for p in mine), 4)}, median "
                    f"{fmt(statistics.median(p['grad_cos'] for p in mine), 4)} ({_draws(mine).replace('draw', 'solve')})."
                )
        elk = [p for p in points if p["solver"] == "elk"]
        if elk:
            at = sorted({p["length"] for p in elk})
            deer_at = [p for p in points if p["solver"] == "deer" and p["length"] in at]
            failed = [p for p in deer_at if not p["converged"]]
            rescued = [p for p in elk if p["converged"] and any(_same(p, q) for q in failed)]
            where = ", ".join(f"T = {t}" for t in at)
            chaotic = [p for p in elk if p["lle"] >= 0]
            versus = [q["iterations"] for q in deer_at if q["lle"] >= 0]
            compare = (
                f"; where the LLE is positive ELK took median {count(statistics.median(p['iterations'] for p in chaotic))} "
                f"iterations ({sum(not p['converged'] for p in chaotic)} of {len(chaotic)} not converged by T), DEER "
                f"{count(statistics.median(versus))}"
                if chaotic and versus
                else ""
            )
            if not failed:
                lines.append(
                    f"- **ELK where DEER fails ({dtype}, {where}):** DEER converged on every draw (on a causal recurrence Newton is "
                    f"exact by T iterations, and a non-finite iterate is reset), so none is left for ELK to rescue{compare}."
                )
            else:
                lines.append(
                    f"- **ELK where DEER fails ({dtype}, {where}):** DEER did not converge by T on {len(failed)} draws; ELK converged "
                    f"on {len(rescued)} of them{compare}."
                )
    if not lines:
        raise NotInStore(STUDY)
    return "\n".join(lines) + "\n"


@figure("predictability", "Newton iterations against the LLE, float64 and float32")
def predictability_figure(store: Path) -> tuple[dict[str, Any], Any]:
    data: dict[str, Any] = {}
    for dtype in RECORDS:
        try:
            _, points = _points(store, dtype)
        except FindingsError:
            continue
        gains, lengths, solvers = _grid(points)
        data[dtype] = {
            f"{NAMES[s]}, T = {t}": {
                "lle": [p["lle"] for p in points if p["solver"] == s and p["length"] == t],
                "iterations": [p["iterations"] for p in points if p["solver"] == s and p["length"] == t],
                "converged": [p["converged"] for p in points if p["solver"] == s and p["length"] == t],
                "cap": t,
            }
            for s in solvers
            for t in lengths
        }
    if not data:
        raise NotInStore(STUDY)
    return data, _draw


def _draw(data: dict[str, Any], png: Path) -> None:
    fig = new_figure(10, 3.8)
    axes = fig.subplots(1, max(len(data), 1), sharey=True, squeeze=False)[0]
    for ax, (dtype, series) in zip(axes, data.items(), strict=False):
        for name, s in series.items():
            ok = [(x, y) for x, y, c in zip(s["lle"], s["iterations"], s["converged"], strict=True) if c]
            bad = [(x, y) for x, y, c in zip(s["lle"], s["iterations"], s["converged"], strict=True) if not c]
            line = ax.plot([x for x, _ in ok], [y for _, y in ok], "o", markersize=4, label=name)[0]
            ax.plot([x for x, _ in bad], [y for _, y in bad], "x", color=line.get_color(), markersize=6)
        ax.axvline(0.0, color="0.5", linestyle=":", linewidth=1)
        ax.set_yscale("log")
        ax.set_xlabel("largest Lyapunov exponent per step")
        ax.set_title(f"mean-field tanh RNN, {dtype} (x: not converged by the cap T)", fontsize=9)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("Newton iterations")
    axes[-1].legend(fontsize=6, frameon=False)
    fig.savefig(png, dpi=100)

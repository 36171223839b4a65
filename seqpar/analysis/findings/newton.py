"""docs/findings/newton.md: where float32 Newton stops improving (the default tolerance), from `seqpar tolerance`."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from seqpar.analysis.findings import block, figure
from seqpar.analysis.findings.common import new_figure
from seqpar.analysis.findings.stats import fmt, table
from seqpar.analysis.findings.store import read_json

STUDY = "tolerance"


def _cases(store: Path) -> tuple[dict[str, Any], dict[tuple, list[dict[str, Any]]]]:
    record = read_json(STUDY, "tolerance.json", store)
    cases: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for p in record["points"]:
        cases[(p["cell"], p["jacobian"], p["length"])].append(p)
    return record, {k: sorted(v, key=lambda p: p["iteration"]) for k, v in cases.items()}


def _stop(points: list[dict[str, Any]], tol_of) -> dict[str, Any] | None:
    """The first iterate whose residual meets the rule (None: never within the measured iterations)."""
    return next((p for p in points if p["residual"] <= tol_of(p)), None)


def _solver(cell: str, jacobian: str) -> str:
    if cell == "paragru":
        return "Newton (exact diagonal)"
    return "DEER" if jacobian == "full" else "quasi-DEER"


@block("newton.tolerance")
def tolerance_table(store: Path) -> str:
    record, cases = _cases(store)
    eps, factor = record["eps"], record["auto_tol_eps"]
    floors = {k: min(p["residual"] for p in pts) / (eps * pts[-1]["scale"]) for k, pts in cases.items()}
    rows = []
    for (cell, jac, length), pts in cases.items():
        new = _stop(pts, lambda p: factor * eps * p["scale"])
        old = _stop(pts, lambda p: math.sqrt(eps) * p["scale"])

        def at(p):
            return "never" if p is None else f"{p['iteration']}: {fmt(p['state_error'])} / {fmt(p['grad_relerr'])}"

        rows.append(
            [f"{cell} ({_solver(cell, jac)})", str(length), fmt(floors[(cell, jac, length)]), fmt(pts[-1]["state_error"]), at(new), at(old)]
        )
    head = [
        "cell (solver)",
        "T",
        "residual floor ÷ eps (1 + max ‖s‖)",
        "state error at the floor",
        f"stops at ({fmt(factor)} eps rule): iteration: state / gradient error",
        "stopped at (former √eps rule)",
    ]
    worst = max(floors.values())
    return (
        f"In float32 (eps = {fmt(eps, 3)}) every case's residual stops falling at a floor of at most {fmt(worst)} eps (1 + max ‖s‖) "
        f"(the states then {fmt(max(pts[-1]['state_error'] for pts in cases.values()))} or less from the rollout), whatever T. "
        f"`tol: auto` is therefore {fmt(factor)} eps (1 + max ‖s‖): {fmt(factor / worst)} times above the highest floor, so every "
        "converging solve meets it, and low enough to stop within about one iteration of the floor. The former rule, √eps (1 + max ‖s‖), "
        "stopped quasi-DEER iterations early with its states and its gradient far from the rollout's and BPTT's.\n\n" + table(head, rows)
    )


@figure("tolerance", "residual, state error and gradient error against the iteration")
def tolerance_figure(store: Path) -> tuple[dict[str, Any], Any]:
    record, cases = _cases(store)
    eps = record["eps"]
    data = {
        "eps": eps,
        "auto_tol_eps": record["auto_tol_eps"],
        "curves": {
            f"{_solver(c, j)}, {c}, T = {t}": {
                "iteration": [p["iteration"] for p in pts],
                "residual": [p["residual"] / (eps * p["scale"]) for p in pts],
                "state_error": [p["state_error"] for p in pts],
                "grad_relerr": [p["grad_relerr"] for p in pts],
            }
            for (c, j, t), pts in cases.items()
        },
    }
    return data, _draw


def _draw(data: dict[str, Any], png: Path) -> None:
    fig = new_figure(10, 3.4)
    axes = fig.subplots(1, 3)
    for name, c in data["curves"].items():
        style = "-" if "T = 256" in name else "--" if "T = 1024" in name else ":"
        for ax, key in zip(axes, ("residual", "state_error", "grad_relerr"), strict=True):
            ax.plot(c["iteration"], c[key], style, label=name)
    axes[0].axhline(data["auto_tol_eps"], color="k", linewidth=1, label="tol: auto")
    for ax, title in zip(axes, ("residual ÷ eps (1 + max ‖s‖)", "max |state − rollout|", "‖gradient − BPTT's‖ / ‖BPTT's‖"), strict=True):
        ax.set_yscale("log")
        ax.set_xlabel("Newton iteration (from zeros)")
        ax.set_title(title, fontsize=9)
        ax.grid(True, alpha=0.3)
    axes[2].legend(fontsize=6, frameon=False)
    fig.savefig(png, dpi=100)

"""docs/findings/regimes.md: ParaRNN's regime (a fixed budget of k Newton iterations from f(0, x) in its own block)."""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Any

from seqpar.analysis.findings import block, figure
from seqpar.analysis.findings.common import curve, grouped, lle_note, median, new_figure, provenance, ratio, study_results
from seqpar.analysis.findings.stats import count, fmt, seeds_cell, table

STUDY = "pararnn-regime"
CELL = "model.cell.type"


def _k(label: str) -> int | None:
    m = re.search(r"-k(\d+)$", label)
    return int(m.group(1)) if m else None


def _order(label: str) -> tuple[int, str]:
    return (0 if label == "bptt" else _k(label) or 10**6, label)


def _data(store: Path) -> tuple[list[str], list[str], dict[tuple, list]]:
    rs = study_results(store, STUDY)
    cells = sorted({str(r.settings.get(CELL)) for r in rs})
    labels = sorted({r.label for r in rs}, key=_order)
    return cells, labels, grouped(rs, CELL, "label")


def _gaps(groups: dict[tuple, list], cell: str, label: str) -> list[float | None]:
    """Per seed: the method's test loss minus BPTT's of the same seed."""
    bptt = {r.seed: r.value("rollout_loss_test") for r in groups.get((cell, "bptt"), [])}
    out = []
    for r in groups.get((cell, label), []):
        a, b = r.value("rollout_loss_test"), bptt.get(r.seed)
        out.append(a - b if a is not None and b is not None else None)
    return out


def _over_training(rs: list, key: str) -> tuple[float | None, float | None, float | None]:
    """(first, median, last) of a logged metric over training, medians over the seeds."""
    firsts, meds, lasts = [], [], []
    for r in rs:
        c = [v for _, v in curve(r, key)]
        if c:
            firsts.append(c[0])
            meds.append(statistics.median(c))
            lasts.append(c[-1])
    return median(firsts), median(meds), median(lasts)


def _triple(t: tuple[float | None, float | None, float | None], digits: int = 3) -> str:
    return " → ".join(fmt(v, digits) for v in t)


def _counts(t: tuple[float | None, float | None, float | None]) -> str:
    return " → ".join(count(v) for v in t)


def _against_bptt(gap: float | None) -> str:
    if gap is None:
        return "— against BPTT's"
    return f"{fmt(abs(gap), 2)} {'above' if gap > 0 else 'below'} BPTT's" if gap else "at BPTT's"


@block("regimes.table")
def results_table(store: Path) -> str:
    cells, labels, groups = _data(store)
    out = []
    for cell in cells:
        rows = []
        for label in labels:
            rs = groups.get((cell, label), [])
            if not rs:
                continue
            gap = median(_gaps(groups, cell, label))
            rows.append(
                [
                    label,
                    seeds_cell([ratio(r) for r in rs]),
                    "—" if label == "bptt" else fmt(gap, 2),
                    "—" if label == "bptt" else _triple(_over_training(rs, "grad_cos_bptt"), 4),
                    "—" if label == "bptt" else _triple(_over_training(rs, "grad_relerr_bptt"), 2),
                    "—" if label == "bptt" else _counts(_over_training(rs, "train_newton_iters_mean")),
                    _triple(_over_training(rs, "lle"), 2),
                ]
            )
        head = [
            "method",
            "test ÷ baseline",
            "test loss − BPTT's (median)",
            "gradient cosine with BPTT's: first → median → last evaluation",
            "gradient relative error",
            "Newton iterations (train)",
            "LLE",
        ]
        every = [r for label in labels for r in groups.get((cell, label), [])]
        out.append(f"**{cell}** (two layers in ParaRNN's block, its initialisation; {lle_note(every)}):\n\n" + table(head, rows))
    return "\n".join(out)


@block("regimes.summary")
def summary(store: Path) -> str:
    cells, labels, groups = _data(store)
    lines = []
    for cell in cells:
        conv = groups.get((cell, "newton-converged"), [])
        it = _over_training(conv, "train_newton_iters_mean")
        lines.append(
            f"- **{cell}, iterations:** solved to the tolerance from f(0, x), Newton takes {_counts(it)} iterations (first → median "
            "→ last logged step, medians over seeds): ParaRNN's three "
            + ("suffice throughout." if all(v is not None and v <= 3 for v in it) else "do not always suffice.")
        )
        for label in labels:
            k = _k(label)
            if k is None:
                continue
            cos = _over_training(groups.get((cell, label), []), "grad_cos_bptt")
            gap = median(_gaps(groups, cell, label))
            lines.append(
                f"- **{cell}, k = {k}:** the gradient at the k-th iterate has cosine {_triple(cos, 4)} with BPTT's; the test loss ends "
                f"{_against_bptt(gap)} (median over seeds)."
            )
    return "\n".join(lines) + "\n"


@block("regimes.provenance")
def regimes_provenance(store: Path) -> str:
    return provenance(store, STUDY)


FLOOR = 1e-8  # 1 − cosine below this is drawn at it (float32 cannot tell)


@figure("regimes", "gradient and loss against the iteration budget")
def regimes_figure(store: Path) -> tuple[dict[str, Any], Any]:
    cells, labels, groups = _data(store)
    data: dict[str, Any] = {}
    for cell in cells:
        ks, cos, gaps = [], [], []
        for label in labels:
            k = _k(label)
            if k is None:
                continue
            ks.append(k)
            cos.append(_over_training(groups.get((cell, label), []), "grad_cos_bptt")[1])
            gaps.append(median(_gaps(groups, cell, label)))
        data[cell] = {"k": ks, "grad_cos_median": cos, "loss_gap": gaps}
    return data, _draw


def _draw(data: dict[str, Any], png: Path) -> None:
    fig = new_figure(9, 3.4)
    a, b = fig.subplots(1, 2)
    for cell, d in data.items():
        pts = [(k, c, g) for k, c, g in zip(d["k"], d["grad_cos_median"], d["loss_gap"], strict=True)]
        # float32 rounds the cosine of agreeing gradients to 1: floored so the point stays on the log axis
        a.plot([k for k, _, _ in pts], [max(1 - c, FLOOR) if c is not None else None for _, c, _ in pts], "o-", label=cell)
        b.plot([k for k, _, _ in pts], [g for _, _, g in pts], "o-", label=cell)
    a.set_yscale("log")
    a.axhline(FLOOR, color="0.6", linestyle=":", linewidth=1)
    a.set_title(f"1 − cosine(gradient at iterate k, BPTT's), median over training (floor {FLOOR:g})", fontsize=9)
    b.set_title("test loss − BPTT's (median over seeds)", fontsize=9)
    for ax in (a, b):
        ax.set_xlabel("Newton iterations per solve, k (from f(0, x))")
        ax.set_xscale("log", base=2)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
    fig.savefig(png, dpi=100)

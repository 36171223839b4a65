"""docs/findings/speed.md and newton.md#bench: step time and memory from one `seqpar bench` record.

Every ratio is taken within the one bench run (the same process, the same machine state, each
point's methods measured one after another), never across runs."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from seqpar.analysis.findings import block, figure
from seqpar.analysis.findings.common import new_figure
from seqpar.analysis.findings.stats import fmt, table
from seqpar.analysis.findings.store import read_json, read_study

STUDY = "bench"
FILE = "bench.json"


def _record(store: Path) -> dict[str, Any]:
    return read_json(STUDY, FILE, store)


def _points(record: dict[str, Any]) -> dict[tuple, dict[str, dict[str, Any]]]:
    """(cell, length, batch) -> label -> row."""
    out: dict[tuple, dict[str, dict[str, Any]]] = defaultdict(dict)
    for p in record["points"]:
        out[(p["cell"], p["length"], p["batch"])][p["label"]] = p
    return out


def _ms(row: dict[str, Any] | None) -> str:
    if row is None:
        return "—"
    it = (row.get("step_metrics") or {}).get("newton_iters_mean")
    return fmt(row["step_ms"]["median"], 3) + (f" ({fmt(it, 2)} it)" if it is not None else "")


def _provenance(store: Path, record: dict[str, Any]) -> str:
    info = read_study(STUDY, store)
    commands = "\n".join(f"    {c}" for c in info.get("commands", []))
    load = record["machine"].get("load_avg_1m_5m_15m")
    return (
        f"Produced by\n\n{commands}\n\non {record['machine']['summary']}, {str(record['created'])[:10]} (load average "
        f"{fmt(load[0], 2) if load else '—'} at the start; the matrix-multiply peak measured in the run "
        f"{fmt(record['peak_flops_per_s'] / 1e9, 3)} GFLOP/s); median of timed steps after warm-up, each step synchronised, "
        "compilation apart; record: `findings/bench/`.\n"
    )


@block("bench.newton")
def newton_rows(store: Path) -> str:
    record = _record(store)
    pts = _points(record)
    labels = list(dict.fromkeys(p["label"] for p in record["points"]))
    head = ["method", *(f"{c} T={t} B={b}" for c, t, b in pts)]
    rows = [[label, *(_ms(pts[k].get(label)) for k in pts)] for label in labels]
    ratio_rows = []
    for label in labels:
        if label == "bptt":
            continue
        cells = []
        for k in pts:
            a, b = pts[k].get(label), pts[k].get("bptt")
            cells.append(fmt(a["step_ms"]["median"] / b["step_ms"]["median"], 3) if a and b else "—")
        ratio_rows.append([label, *cells])

    def mb(row: dict[str, Any] | None) -> str:
        return fmt((row["memory"] or {}).get("compiled_mb"), 3) if row else "—"

    mem = [[label, *(mb(pts[k].get(label)) for k in pts)] for label in labels]
    skipped = "; ".join(f"{s['label']} at {s['cell']} T={s['length']} B={s['batch']}" for s in record.get("skipped", []))
    return (
        _provenance(store, record)
        + "\nMedian ms per training step (`it`: the mean Newton iterations of the last timed step):\n\n"
        + table(head, rows)
        + "\nEach method's step ÷ tuned BPTT's at the same point:\n\n"
        + table(head, ratio_rows)
        + "\nThe compiled step's memory (MB: arguments + outputs + temporaries − donated):\n\n"
        + table(head, mem)
        + (f"\nNot run (estimated memory above the machine's): {skipped}.\n" if skipped else "")
    )


@block("bench.peer")
def peer_rows(store: Path) -> str:
    record = _record(store)
    rows = [
        [
            f"T={r['length']} B={r['batch']} H={r['hidden']}",
            fmt(r["step_ms"]["median"], 3),
            fmt(r.get("seqpar_bptt_ms"), 3),
            fmt(r.get("seqpar_over_torch"), 2),
            f"torch {r['torch']}, {r['backend']}, {r['threads']} thread{'s' if r['threads'] != 1 else ''}",
        ]
        for r in record.get("peer", [])
    ]
    if not rows:
        return "The record holds no PyTorch row (`--peer torch` was not given).\n"
    head = ["point (GRU)", "nn.GRU step ms", "seqpar BPTT step ms", "seqpar ÷ torch", "peer"]
    return (
        "What a PyTorch user would otherwise run: `torch.nn.GRU` with a linear readout, cross-entropy and Adam, one training step "
        "at the same shapes, timed in the same run (`seqpar bench --peer torch`):\n\n" + table(head, rows)
    )


@block("bench.speed")
def speed_rows(store: Path) -> str:
    record = _record(store)
    pts = _points(record)
    rows = []
    for (cell, t, b), by in pts.items():
        bptt, par = by.get("bptt"), by.get("parallel")
        if bptt and par:
            rows.append(
                [
                    f"{cell} T={t} B={b}",
                    fmt(bptt["step_ms"]["median"], 3),
                    fmt(par["step_ms"]["median"], 3),
                    fmt(bptt["step_ms"]["median"] / par["step_ms"]["median"], 3),
                ]
            )
    head = ["point", "tuned BPTT ms", "embedding-parallel ms", "speedup (BPTT ÷ parallel)"]
    return _provenance(store, record) + "\n" + table(head, rows)


@block("bench.profile")
def profile_rows(store: Path) -> str:
    record = _record(store)
    rows = [
        [f"{r['cell']} T={r['length']} B={r['batch']}", r["stage"], fmt(r["step_ms"]["median"], 3), fmt(r.get("peak_fraction"), 2)]
        for r in record.get("profile", [])
    ]
    if not rows:
        return "The record holds no profile (`--profile` was not given).\n"
    return "The embedding-parallel step in cumulative stages (`seqpar bench --profile`):\n\n" + table(
        ["point", "stage", "ms", "of peak"], rows
    )


@figure("bench", "median step time against length, every method")
def bench_figure(store: Path) -> tuple[dict[str, Any], Any]:
    record = _record(store)
    series: dict[str, dict[str, list]] = {}
    for p in record["points"]:
        s = series.setdefault(f"{p['label']} ({p['cell']}, B={p['batch']})", {"length": [], "ms": []})
        s["length"].append(p["length"])
        s["ms"].append(p["step_ms"]["median"])
    for r in record.get("peer", []):
        s = series.setdefault(f"torch nn.GRU (gru, B={r['batch']})", {"length": [], "ms": []})
        s["length"].append(r["length"])
        s["ms"].append(r["step_ms"]["median"])
    return {"series": series}, _draw


def _draw(data: dict[str, Any], png: Path) -> None:
    """One colour per method, one line style per cell and batch (a name reads `method (cell, B=b)`)."""
    fig = new_figure(8, 4.5)
    ax = fig.subplots()
    names = sorted(data["series"])
    methods = list(dict.fromkeys(n.split(" (")[0] for n in names))
    kinds = list(dict.fromkeys(n.split(" (", 1)[1] for n in names))
    styles = ["-", "--", ":", "-."]
    for name in names:
        s = data["series"][name]
        method, kind = name.split(" (")[0], name.split(" (", 1)[1]
        pts = sorted(zip(s["length"], s["ms"], strict=True))
        ax.plot(
            [t for t, _ in pts],
            [m for _, m in pts],
            styles[kinds.index(kind) % len(styles)],
            marker="o",
            markersize=3,
            color=f"C{methods.index(method) % 10}" if len(methods) <= 10 else None,
            label=name,
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("median ms per training step")
    ax.set_title("colour: method; line style: cell and batch", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6, ncol=2, frameon=False)
    fig.savefig(png, dpi=100)

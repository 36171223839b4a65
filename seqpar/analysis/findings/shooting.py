"""docs/findings/shooting.md: multiple shooting between the seed's table (K = 1) and BPTT (K = T)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from seqpar.analysis.findings import block, figure
from seqpar.analysis.findings.common import curve, grouped, median, new_figure, provenance, ratio, steps_cell, study_results
from seqpar.analysis.findings.stats import LEARNED, count, fmt, seeds_cell, table
from seqpar.analysis.findings.store import read_json, read_study

STUDY = "shooting"
BENCH = "bench-shooting"  # `seqpar bench experiments/bench_shooting.yaml`: step time and memory against K at T = 4096


def _k(label: str) -> int | None:
    m = re.search(r"-k(\d+)", label)
    return int(m.group(1)) if m else None


def _kind(label: str) -> str:
    if label == "bptt":
        return "bptt"
    if label.startswith("tbptt"):
        return "truncated BPTT"
    return "augmented Lagrangian" if label.endswith("-al") else "penalty"


def _order(label: str) -> tuple[int, int, str]:
    kinds = {"bptt": 0, "truncated BPTT": 3, "penalty": 1, "augmented Lagrangian": 2}
    return (_k(label) or 10**6, kinds[_kind(label)], label)


def _data(store: Path) -> tuple[list[int], list[str], dict[tuple, list]]:
    rs = study_results(store, STUDY)
    lags = sorted({r.settings["task.lag"] for r in rs})
    labels = sorted({r.label for r in rs}, key=_order)
    return lags, labels, grouped(rs, "label", "task.lag")


def _ratios(groups: dict[tuple, list], label: str, lag: int) -> list[float | None]:
    return [ratio(r) for r in groups.get((label, lag), [])]


@block("shooting.table")
def results_table(store: Path) -> str:
    lags, labels, groups = _data(store)
    head = ["method", "K", *(f"lag {lag}" for lag in lags), "steps in 60 s", "depth"]
    rows = []
    for label in labels:
        runs = [r for lag in lags for r in groups.get((label, lag), [])]
        rows.append(
            [
                label,
                _k_text(label),
                *(seeds_cell(_ratios(groups, label, lag)) for lag in lags),
                count(median(r.record.get("steps_done") for r in runs)),
                count(runs[0].value("sequential_depth")),
            ]
        )
    return (
        "Test rollout loss ÷ the memoryless baseline (ln 2), per lag; **bold**: below half of it (the cell uses its memory). "
        "Where the seeds disagree every seed is shown, else their mean. `steps in 60 s`: the median steps a method took in its budget "
        "(every lag and seed); `depth`: the dependent cell steps on one training step's critical path.\n\n" + table(head, rows)
    )


def _k_text(label: str) -> str:
    return str(_k(label) or ("T" if label == "bptt" else "—"))


def _horizon(rs: list) -> str:
    """The agreement horizon at the last evaluation: the leading steps over which the nodes agree with the rollout."""
    got = [c[-1][1] for c in (curve(r, "agreement_horizon") for r in rs) if c]
    return count(median(got)) if got else "—"


@block("shooting.steps")
def steps_table(store: Path) -> str:
    lags, labels, groups = _data(store)
    head = ["method", "K", *(f"lag {lag}: steps / s to target / horizon" for lag in lags)]
    rows = []
    for label in labels:
        cells = []
        for lag in lags:
            rs = groups.get((label, lag), [])
            cells.append(f"{steps_cell(rs)} / {steps_cell(rs, 'seconds_to_target')} / {_horizon(rs)}")
        rows.append([label, _k_text(label), *cells])
    return (
        "Steps and seconds of training to the validation target (a tenth of the baseline): the median over the seeds that "
        "reached it, and how many did; the agreement horizon at the end (median over seeds; the steps from the start over "
        "which the nodes agree with the sequential rollout, T = 256 where they agree everywhere; — for methods without a "
        "table). The seed's prediction, re-asked: steps to target should grow with the lag for a table that carries "
        "information one node per update.\n\n" + table(head, rows)
    )


@block("shooting.cost")
def cost_table(store: Path) -> str:
    record = read_json(BENCH, "bench.json", store)
    methods = {m.get("label") or m["type"]: m for m in record["spec"]["methods"]}
    rows, bptt = [], None
    for p in record["points"]:
        if p["label"] == "bptt":
            bptt = p["step_ms"]["median"]
    for p in record["points"]:
        cfg = methods.get(p["label"], {})
        # multiple shooting's K (a record leaves out segment at its default, 1), or truncation's
        k = cfg.get("segment", 1 if cfg.get("type") == "parallel" else None) or cfg.get("window")
        k = str(k) if k else ("T" if p["label"] == "bptt" else "—")
        rows.append(
            [
                p["label"],
                k,
                fmt(p["step_ms"]["median"], 3),
                fmt(p["step_ms"]["median"] / bptt, 3) if bptt else "—",
                fmt(p["table_bytes"] / 2**20, 3) if p.get("table_bytes") else "—",
                fmt(p["memory"]["compiled_mb"], 3),
                count(p.get("sequential_depth")),
            ]
        )
    info = read_study(BENCH, store)
    commands = "\n".join(f"    {c}" for c in info.get("commands", []))
    first = record["points"][0]
    return (
        f"One training step at T = {first['length']}, {first['batch']} sequences, GRU {first['hidden']}, on "
        f"{record['machine']['summary']}, {str(record['created'])[:10]}: median of timed steps after warm-up, compilation "
        "apart, every row in the one bench run. `table MiB`: the nodes (and the augmented Lagrangian's multipliers); "
        "`compiled MiB`: the step's compiled memory (arguments, outputs, temporaries); `depth`: dependent cell steps on the "
        f"critical path. Produced by\n\n{commands}\n\n"
        + table(["method", "K", "step ms", "÷ BPTT", "table MiB", "compiled MiB", "depth"], rows)
    )


PART, NONE = 0.8, 0.9  # "carries part of it": a table below PART of the baseline where truncation stays at NONE or above


def _plain(cell: str) -> str:
    return cell.replace("**", "")


def _learned(groups: dict[tuple, list], label: str, lag: int) -> bool:
    m = median(_ratios(groups, label, lag))
    return m is not None and m < LEARNED


@block("shooting.summary")
def summary(store: Path) -> str:
    lags, labels, groups = _data(store)
    ks = sorted({k for k in (_k(label) for label in labels) if k is not None})
    lines = []
    # 1. From which K does the table train a cell that uses its memory?
    for lag in lags:
        wins = [label for label in labels if _kind(label) in ("penalty", "augmented Lagrangian") and _learned(groups, label, lag)]
        first = min((k for k in map(_k, wins) if k is not None), default=None)
        bptt = _plain(seeds_cell(_ratios(groups, "bptt", lag)))
        if first is None:
            lines.append(
                f"- **Lag {lag}:** no segment length K ∈ {{{', '.join(map(str, ks))}}} trains a cell below half the baseline "
                f"with either constraint (BPTT: {bptt} of the baseline)."
            )
        else:
            which = "; ".join(f"{w}: {_plain(seeds_cell(_ratios(groups, w, lag)))}" for w in wins if _k(w) == first)
            lines.append(
                f"- **Lag {lag}:** from K = {first} on the table trains a cell that uses its memory ({which} of the baseline); "
                f"BPTT: {bptt}."
            )
    # 2. Does the boundary table carry anything across a boundary that truncation cannot?
    carried = []
    for k in ks:
        for lag in (lag for lag in lags if lag > k):
            tb = median(_ratios(groups, f"tbptt-k{k}", lag))
            for label in (f"shoot-k{k}", f"shoot-k{k}-al"):
                sh = median(_ratios(groups, label, lag))
                if sh is not None and tb is not None:
                    carried.append((k, lag, label, sh, tb))
    better = [c for c in carried if c[3] < LEARNED <= c[4]]
    part = [c for c in carried if c not in better and c[3] < PART and c[4] >= NONE]
    said = []
    if better:
        items = "; ".join(f"{label} at lag {lag}: {fmt(sh)} against {fmt(tb)}" for _, lag, label, sh, tb in better)
        said.append(f"the nodes carry what truncation at the same K cannot, where the lag exceeds K: {items}")
    if part:
        items = "; ".join(f"{label} at lag {lag}: {fmt(sh)} against {fmt(tb)}" for _, lag, label, sh, tb in part)
        said.append(
            f"the nodes carry part of the token across boundaries that truncation cuts (below {PART} of the baseline where "
            f"truncated BPTT with the same K stays at {NONE} or above), short of using the memory: {items}"
        )
    if said:
        lines.append(f"- **Across a boundary:** {'; and '.join(said)} (medians over seeds).")
    elif carried:
        lines.append(
            "- **Across a boundary:** at no lag longer than K does a shooting table end below "
            f"{PART} of the baseline where truncated BPTT with the same K stays at {NONE} or above: the nodes carry nothing "
            f"across a boundary that truncation cannot ({len(carried)} (K, lag, constraint) comparisons)."
        )
    # 3. Penalty against the augmented Lagrangian.
    pairs = [(median(_ratios(groups, f"shoot-k{k}", lag)), median(_ratios(groups, f"shoot-k{k}-al", lag))) for k in ks for lag in lags]
    pairs = [(p, a) for p, a in pairs if p is not None and a is not None]
    if pairs:
        al_better = sum(a < p for p, a in pairs)
        lines.append(
            f"- **Penalty or augmented Lagrangian:** the augmented Lagrangian ends lower in {al_better} of {len(pairs)} "
            "(K, lag) cells (medians over seeds)."
        )
    return "\n".join(lines) + "\n"


@block("shooting.provenance")
def shooting_provenance(store: Path) -> str:
    return provenance(store, STUDY)


@figure("shooting", "test loss against the segment length K")
def shooting_figure(store: Path) -> tuple[dict[str, Any], Any]:
    lags, labels, groups = _data(store)
    series: dict[str, dict[str, list]] = {}
    for label in labels:
        if _k(label) is None:
            continue
        kind = _kind(label)
        for lag in lags:
            m = median(_ratios(groups, label, lag))
            s = series.setdefault(f"{kind}, lag {lag}", {"k": [], "ratio": []})
            s["k"].append(_k(label))
            s["ratio"].append(m)
    bptt = {str(lag): median(_ratios(groups, "bptt", lag)) for lag in lags}
    data = {"series": series, "bptt": bptt, "lags": lags}
    return data, _draw


def _draw(data: dict[str, Any], png: Path) -> None:
    fig = new_figure(9, 3.6)
    axes = fig.subplots(1, len(data["lags"]), sharey=True, squeeze=False)[0]
    styles = {"penalty": ("o-", "#1f77b4"), "augmented Lagrangian": ("s--", "#d62728"), "truncated BPTT": ("^:", "#2ca02c")}
    for ax, lag in zip(axes, data["lags"], strict=True):
        for kind, (style, color) in styles.items():
            s = data["series"].get(f"{kind}, lag {lag}")
            if s:
                pts = sorted((k, r) for k, r in zip(s["k"], s["ratio"], strict=True) if r is not None)
                ax.plot([k for k, _ in pts], [r for _, r in pts], style, color=color, label=kind)
        b = data["bptt"].get(str(lag))
        if b is not None:
            ax.axhline(b, color="0.3", linewidth=1.2, label="BPTT (K = T)")
        ax.axhline(1.0, color="0.6", linestyle=":", linewidth=1, label="memoryless baseline")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("segment length K")
        ax.set_title(f"delayed recall, lag {lag}", fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("test loss ÷ baseline (median of seeds)")
    axes[-1].legend(fontsize=7, frameon=False)
    fig.savefig(png, dpi=100)

"""The README's and the landing page's numbers: the quickstart's output, and one line per findings page."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from seqpar.analysis.findings import BLOCKS, block, figure
from seqpar.analysis.findings.common import curve, new_figure, study_results
from seqpar.analysis.findings.stats import LEARNED, fmt
from seqpar.analysis.findings.store import FindingsError, NotInStore, read_study, require

QUICKSTART = "quickstart"


def _summary(store: Path) -> tuple[Path, dict[str, Any]]:
    runs = sorted(require(QUICKSTART, store).rglob("summary.json"))
    if not runs:
        raise FindingsError(f"findings/{QUICKSTART}: no run record")
    return runs[0].parent, json.loads(runs[0].read_text())


@block("quickstart.output")
def output(store: Path) -> str:
    """The results table `seqpar run experiments/quickstart.yaml` printed, from the stored record."""
    from rich.console import Console

    from seqpar.analysis.report import results_table

    _, summary = _summary(store)
    buf = io.StringIO()
    Console(file=buf, width=160, color_system=None, force_terminal=False).print(results_table(summary))
    lines = [ln.rstrip() for ln in buf.getvalue().splitlines()]
    return "```\n" + "\n".join(lines) + "\n```\n"


@block("quickstart.reading")
def reading(store: Path) -> str:
    rs = study_results(store, QUICKSTART)
    bptt = next(r for r in rs if r.label == "bptt")
    par = next(r for r in rs if r.label == "parallel")
    base = bptt.value("baseline_loss") or 0.0
    b_loss, p_loss, p_obj = bptt.value("rollout_loss_test"), par.value("rollout_loss_test"), par.value("objective")
    q1, q4 = (par.value(f"table_rollout_dist_q{i}") for i in (1, 4))
    solved = b_loss is not None and b_loss < LEARNED * base
    text = (
        f"Here BPTT {'solves the task' if solved else 'does not solve the task'} ({fmt(b_loss, 2)} against the baseline's "
        f"{fmt(base, 3)}), while the embedding-parallel method drives its **training objective to {fmt(p_obj, 2)}** with a "
        f"**held-out rollout loss of {fmt(p_loss, 3)}**"
    )
    if p_loss is not None and p_loss > base:
        text += ", worse than the memoryless baseline"
    if p_loss is not None and p_obj is not None and p_loss > 10 * p_obj and q1 is not None and q4 is not None:
        grows = "grows" if q4 > q1 else "stays"
        text += (
            f": its table holds states the cell cannot reproduce sequentially (their distance from the true rollout states "
            f"{grows} from {fmt(q1, 2)} in the first quarter of the sequence to {fmt(q4, 2)} in the last)"
        )
    return text + ".\n"


@block("quickstart.timing")
def timing(store: Path) -> str:
    rs = study_results(store, QUICKSTART)
    _, summary = _summary(store)
    walls = ", ".join(f"{r.label} {fmt(r.value('wall_s'), 2)} s after a {fmt(r.value('compile_s'), 2)} s compile" for r in rs)
    return (
        f"**How long.** The quickstart's methods train for {walls} "
        f"(recorded {str(summary.get('started', ''))[:10]} on {_machine(store)}); "
        "installing adds the time of a `pip install` of JAX and its dependencies.\n"
    )


def _machine(store: Path) -> str:
    sources = read_study(QUICKSTART, store).get("sources") or [{}]
    return sources[0].get("machine") or "an unnamed machine"


@figure("quickstart", "the quickstart: BPTT's and the embedding table's training objective against their held-out rollout loss")
def quickstart_figure(store: Path) -> tuple[dict[str, Any], Any]:
    rs = study_results(store, QUICKSTART)
    data = {
        r.label: {
            "objective": [[s, v] for s, v in curve(r, "objective")],
            "rollout": [[s, v] for s, v in curve(r, "rollout_loss_val")],
            "baseline": r.value("baseline_loss"),
        }
        for r in rs
    }
    return data, _draw


def _draw(data: dict[str, Any], png: Path) -> None:
    fig = new_figure(7, 3.6)
    ax = fig.subplots()
    for i, (label, d) in enumerate(data.items()):
        ax.plot(*zip(*d["objective"], strict=True), "--", color=f"C{i}", label=f"{label}: training objective")
        ax.plot(*zip(*d["rollout"], strict=True), "-", color=f"C{i}", label=f"{label}: held-out rollout loss")
    base = next(iter(data.values()))["baseline"]
    if base:
        ax.axhline(base, color="k", linewidth=1, label="memoryless baseline")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_title("the quickstart: training objective (dashed) against held-out rollout loss (solid)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    fig.savefig(png, dpi=100)


# ----------------------------------------------------------------------------- one line per page


def _first_line(name: str, store: Path) -> str:
    """The first sentence-line of a page's generated summary block (its first bullet), or the reason it has none."""
    try:
        text = BLOCKS[name](store)
    except NotInStore as e:
        return f"not measured (the store holds no record of `{e.study}`)"
    except (FindingsError, KeyError) as e:
        return f"(no record: {e})"
    first = next((ln for ln in text.splitlines() if ln.startswith("- ")), text.strip().splitlines()[0] if text.strip() else "")
    return first.removeprefix("- ")


PAGES = (
    ("The verdict", "docs/findings/verdict.md", "verdict.summary"),
    ("Multiple shooting", "docs/findings/shooting.md", "shooting.summary"),
    ("ParaRNN's regime", "docs/findings/regimes.md", "regimes.summary"),
    ("Predictability", "docs/findings/predictability.md", "predictability.summary"),
    ("The frontier", "docs/findings/frontier.md", "frontier.summary"),
    ("Long sequences", "docs/findings/long.md", "long.summary"),
)


@block("readme.findings")
def readme_findings(store: Path) -> str:
    lines = ["| page | its first finding (generated from the store) |", "|---|---|"]
    for title, page, name in PAGES:
        lines.append(f"| [{title}]({page}) | {_first_line(name, store)} |")
    return "\n".join(lines) + "\n"

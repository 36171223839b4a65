"""Output of `seqpar bench`: the Rich table and the log-log plot of `bench.json`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from seqpar.analysis.report import fmt


def _ms(s: dict[str, float]) -> str:
    # Median, then half the interquartile range: the spread of repeated steps.
    return f"{s['median']:.3g}±{(s['p75'] - s['p25']) / 2:.2g}"


def bench_table(result: dict[str, Any]) -> Table:
    m = result["machine"]
    start = result["matmul_peak"]["flops_per_s"]
    after = (result.get("matmul_peak_after") or {}).get("flops_per_s") or start
    peak = result.get("peak_flops_per_s", start)
    t = Table(
        title=f"seqpar bench on {m['summary']}: matmul peak {peak / 1e9:.0f} GFLOP/s (start {start / 1e9:.0f}, end {after / 1e9:.0f})",
        caption="ms: median±half the interquartile range of n timed steps; min: fastest step; k: the winning lax.scan unroll; "
        "GF/s and %pk: XLA cost-analysis FLOPs / median, / the matmul peak (≥: a scan, whose body XLA counts once); "
        "speedup: tuned BPTT's median / this median; it: Newton iterations (mean over the batch, last timed step); "
        "prog MB: compiled step (args + outputs + temps - aliases); "
        "faults: minor page faults per step (many: large buffers are faulted in afresh every step; "
        "try GLIBC_TUNABLES=glibc.malloc.hugetlb=1); "
        "ms/it, ÷yard: a Newton solve alone per iteration, and over the yardstick's (a minimal quasi-DEER, seqpar.bench.yardstick)",
    )
    cols = ("method", "cell", "T", "B", "k", "it", "ms", "min", "n", "compile s", "GF/s", "%pk", "speedup", "prog MB", "RSS MB", "table MB")
    cols += ("faults", "ms/it", "÷yard")
    for c in cols:
        t.add_column(c, justify="left" if c in ("method", "cell") else "right")
    for r in [*result["points"], *result.get("yardstick", [])]:
        lower = "" if r.get("flops_exact", True) else "≥"
        gf, pf, sp = r.get("flops_per_s"), r.get("peak_fraction"), r.get("speedup_vs_bptt")
        t.add_row(
            r["label"],
            r["cell"],
            str(r["length"]),
            str(r["batch"]),
            fmt(r.get("unroll")) if r.get("unroll_candidates") else "—",
            fmt((r.get("step_metrics") or {}).get("newton_iters_mean"), ".1f"),
            _ms(r["step_ms"]),
            fmt(r["step_ms"]["min"], ".3g"),
            str(r["step_ms"]["n"]),
            fmt(r["compile_s"], ".1f"),
            f"{lower}{gf / 1e9:.1f}" if gf else "—",
            f"{lower}{100 * pf:.1f}" if pf else "—",
            f"{sp:.2f}×" if sp else "—",
            fmt(r["memory"].get("compiled_mb"), ".1f"),
            fmt(r.get("peak_rss_mb"), ".0f"),
            fmt(r["table_bytes"] / 2**20, ".2f") if r["table_bytes"] else "—",
            fmt(r.get("minor_faults_per_step"), ".0f"),
            fmt(r.get("ms_per_iteration"), ".3g"),
            f"{r['vs_yardstick']:.2f}×" if r.get("vs_yardstick") else "—",
        )
    for r in result.get("skipped", []):  # estimated over the machine's memory: not run (bench.json has the estimate)
        t.add_row(r["label"], r["cell"], str(r["length"]), str(r["batch"]), "—", "—", "[yellow]skipped: memory", *["—"] * (len(cols) - 7))
    return t


def profile_table(rows: list[dict[str, Any]]) -> Table:
    """`seqpar bench --profile`: the embedding-parallel step in cumulative stages (`seqpar.bench.profile`)."""
    t = Table(
        title="the embedding-parallel step in stages (each row includes the ones above it from `objective` on)",
        caption="ms: median±half the interquartile range; +ms: what the stage adds to the row above; "
        "GF/s, %pk: XLA's FLOPs of the stage / median, / the matmul peak; fusions: fused loops in its compiled program",
    )
    for c in ("method", "cell", "T", "B", "stage", "ms", "+ms", "GF/s", "%pk", "fusions"):
        t.add_column(c, justify="left" if c in ("method", "cell", "stage") else "right")
    for r in rows:
        gf, pf = r.get("flops_per_s"), r.get("peak_fraction")
        t.add_row(
            r["label"],
            r["cell"],
            str(r["length"]),
            str(r["batch"]),
            r["stage"],
            _ms(r["step_ms"]),
            fmt(r.get("added_ms"), ".3g"),
            f"{gf / 1e9:.1f}" if gf else "—",
            f"{100 * pf:.1f}" if pf else "—",
            fmt(r.get("fusions")),
        )
    return t


def overhead_table(rows: list[dict[str, Any]]) -> Table:
    t = Table(title="seqpar run vs a bare loop over the same compiled step (ms/step per round; one sync per chunk in both)")
    for c in ("method", "cell", "T", "B", "steps", "run ms/step", "bare ms/step", "run / bare"):
        t.add_column(c, justify="left" if c in ("method", "cell") else "right")
    for o in rows:
        t.add_row(
            o["method"],
            o["cell"],
            str(o["length"]),
            str(o["batch"]),
            f"{o['steps']} (chunks of {o['chunk']})",
            " ".join(f"{v:.3g}" for v in o["run_step_ms"]),
            " ".join(f"{v:.3g}" for v in o["bare_step_ms"]),
            f"{o['ratio']:.3f}",
        )
    return t


def peer_table(rows: list[dict[str, Any]]) -> Table:
    t = Table(title="what a user would otherwise run: PyTorch's nn.GRU, one BPTT training step (same shapes, same machine state)")
    for c in ("peer", "T", "B", "H", "median ms", "backend", "threads", "seqpar bptt ms", "seqpar ÷ torch"):
        t.add_column(c, justify="left" if c in ("peer", "backend") else "right")
    for r in rows:
        t.add_row(
            f"{r['label']} {r['torch']}",
            str(r["length"]),
            str(r["batch"]),
            str(r["hidden"]),
            _ms(r["step_ms"]),
            r["backend"],
            str(r["threads"]),
            f"{r['seqpar_bptt_ms']:.3g}" if "seqpar_bptt_ms" in r else "—",
            f"{r['seqpar_over_torch']:.3g}" if "seqpar_over_torch" in r else "—",
        )
    return t


def plot_bench(result: dict[str, Any], path: Path) -> None:
    """Log-log step time and compiled-program memory against length; one line per method x cell x batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = result["points"]
    labels = sorted({r["label"] for r in points}, key=[r["label"] for r in points].index)
    batches = sorted({r["batch"] for r in points})
    cells = sorted({r["cell"] for r in points})
    colors = {label: f"C{i}" for i, label in enumerate(labels)}
    markers = dict(zip(batches, "os^Dv<>p*h", strict=False))
    styles = dict(zip(cells, ["-", "--", ":", "-."], strict=False))
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 5.6), layout="constrained")
    any_memory = False
    for label in labels:
        for cell in cells:
            for b in batches:
                rows = [r for r in points if r["label"] == label and r["cell"] == cell and r["batch"] == b]
                rows.sort(key=lambda r: r["length"])
                if not rows:
                    continue
                name = f"{label} {cell} B={b}" if len(cells) > 1 else f"{label} B={b}"
                kw = dict(color=colors[label], marker=markers[b], linestyle=styles[cell], label=name)
                xs = [r["length"] for r in rows]
                med = [r["step_ms"]["median"] for r in rows]
                ax_t.plot(xs, med, **kw)
                # The interquartile range of repeated steps as a band.
                p25, p75 = [r["step_ms"]["p25"] for r in rows], [r["step_ms"]["p75"] for r in rows]
                ax_t.fill_between(xs, p25, p75, color=colors[label], alpha=0.15)
                mem = [r["memory"].get("compiled_mb") for r in rows]
                if all(v is not None and v > 0 for v in mem):
                    ax_m.plot(xs, mem, **kw)
                    any_memory = True
    from seqpar.analysis.plots import plain_log_ticks

    lengths = sorted({r["length"] for r in points})
    for ax, ylabel in ((ax_t, "gradient step time (ms, median; band: IQR)"), (ax_m, "compiled step memory (MB)")):
        ax.set_xscale("log", base=2)
        plain_log_ticks(ax, "x", [float(v) for v in lengths])
        if ax is ax_t or any_memory:
            ax.set_yscale("log")
            plain_log_ticks(ax, "y")  # 1, 2, 5, 10, ... (evenly spaced within one decade), never 2x10^0
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax_m.set_title("arguments + outputs + temporaries - donated aliases", fontsize=8)
    if not any_memory:
        ax_m.text(0.5, 0.5, "not recorded on this backend", ha="center", va="center", transform=ax_m.transAxes, color="0.4")
    # One legend for both panels (they draw the same lines), below them: every measured line, nothing else.
    handles, names = ax_t.get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="outside lower center", ncols=min(4, len(names)), fontsize=7, frameon=False)
    m = result["machine"]
    peak = result.get("peak_flops_per_s", result["matmul_peak"]["flops_per_s"]) / 1e9
    layers = result.get("spec", {}).get("model", {}).get("layers", 1)  # recorded only for a stack
    stack = f" x {layers} layers" if layers > 1 else ""
    title = f"seqpar bench, hidden {result['grid']['hidden']}{stack}: {m['summary']}, matmul peak {peak:.0f} GFLOP/s, {result['created']}"
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=120)
    plt.close(fig)

"""The study's Rich table and its plain verdict lines (from `tune.json`; no Optuna, no JAX)."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def _num(v: Any, fmt: str = ".4f") -> str:
    return "—" if v is None else format(v, fmt)


def _untuned(m: dict[str, Any]) -> str:
    """The untuned default's validation loss, marked when it beat every trial (best.yaml keeps it)."""
    d = m.get("default") or {}
    shown = _num(d.get("value"))
    return f"[yellow]{shown} (kept)[/]" if d.get("chosen") == "default" else shown


def study_table(index: dict[str, Any]) -> Table:
    """Per method: trials completed/pruned/failed, best validation loss, test mean ± std over the final seeds, time."""
    seeds = index["seeds"]
    t = Table(
        title=f"{index['name']}: every method tuned at the same budget",
        caption=(
            f"{index['trials_per_method']} trials per method, {index['steps_per_trial']} steps each; "
            f"objective: {index['objective']} ({index['sampler']} sampler, pruner {index['pruner']}); "
            f"test: each method's best re-run with seeds {', '.join(map(str, seeds))}"
        ),
    )
    for col, justify in (
        ("method", "left"),
        ("trials (done/pruned/failed)", "right"),
        ("best val", "right"),
        ("untuned val", "right"),
        ("rollout test (mean ± std, n)", "right"),
        ("baseline", "right"),
        ("time s", "right"),
        ("best configuration", "left"),
    ):
        t.add_column(col, justify=justify)  # type: ignore[arg-type]
    for m in index["methods"]:
        c = m["trials"]
        best = m["best"]
        n = len([r for r in m["final"] if r.get("rollout_loss_test") is not None])
        test = f"{_num(m['test_mean'])} ± {_num(m['test_std'])} ({n})" if m["test_mean"] is not None else "—"
        if m["worse_than_baseline"]:
            test = f"[red]{test}[/]"
        params = ", ".join(f"{k}={format(v, '.3g') if isinstance(v, float) else v}" for k, v in (best or {}).get("params", {}).items())
        t.add_row(
            m["method"],
            f"{c['completed']}/{c['pruned']}/{c['failed']}" + (f" (+{c['running']} running)" if c["running"] else ""),
            _num(best["value"]) if best else "—",
            _untuned(m),
            test,
            _num(m["baseline_loss"]),
            _num(m["time_s"], ".0f"),
            f"#{best['trial']}: {params}" if best else "no completed trial",
        )
    return t


def verdict_lines(index: dict[str, Any]) -> list[str]:
    """Plain statements: a method whose tuned best is still no better than the memoryless baseline, or never completed."""
    out = []
    for m in index["methods"]:
        d = m.get("default") or {}
        if d.get("chosen") == "default":
            best = "no trial completed" if m["best"] is None else f"its best trial reached {m['best']['value']:.4f}"
            out.append(
                f"{m['method']}: tuning found nothing better than the untuned default on validation "
                f"({d['value']:.4f}; {best}); best.yaml keeps the default"
            )
        elif d.get("chosen") == "unchecked":
            out.append(f"{m['method']}: the untuned default has no validation value (not run or failed): the tuned setting is unchecked")
        if m["best"] is None:
            out.append(f"{m['method']}: no trial completed; there is no best configuration to judge")
        elif m["worse_than_baseline"]:
            out.append(
                f"{m['method']}: even its best configuration is worse than the memoryless baseline on the test split "
                f"({m['test_mean']:.4f} vs {m['baseline_loss']:.4f}): it does not learn to use its memory here"
            )
    return out

"""`seqpar predictability`: Newton iterations against sequence length, beside each recurrence's LLE.

The central figure of Gonzalez, Kozachkov et al. ("Predictability enables parallelization
of nonlinear state space models", 2025), reproduced with seqpar's own cells and solver: a
recurrence whose largest Lyapunov exponent is negative forgets errors in Newton's guess
along time, so DEER / quasi-DEER need about the same few iterations at any length; one
whose LLE is positive amplifies them, so the iterations grow with T up to the cap (or the
linearised solve overflows). Each recurrence is solved from zeros over a grid of lengths
with `solve_states`, full DEER and quasi-DEER (`jacobian: diagonal`), and its LLE is
measured by `seqpar.model.lle` along the same inputs.

The recurrences: an Elman cell at a small and at a large `recurrent_scale` (driven by
unit Gaussian inputs) and a GRU trained briefly by BPTT on the shipped `dynamics` task
(Lorenz-63 forecasting), driven by that task's sequences.
"""

from __future__ import annotations

import datetime
import functools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seqpar.bench.machine import machine
from seqpar.model.cells.elman import ElmanConfig
from seqpar.model.lle import model_lle
from seqpar.model.model import Model, Params, build_model
from seqpar.model.newton import NewtonOptions, solve_states
from seqpar.spec import validate_spec
from seqpar.tasks.dynamics import DynamicsConfig
from seqpar.train.loop import build_experiment, init_state, make_train_step

JACOBIANS = ("diagonal", "full")


@dataclass(frozen=True)
class PredictabilityGrid:
    """What `seqpar predictability` measures (the defaults: about 5 minutes on a 2-core CPU)."""

    lengths: tuple[int, ...] = (256, 1024, 4096, 16384)
    sequences: int = 2  # rows solved per (recurrence, solver, length)
    hidden: int = 16
    max_iters: int = 1024  # Newton's cap: above the shorter lengths (which converge in <= T), below the longer ones
    small_scale: float = 0.5  # Elman recurrent_scale of the contracting cell
    large_scale: float = 3.0  # ... of the expanding one
    gru_steps: int = 200  # BPTT steps of the GRU on `dynamics` (0: the GRU at its initialisation)
    seed: int = 0


@dataclass(frozen=True)
class Recurrence:
    name: str
    model: Model
    params: Params
    inputs: Callable[[int], jax.Array]  # length -> (sequences, length, D)


def trained_gru(grid: PredictabilityGrid) -> tuple[Model, Params]:
    """A GRU trained `gru_steps` BPTT steps on `dynamics` (length 64) through the harness's own step."""
    spec = validate_spec(
        {
            "name": "predictability-gru",
            "seed": grid.seed,
            "task": {"type": "dynamics", "length": 64, "train_sequences": 256, "val_sequences": 16, "test_sequences": 16},
            "model": {"cell": "gru", "hidden": grid.hidden},
            "train": {"steps": max(grid.gru_steps, 1), "batch_size": 64, "lle_sequences": 0},
            "methods": [{"type": "bptt", "optimizer": {"type": "adam", "lr": 3e-3}}],
        }
    )
    exp = build_experiment(spec)
    method = spec.methods[0].build(exp.model, exp.task)
    state = init_state(exp, method)
    with jax.set_mesh(exp.mesh):
        step = jax.jit(make_train_step(method, exp.train_key, spec.task.train_sequences, spec.train.batch_size), donate_argnums=0)
        for i in range(grid.gru_steps):
            state, _ = step(state, exp.train, np.int32(i))
    return exp.model, method.params(state)


def recurrences(grid: PredictabilityGrid) -> list[Recurrence]:
    key = jax.random.key(grid.seed)
    k_small, k_large, k_noise, k_lorenz = jax.random.split(key, 4)

    def noise(length: int) -> jax.Array:
        return jax.random.normal(k_noise, (grid.sequences, length, 1))

    def lorenz(length: int) -> jax.Array:
        return DynamicsConfig(length=length).build().make_data(k_lorenz, grid.sequences).x

    out = []
    for scale, k in ((grid.small_scale, k_small), (grid.large_scale, k_large)):
        model, params = build_model(ElmanConfig.model_validate({"recurrent_scale": scale}), 1, grid.hidden, 1, k)
        out.append(Recurrence(f"elman (recurrent_scale {scale:g})", model, params, noise))
    model, params = trained_gru(grid)
    out.append(Recurrence(f"gru (bptt {grid.gru_steps} steps on dynamics)", model, params, lorenz))
    return out


def solve_point(rec: Recurrence, jacobian: str, length: int, max_iters: int) -> dict[str, Any]:
    """Newton from zeros over `length` steps: iterations per row, and which rows did not converge."""
    x = rec.inputs(length)
    opts = NewtonOptions(jacobian=jacobian, max_iters=max_iters)  # type: ignore[arg-type]
    guess = jnp.zeros((*x.shape[:2], rec.model.state_dim), x.dtype)
    t0 = time.perf_counter()
    _, stats = jax.jit(lambda p, x, g: solve_states(rec.model, p, x, g, opts))(rec.params, x, guess)
    iters, residual = np.asarray(stats.iterations), np.asarray(stats.residual)
    # A row counts as solved only with a finite residual at the tolerance: an overflowing solve
    # can report a non-finite residual as "converged".
    solved = np.asarray(stats.converged) & np.isfinite(residual)
    return {
        "recurrence": rec.name,
        "jacobian": jacobian,
        "length": length,
        "iters_mean": float(iters.mean()),
        "iters_max": int(iters.max()),
        "rows": int(iters.size),
        "hit_max_iters": int(np.sum(~solved & (iters >= max_iters))),
        "non_finite": int(np.sum(~np.isfinite(residual))),
        "unsolved": int(np.sum(~solved)),
        "seconds": time.perf_counter() - t0,
    }


def run_predictability(grid: PredictabilityGrid, on_point: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every (recurrence, solver, length) point and each recurrence's LLE: the JSON record."""
    recs, points, lles = recurrences(grid), [], {}
    for rec in recs:
        # The LLE along the longest inputs the grid solves (per step; averaged over rows and 3 vectors).
        x = rec.inputs(max(grid.lengths))
        lle = jax.jit(functools.partial(model_lle, rec.model, key=jax.random.key(grid.seed)))
        lles[rec.name] = float(lle(rec.params, x))
        for jacobian in JACOBIANS:
            for length in grid.lengths:
                p = {**solve_point(rec, jacobian, length, grid.max_iters), "lle": lles[rec.name]}
                points.append(p)
                if on_point is not None:
                    on_point(p)
    return {
        "grid": asdict(grid),
        "date": datetime.date.today().isoformat(),
        "machine": machine()["summary"],
        "lle": lles,
        "points": points,
    }


# ----------------------------------------------------------------------------- outputs


def _cell(p: dict[str, Any], cap: int) -> str:
    """Mean iterations of a point whose rows all converged; else why they did not."""
    if p["non_finite"]:
        return f"overflow ({p['non_finite']}/{p['rows']} rows, iteration {p['iters_max']})"
    if p["unsolved"]:
        return f"> {cap} ({p['unsolved']}/{p['rows']} rows at the cap)"
    return f"{p['iters_mean']:.0f}" if p["iters_mean"] >= 10 else f"{p['iters_mean']:.1f}"


def markdown_table(result: dict[str, Any]) -> str:
    """One row per (recurrence, solver): its LLE and the mean Newton iterations at every length."""
    lengths = result["grid"]["lengths"]
    head = ["recurrence", "LLE / step", "solver", *(f"T = {t}" for t in lengths)]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---|" + "---:|" * len(lengths)]
    rows: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for p in result["points"]:
        rows.setdefault((p["recurrence"], p["jacobian"]), {})[p["length"]] = p
    for (name, jac), by_t in rows.items():
        solver = "quasi-DEER" if jac == "diagonal" else "DEER"
        cells = [_cell(by_t[t], result["grid"]["max_iters"]) if t in by_t else "—" for t in lengths]
        lines.append(f"| {name} | {result['lle'][name]:+.3f} | {solver} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_predictability(result: dict[str, Any], path: Path) -> None:
    """Mean Newton iterations against T (log-log), a colour per recurrence (LLE in the legend),
    solid DEER, dashed quasi-DEER; a point where some row did not converge is an x at the cap."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    names = list(result["lle"])
    for i, name in enumerate(names):
        for jac, style in (("full", "-"), ("diagonal", "--")):
            pts = sorted((p for p in result["points"] if p["recurrence"] == name and p["jacobian"] == jac), key=lambda p: p["length"])
            if not pts:
                continue
            # A row that did not converge (cap or overflow) needs more than the cap: drawn at the cap, as x.
            cap = result["grid"]["max_iters"]
            t = [p["length"] for p in pts]
            y = [float(cap) if p["unsolved"] else max(p["iters_mean"], 1.0) for p in pts]
            solver = "DEER" if jac == "full" else "quasi-DEER"
            color = colors[i % len(colors)]
            ax.plot(t, y, style, color=color, label=f"{name}, LLE {result['lle'][name]:+.2f}/step: {solver}")
            for tt, yy, p in zip(t, y, pts, strict=True):
                ax.plot(tt, yy, "x" if p["unsolved"] else "o", color=color, markersize=7 if p["unsolved"] else 4)
    cap = result["grid"]["max_iters"]
    cap = result["grid"]["max_iters"]
    ax.axhline(cap, color="0.45", linestyle=":", linewidth=1.2, label=f"max_iters = {cap}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("Newton iterations from zeros (mean over rows)")
    ax.set_title("Newton iterations from zeros vs length; x at the cap: not converged (cap reached or overflow)", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, frameon=False, loc="center right")
    fig.savefig(path, dpi=100)


def write_predictability(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """predictability.json (the record), .md (the table) and .png (the figure) in `out_dir`."""
    from seqpar.records.writer import atomic_write_json, atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"predictability.{ext}" for ext in ("json", "md", "png")]
    atomic_write_json(paths[0], result)
    atomic_write_text(paths[1], markdown_table(result))
    plot_predictability(result, paths[2])
    return paths

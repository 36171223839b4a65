"""`seqpar bench` end to end: measure the grid, check the run-loop overhead, write the files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from seqpar.bench.grid import Grid
from seqpar.bench.loop import loop_overhead, overhead_points
from seqpar.bench.measure import run_bench
from seqpar.bench.report import plot_bench
from seqpar.records.writer import atomic_write_json
from seqpar.spec import Spec


def bench_to_dir(
    spec: Spec,
    grid: Grid,
    run_dir: Path,
    on_point: Callable[[dict[str, Any]], None] | None = None,
    overhead_steps: int = 0,
    overhead_rounds: int = 3,
) -> dict[str, Any]:
    """Run the grid (and, if `overhead_steps`, the run-vs-bare-loop check); write bench.json and bench.png."""
    result = run_bench(spec, grid, on_point, save=lambda r: atomic_write_json(run_dir / "bench.json", r))
    atomic_write_json(run_dir / "bench.json", result)
    if overhead_steps:
        chunk = max(1, overhead_steps // 4)
        result["loop_overhead"] = [
            loop_overhead(spec, cfg, cell, length, b, grid.hidden, steps=overhead_steps, chunk=chunk, rounds=overhead_rounds)
            for cfg, cell, length, b in overhead_points(spec, grid)
        ]
        atomic_write_json(run_dir / "bench.json", result)
    plot_bench(result, run_dir / "bench.png")
    return result

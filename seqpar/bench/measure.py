"""`seqpar bench`: what one gradient step costs, per method, cell, length and batch size.

    seqpar bench [SPEC] --lengths 256,1024,4096 --batch 1,8,64 --hidden 64

For every point of the grid the spec is rewritten (`task.length`, `model.cell`,
`model.hidden`, `train.batch_size`, `task.train_sequences`; a stack's `model.layers`
and `model.block` are the spec's, recorded per point as `layers`) and every method of
the spec is measured through the *same* step `seqpar run` executes:
`seqpar.train.loop.make_train_step`, jitted with the state donated, compiled ahead of
time. Per point we record

- compile time, apart from the steady state;
- the steady-state step time: warm-up steps first, then repeated steps each
  bracketed by `block_until_ready` (median, quartiles, min, max, count);
- memory: the compiled program's `memory_analysis` (arguments + outputs +
  temporaries - donated aliases), the process's peak RSS over the point (the
  kernel's high-water mark is reset before each point), and the table's bytes;
- XLA's `cost_analysis` FLOPs of the compiled step, as FLOP/s and as a fraction
  of the matrix-multiply peak this run measured on the same device. XLA counts a
  `while` loop's body once, so for scanned programs (BPTT) the count is a lower
  bound and is flagged `flops_exact: false`;
- speedup over full BPTT at the same point;
- the last timed step's own metrics (`step_metrics`), such as a Newton method's
  iterations (`newton_iters_mean`), which explain its step time.

A method whose estimated memory at a point (`seqpar.train.memory`) exceeds the
machine's is not run there: it is listed under `skipped` with the estimate, so a
grid can hold full-Jacobian DEER beside methods that scale to longer sequences.

The baseline is tuned as a user would: a method with an `unroll` field (BPTT,
truncated BPTT) is measured for every `--unrolls` value and the fastest is kept
(the JSON lists every candidate). Batching over sequences is `vmap` of the cell,
which XLA lowers to batched matrix products: there is no separate loop to try.
A spec without a `bptt` method gets one (with the first method's optimizer) so
there is always a baseline.

Page faults per step are recorded too: XLA's CPU runtime takes every buffer from
malloc afresh each step, and on Linux a buffer above malloc's mmap threshold
(at most 32 MB) is a fresh mapping faulted in 4 KiB at a time unless huge pages
apply. On a VM those faults can cost more than the arithmetic (3x on the
parallel step at batch x length = 65k); `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`
(glibc >= 2.35, transparent huge pages in `madvise` mode) removes almost all.

The grid and its validation are `seqpar.bench.grid`'s; `seqpar.bench.loop` compares
`seqpar.train.loop.run_method`'s steady-state step with a bare jitted loop over the same
step; `seqpar.bench.run` writes `bench.json` (every number, rewritten after every grid
point) and `bench.png`, and `seqpar.bench.report` the Rich tables.
"""

from __future__ import annotations

import gc
import os
import re
import resource
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from seqpar.bench.grid import SCHEMA, Grid, point_spec, with_baseline
from seqpar.bench.machine import device_peak_mb, machine, matmul_peak, reset_peak_rss, rss_mb
from seqpar.bench.peer import torch_row
from seqpar.bench.profile import derive_profile, profile_rows, profiled_method
from seqpar.bench.yardstick import quasi_deer_method, yardstick_rows
from seqpar.records.writer import environment
from seqpar.spec import Spec
from seqpar.train.loop import build_experiment, compiled_memory_mb, init_state, make_train_step

# ----------------------------------------------------------------------------- timing


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def summarize_ms(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    p25, med, p75 = np.percentile(ms, [25, 50, 75])
    return {
        "median": float(med),
        "p25": float(p25),
        "p75": float(p75),
        "min": float(ms.min()),
        "max": float(ms.max()),
        "mean": float(ms.mean()),
        "n": int(ms.size),
    }


def _cost(compiled) -> dict[str, Any]:
    try:
        ca = compiled.cost_analysis()
    except Exception:
        return {"flops": None, "transcendentals": None, "bytes_accessed": None, "flops_exact": False, "fusions": None}
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca or {}
    hlo = compiled.as_text() or ""
    return {
        "flops": ca.get("flops"),
        "transcendentals": ca.get("transcendentals"),
        "bytes_accessed": ca.get("bytes accessed"),
        "flops_exact": not _float_loops(hlo),
        # Fused loops in the compiled program: each at least one pass over its operands in memory.
        "fusions": len(re.findall(r"^\s*\S+ = \S+ fusion\(", hlo, flags=re.MULTILINE)),
    }


def _float_loops(hlo: str) -> bool:
    """Does the program loop over floating-point state (a scan)? XLA's cost analysis counts a
    while body once; loops over integers only (the PRNG's rounds) carry no FLOPs to speak of."""
    return any(re.search(r"\b(f16|bf16|f32|f64)\[", line.split(" while(")[0]) for line in hlo.splitlines() if " while(" in line)


def _memory(compiled) -> dict[str, Any]:
    try:
        m = compiled.memory_analysis()
    except Exception:
        m = None
    keys = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes")
    return {"compiled_mb": compiled_memory_mb(compiled), **({k: getattr(m, k) for k in keys} if m is not None else {})}


def run_step(exp, method, state) -> Callable:
    """`seqpar run`'s jitted step for `method` (`seqpar.train.loop.run_method`): the same step function,
    sampling strata, output shardings and donated state, without the loop's divergence watch.
    Trace it under `jax.set_mesh(exp.mesh)`, as `run_method` does."""
    n, b = exp.spec.task.train_sequences, exp.spec.train.batch_size
    out_shardings = (jax.tree.map(lambda a: a.sharding, state), NamedSharding(exp.mesh, P()))
    return jax.jit(make_train_step(method, exp.train_key, n, b, exp.strata), donate_argnums=0, out_shardings=out_shardings)


def measure(exp, cfg, grid: Grid) -> dict[str, Any]:
    """Compile `seqpar run`'s step for `cfg` on `exp` and time its steady state."""
    rss_reset = reset_peak_rss()
    rss_before = rss_mb("VmRSS")
    method = cfg.build(exp.model, exp.task)
    with jax.set_mesh(exp.mesh):
        state = init_state(exp, method)
        table_bytes = method.state_table_bytes(state)
        t0 = time.perf_counter()
        lowered = run_step(exp, method, state).lower(state, exp.train, np.int32(0))
        compiled = lowered.compile()
        compile_s = time.perf_counter() - t0

    step, last_metrics = 0, {}

    def one():
        nonlocal state, step, last_metrics
        state, metrics = compiled(state, exp.train, np.int32(step))  # noqa: F821 - bound in the `with` block above (a ruff false positive)
        jax.block_until_ready((state, metrics))
        step, last_metrics = step + 1, metrics

    for _ in range(grid.warmup):
        one()
    times: list[float] = []
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    gc_was = gc.isenabled()
    gc.disable()  # a collection inside a timed step is noise, not the step's cost
    try:
        start = time.perf_counter()
        while len(times) < grid.max_repeats and (len(times) < grid.min_repeats or time.perf_counter() - start < grid.min_time_s):
            times.append(_timed(one))
    finally:
        if gc_was:
            gc.enable()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
    out = {
        "compile_s": compile_s,
        "step_ms": summarize_ms(times),
        # Page faults per step: fresh pages for the step's buffers (see `machine()["thp"]`).
        "minor_faults_per_step": faults / len(times),
        **_cost(compiled),
        "memory": _memory(compiled),
        "peak_rss_mb": rss_mb("VmHWM") if rss_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_rss_is_per_point": rss_reset,
        "rss_before_mb": rss_before,
        "device_peak_mb": device_peak_mb(),
        "table_bytes": table_bytes,
        # Dependent steps on the step's critical path, as `seqpar run` records it (Newton's from the last step's iterations).
        "sequential_depth": float(method.sequential_depth(int(exp.train.x.shape[1]), jax.device_get(last_metrics))),
        # The last timed step's metrics (Newton iterations, residual...): what the step did.
        "step_metrics": {k: float(v) for k, v in jax.device_get(last_metrics).items()},
    }
    del state, compiled, lowered
    return out


def time_function(fn: Callable, args: tuple, grid: Grid) -> tuple[dict[str, Any], Any]:
    """Compile `jax.jit(fn)` for `args` apart, warm up, then time calls as `measure` times steps;
    returns the measurement and the last output."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    out = None

    def one():
        nonlocal out
        out = jax.block_until_ready(compiled(*args))

    for _ in range(grid.warmup):
        one()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < grid.max_repeats and (len(times) < grid.min_repeats or time.perf_counter() - start < grid.min_time_s):
        times.append(_timed(one))
    return {"compile_s": compile_s, "step_ms": summarize_ms(times), **_cost(compiled), "memory": _memory(compiled)}, out


def too_big(pspec: Spec, cfg) -> str | None:
    """Why `cfg` cannot run at this point (its memory estimate exceeds the machine's), or None."""
    from seqpar.train import memory

    limit = memory.available()
    if limit is None:
        return None
    est = memory.estimate(pspec.model_copy(update={"methods": [cfg]}))
    if est.total <= limit[0]:
        return None
    return f"estimated {memory.fmt_bytes(est.total)} ({est.describe()}) exceeds the {memory.fmt_bytes(limit[0])} {limit[1]}"


def _candidates(cfg, unrolls: tuple[int, ...]) -> list[Any]:
    if "unroll" in type(cfg).model_fields:
        return [cfg.model_copy(update={"unroll": k}) for k in unrolls]
    return [cfg]


# ----------------------------------------------------------------------------- the grid


def run_bench(
    spec: Spec,
    grid: Grid,
    on_point: Callable[[dict[str, Any]], None] | None = None,
    save: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Measure every (cell, length, batch, method) of the grid; returns the JSON-able result.

    `on_point` sees each finished row; `save` the whole result after every grid point."""
    methods = with_baseline(spec)
    cells = grid.cells or (spec.model.model_dump()["cell"],)
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "env": environment(),
        "grid": asdict(grid),
        "spec": spec.model_dump(mode="json"),
        "matmul_peak": matmul_peak(),
        "points": [],
        "skipped": [],  # (method, point) pairs whose memory estimate exceeds the machine's
        "yardstick": [],  # seqpar's quasi-DEER solve beside a minimal one (`seqpar.bench.yardstick`)
        "profile": [],  # the embedding-parallel step in stages (`seqpar.bench.profile`, with grid.profile)
        "peer": [],  # the step a user would otherwise run (`seqpar.bench.peer`, with grid.peer)
    }
    profiled = profiled_method(methods) if grid.profile else None
    for cell in cells:
        for length in grid.lengths:
            for batch in grid.batches:
                pspec = point_spec(spec, cell, length, batch, grid.hidden, grid.sequences or batch)
                exp = build_experiment(pspec)
                rows = []
                for cfg in methods:
                    reason = too_big(pspec, cfg)
                    if reason is not None:
                        skipped = {"method": cfg.type, "label": cfg.display_label, "cell": cell, "length": length, "batch": batch}
                        result["skipped"].append({**skipped, "reason": reason})
                        if on_point:
                            on_point(result["skipped"][-1])
                        continue
                    cands = []
                    for cand in _candidates(cfg, grid.unrolls):
                        m = measure(exp, cand, grid)
                        m["unroll"] = getattr(cand, "unroll", None)
                        cands.append(m)
                    best = min(cands, key=lambda m: m["step_ms"]["median"])
                    row = {
                        "method": cfg.type,
                        "label": cfg.display_label,
                        "cell": cell,
                        "length": length,
                        "steps_per_sequence": int(exp.train.x.shape[1]),
                        "batch": batch,
                        "sequences": pspec.task.train_sequences,
                        "hidden": grid.hidden,
                        "layers": pspec.model.layers,
                        **best,
                        "unroll_candidates": [
                            {"unroll": c["unroll"], "step_ms": c["step_ms"]["median"], "compile_s": c["compile_s"]} for c in cands
                        ]
                        if len(cands) > 1
                        else None,
                    }
                    rows.append(row)
                _derive(rows, result["matmul_peak"]["flops_per_s"])  # provisional peak, for the saves
                for row in rows:
                    result["points"].append(row)
                    if on_point:
                        on_point(row)
                quasi = quasi_deer_method(methods, exp.model)
                trained = [r for r in rows if quasi is not None and r["label"] == quasi.display_label]
                if trained:
                    iters = max(1, round(trained[0]["step_metrics"].get("newton_iters_max", 1.0)))
                    for row in yardstick_rows(exp, quasi, cell, grid, iters, time_function):
                        result["yardstick"].append(row)
                        if on_point:
                            on_point(row)
                if grid.peer is not None and cell == "gru":
                    row = torch_row(exp.task.input_dim, grid.hidden, length, batch, grid, summarize_ms)
                    ours = next((r for r in rows if r["method"] == "bptt"), None)
                    if ours is not None:
                        row["seqpar_bptt_ms"] = ours["step_ms"]["median"]
                        row["seqpar_over_torch"] = ours["step_ms"]["median"] / row["step_ms"]["median"]
                    result["peer"].append(row)
                    if on_point:
                        on_point(row)
                if profiled is not None:
                    step_row = next((r for r in rows if r["label"] == profiled.display_label), None)
                    for row in profile_rows(exp, profiled, cell, grid, time_function, step_row):
                        result["profile"].append(row)
                        if on_point:
                            on_point(row)
                if save:
                    save(result)
                del exp
    # Measured again at the end: drift between the two says how quiet the machine was, and the
    # better of the two is the peak every fraction is taken of (a low peak would flatter them).
    result["matmul_peak_after"] = matmul_peak()
    result["machine"]["load_avg_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result["peak_flops_per_s"] = peak = max(result["matmul_peak"]["flops_per_s"], result["matmul_peak_after"]["flops_per_s"])
    _derive(result["points"], peak)
    _derive(result["yardstick"], peak, result["points"])
    derive_profile(result["profile"], peak)
    return result


def _derive(rows: list[dict[str, Any]], peak: float, baselines: list[dict[str, Any]] | None = None) -> None:
    """FLOP/s, fraction of the measured peak, and speedup over full BPTT at the same point
    (BPTT's row among `rows`, or among `baselines` when given)."""
    for r in rows:
        same = [o for o in baselines or rows if o["method"] == "bptt" and all(o[k] == r[k] for k in ("cell", "length", "batch"))]
        base, base_min = [o["step_ms"]["median"] for o in same], [o["step_ms"]["min"] for o in same]
        sec = r["step_ms"]["median"] / 1e3
        r["flops_per_s"] = r["flops"] / sec if r["flops"] else None
        r["peak_fraction"] = r["flops_per_s"] / peak if r["flops_per_s"] else None
        # The step's FLOPs at the measured matmul peak: no implementation of this step is faster.
        r["roofline_ms"] = 1e3 * r["flops"] / peak if r["flops"] and r.get("flops_exact") else None
        r["speedup_vs_bptt"] = min(base) / r["step_ms"]["median"] if base else None
        # Ratio of fastest steps: less sensitive to other load on a shared machine.
        r["speedup_vs_bptt_of_min"] = min(base_min) / r["step_ms"]["min"] if base_min else None

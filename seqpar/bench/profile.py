"""`seqpar bench --profile`: where the embedding-parallel step's time goes.

For every grid point with a `parallel` method (the first one in the spec) the step is
timed in cumulative stages, each compiled apart and timed as the bench times steps
(warm-up, `block_until_ready`, medians), on the point's full training batch:

1. `dense products`: every matrix product the step cannot avoid, alone: for each 2-D
   parameter `W (k, n)` of the model, `A W`, `G Wᵀ` and `Aᵀ G` at the step's row count
   (`B·T` rows: the forward product and its two backward ones);
2. `objective`: the method's objective (cell on every `(E[t-1], x[t])` pair, readout,
   task loss, consistency) forward only;
3. `+ gradient`: its value and gradient in the parameters and the table rows;
4. `+ parameter optimizer`: and the parameters' optimizer update;
5. `+ table optimizer`: and the per-row optimizer update of the table rows, written
   back (what the method's step does to the table);
6. `whole step`: the point's bench row itself (the step `seqpar run` jits, donated state,
   refresh check and metrics included), copied in for the difference.

Each row carries XLA's FLOPs of the stage, its fraction of the run's matmul peak, and
the number of fused loops (`fusion` kernels) in the compiled program (`fusions`, which
every bench row records): every one is at least one pass over its operands in memory. The difference between consecutive rows is
what that stage adds; the first row is the floor no implementation of this step goes
below on this machine (products at these shapes run below the square-matmul peak).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from seqpar.train.loop import init_state

PROFILED = "parallel"  # the method type profiled


def profiled_method(methods: list[Any]) -> Any | None:
    """The first embedding-parallel method of the spec, or None."""
    return next((cfg for cfg in methods if cfg.type == PROFILED), None)


def _dense_products(params: Any, rows: int) -> tuple[Callable, tuple]:
    """`(fn, args)`: the forward and both backward products of every 2-D parameter at `rows` rows."""
    mats = [w for w in jax.tree.leaves(params) if getattr(w, "ndim", 0) == 2]
    key = jax.random.key(0)
    ins = [jax.random.normal(jax.random.fold_in(key, i), (rows, w.shape[0]), w.dtype) for i, w in enumerate(mats)]
    grads = [jax.random.normal(jax.random.fold_in(key, 1000 + i), (rows, w.shape[1]), w.dtype) for i, w in enumerate(mats)]

    def products(ws, a, g):
        return [(ai @ w, gi @ w.T, ai.T @ gi) for w, ai, gi in zip(ws, a, g, strict=True)]

    return products, (mats, ins, grads)


def profile_rows(exp, cfg, cell: str, grid, timed: Callable, step_row: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The stages of `cfg`'s step at this point (see the module doc); `timed(fn, args, grid) ->
    (measurement, output)` compiles and times as the bench does; `step_row` is the point's
    bench row of `cfg` (the last stage)."""
    method = cfg.build(exp.model, exp.task)
    data = exp.train
    with jax.set_mesh(exp.mesh):
        state = init_state(exp, method)
    params, table = state["params"], state["table"]
    weight = method.consistency_weight(0)

    def objective(p, rows):
        return method.loss(p, rows, data.x, data.y, data.mask, weight)[0]

    grad = jax.value_and_grad(objective, argnums=(0, 1))

    def with_params(p, opt, rows):
        value, (g_p, g_rows) = grad(p, rows)
        upd, opt = method.tx.update(g_p, opt, p)
        return value, optax.apply_updates(p, upd), opt, g_rows

    def with_table(p, opt, rows, rows_opt):
        value, p, opt, g_rows = with_params(p, opt, rows)
        row_upd, rows_opt = jax.vmap(method.table_tx.update)(g_rows, rows_opt, rows)
        return value, p, opt, optax.apply_updates(rows, row_upd), rows_opt

    products, product_args = _dense_products(params, int(table.shape[0] * table.shape[1]))
    stages = [
        ("dense products", products, product_args),
        ("objective", objective, (params, table)),
        ("+ gradient", grad, (params, table)),
        ("+ parameter optimizer", with_params, (params, state["opt_state"], table)),
        ("+ table optimizer", with_table, (params, state["opt_state"], table, state["table_opt_state"])),
    ]
    out = []
    for stage, fn, args in stages:
        m, _ = timed(fn, args, grid)
        out.append(
            {
                "method": cfg.type,
                "label": cfg.display_label,
                "stage": stage,
                "cell": cell,
                "length": int(data.x.shape[1]),
                "batch": int(data.x.shape[0]),
                "hidden": grid.hidden,
                **m,
            }
        )
    if step_row is not None:
        keep = ("compile_s", "step_ms", "flops", "transcendentals", "bytes_accessed", "flops_exact", "fusions", "memory")
        out.append({**out[-1], "stage": "whole step", **{k: step_row[k] for k in keep}})
    return out


def derive_profile(rows: list[dict[str, Any]], peak: float) -> None:
    """Each stage's FLOP/s, fraction of the matmul peak and time added over the stage before it."""
    prev: dict[tuple, float] = {}
    for r in rows:
        at = (r["label"], r["cell"], r["length"], r["batch"])
        ms = r["step_ms"]["median"]
        r["flops_per_s"] = r["flops"] / (ms / 1e3) if r.get("flops") else None
        r["peak_fraction"] = r["flops_per_s"] / peak if r["flops_per_s"] else None
        r["added_ms"] = ms - prev[at] if at in prev and r["stage"] != "objective" else None
        prev[at] = ms

"""What a cell promises, checked at a few random states: the honesty test for a user's cell.

A cell a user registers (a function pair or a class) is taken at its word by every method:
its step's shape and dtype, and its declared Jacobian structure, which decides how Newton
solves it (a cell declared `diagonal` is solved by elementwise scans; if its Jacobian has
off-diagonal entries, Newton would converge to the wrong states, silently). `check_cell`
runs the step, under `jit` and `vmap` as training does, at a few random states and inputs
and compares `jax.jacfwd` with what the cell declares (and, for a cell that writes its
Jacobian out, with that). `seqpar validate` and `seqpar run` call it (through
`seqpar.train.usercode`) for every cell that is not built in, before anything is written;
`seqpar.testing` runs the same checks, and more, in a user's own tests.

`cell_cost` measures what a cell would cost a Newton solver: one step's FLOPs (XLA's count)
and the time to linearise a whole batch (the per-iteration work of quasi-DEER and DEER).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seqpar.model.cells.base import Cell, CellConfig, dense_jacobian

POINTS = 3  # random (state, input) pairs per check
STRUCTURE_TOL = 1e-6  # relative to the largest Jacobian entry: entries outside the declared structure must be zero
ANALYTIC_TOL = 1e-4  # an analytic Jacobian against jacfwd, relative (float32)


class CellCheckError(ValueError):
    """A cell that does not do what it declares; the message is one line naming the cell."""


@dataclass(frozen=True)
class CellReport:
    name: str
    state_dim: int
    structure: str
    jacobian: str  # analytic or autodiff


_NOT_TRACEABLE = (
    jax.errors.TracerArrayConversionError,
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerBoolConversionError,
    jax.errors.TracerIntegerConversionError,
)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def build_checked(cfg: CellConfig, input_dim: int, hidden: int, name: str, key: int = 0) -> Cell:
    try:
        cell = cfg.build(input_dim, hidden, rngs=nnx.Rngs(params=jax.random.key(key)))
    except Exception as e:  # a user's init may raise anything
        raise CellCheckError(f"cell {name}: building it (init) raised {type(e).__name__}: {_first_line(e)}") from None
    for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(cell, nnx.Param)):
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            where = jax.tree_util.keystr(path)
            raise CellCheckError(
                f"cell {name}: parameter {where} is {dtype or type(leaf).__name__}, expected a floating-point array "
                "(parameters are trained by gradient)"
            )
    return cell


def check_cell(cfg: CellConfig, input_dim: int, hidden: int, name: str) -> CellReport:
    """Build the cell and check it at `POINTS` random states and inputs; `CellCheckError` if it lies."""
    cell = build_checked(cfg, input_dim, hidden, name)
    graphdef, params = nnx.split(cell)
    s_dim = getattr(cell, "state_dim", None)
    if not isinstance(s_dim, int) or s_dim < 1:
        raise CellCheckError(f"cell {name}: state_dim is {s_dim!r}, expected a positive integer")
    ks, kx = jax.random.split(jax.random.key(1))
    s = jax.random.normal(ks, (POINTS, s_dim), jnp.float32)
    x = jax.random.normal(kx, (POINTS, input_dim), jnp.float32)

    def step(p, s1, x1):
        return nnx.merge(graphdef, p)(s1, x1)

    try:
        out = jax.jit(jax.vmap(step, in_axes=(None, 0, 0)))(params, s, x)
    except _NOT_TRACEABLE as e:
        raise CellCheckError(
            f"cell {name}: its step is not traceable by JAX ({type(e).__name__}): it turns a traced array into a NumPy or "
            "Python value; write it with jax.numpy (jnp.tanh, not np.tanh; jnp.where, not if)"
        ) from None
    except Exception as e:
        raise CellCheckError(f"cell {name}: its step raised {type(e).__name__}: {_first_line(e)}") from None
    out = jnp.asarray(out)
    if out.shape != (POINTS, s_dim) or out.dtype != jnp.float32:
        got = f"{tuple(out.shape[1:])} {out.dtype}"
        raise CellCheckError(f"cell {name}: its step returned {got}, expected ({s_dim},) float32 (the state's shape and dtype)")
    if not bool(jnp.all(jnp.isfinite(out))):
        raise CellCheckError(f"cell {name}: its step returned non-finite values at a random state (normal, unit variance)")
    _check_structure(cell, graphdef, params, s, x, name)
    return CellReport(name, s_dim, type(cell).jacobian_structure, type(cell).jacobian_kind())


def _check_structure(cell: Cell, graphdef, params, s: jax.Array, x: jax.Array, name: str) -> None:
    structure = type(cell).jacobian_structure

    def step(p, s1, x1):
        return nnx.merge(graphdef, p)(s1, x1)

    def analytic(p, s1, x1):
        c = nnx.merge(graphdef, p)
        return c.step_and_jacobian(s1, c.project(x1))[1]

    auto = np.asarray(jax.jit(jax.vmap(jax.jacfwd(step, argnums=1), in_axes=(None, 0, 0)))(params, s, x))
    scale = max(float(np.max(np.abs(auto))), 1.0)
    if structure != "full":
        jac = np.asarray(jax.vmap(analytic, in_axes=(None, 0, 0))(params, s, x))
        allowed = np.asarray(dense_jacobian(jnp.ones_like(jnp.asarray(jac[0])), structure)) != 0
        outside = np.where(allowed[None], 0.0, np.abs(auto))
        if float(outside.max()) > STRUCTURE_TOL * scale:
            p, i, j = np.unravel_index(int(np.argmax(outside)), outside.shape)
            raise CellCheckError(
                f"cell {name}: declared {structure}, but d step / d h has entries outside that structure: the largest is "
                f"J[{i}, {j}] = {auto[p, i, j]:.3g} (unit {i}'s new value reads unit {j}); declare structure: full"
            )
    if type(cell).jacobian_kind() == "analytic":
        jac = jax.vmap(analytic, in_axes=(None, 0, 0))(params, s, x)
        dense = np.asarray(jax.vmap(lambda j: dense_jacobian(j, structure))(jac))
        err = np.abs(dense - auto)
        if float(err.max()) > ANALYTIC_TOL * scale:
            p, i, j = np.unravel_index(int(np.argmax(err)), err.shape)
            raise CellCheckError(
                f"cell {name}: its analytic step_and_jacobian differs from jax.jacfwd: J[{i}, {j}] = {dense[p, i, j]:.6g}, "
                f"autodiff {auto[p, i, j]:.6g}"
            )


@dataclass(frozen=True)
class CellCost:
    flops: float | None  # one step, one example (XLA's count; None where the backend gives none)
    linearise_ms: dict[str, float]  # path -> median ms to linearise `positions` (state, input) pairs


def _median_ms(fn, *args, repeats: int = 5) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up apart
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def cell_cost(cfg: CellConfig, input_dim: int, hidden: int, positions: int) -> CellCost:
    """One step's FLOPs and the median time to linearise `positions` pairs at once, per Newton
    path this cell offers: its diagonal (quasi-DEER) and, on a `full` cell, its S×S Jacobian
    (DEER); each as the cell computes it (analytic or autodiff). Benchmark-style: compile apart,
    `block_until_ready`, median of repeats."""
    cell = cfg.build(input_dim, hidden, rngs=nnx.Rngs(params=jax.random.key(0)))
    graphdef, params = nnx.split(cell)
    s_dim = cell.state_dim
    s = jnp.zeros((positions, s_dim), jnp.float32)
    x = jnp.zeros((positions, input_dim), jnp.float32)

    def one(p, s1, x1):
        return nnx.merge(graphdef, p)(s1, x1)

    flops = None
    try:
        analysis = jax.jit(one).lower(params, s[0], x[0]).compile().cost_analysis()
        analysis = analysis[0] if isinstance(analysis, list) else analysis
        flops = float(analysis.get("flops")) if analysis and analysis.get("flops") is not None else None
    except Exception:  # a backend without cost analysis: the timing still stands
        flops = None

    def diagonal(p, s1, x1):
        c = nnx.merge(graphdef, p)
        return c.step_and_diagonal(s1, c.project(x1))

    def full(p, s1, x1):
        c = nnx.merge(graphdef, p)
        return c.step_and_jacobian(s1, c.project(x1))

    kind = type(cell).jacobian_kind()
    paths = {f"diagonal ({kind})": diagonal}
    if type(cell).jacobian_structure == "full":
        paths[f"full ({kind})"] = full
    out = {name: _median_ms(jax.jit(jax.vmap(fn, in_axes=(None, 0, 0))), params, s, x) for name, fn in paths.items()}
    return CellCost(flops, out)

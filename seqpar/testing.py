"""The checks seqpar runs on every registered cell, for a user's own cell in the user's own tests.

seqpar's test suite is parametrised over the cell registry (`cell_names()`): every check
below runs on every built-in cell and on every cell a test session registers. A researcher
runs the same checks on theirs:

    # tests/test_softgru.py
    import pytest
    import seqpar.testing
    import softgru  # registers the cell "softgru"

    @pytest.mark.parametrize("check", seqpar.testing.CELL_CHECKS, ids=lambda c: c.__name__)
    def test_softgru(check):
        check("softgru")

Each check takes a registered cell name (or a cell config) and raises `AssertionError` with
what differs. Tolerances are fixed (levanter's rule: never loosened to pass): scans against a
plain loop 1e-5, Jacobians against `jax.jacfwd` 1e-6, Newton's states against the rollout
1e-5, the adjoint gradient against BPTT's 1e-4 relative.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from pydantic import ValidationError

from seqpar.methods import METHODS
from seqpar.model.cells import CELLS, CellConfig
from seqpar.model.cells.base import dense_jacobian
from seqpar.model.cells.checks import check_cell
from seqpar.model.model import Model, as_cell_config, build_model
from seqpar.model.newton import Adjoint, Jacobian, NewtonOptions, differentiable_states, solve_states
from seqpar.model.rollout import rollout_states
from seqpar.spec import Spec, validate_spec
from seqpar.tasks.delayed_recall import DelayedRecallConfig
from seqpar.train.loop import build_experiment, run_method
from seqpar.train.usercode import is_builtin

IN, HIDDEN, OUT = 3, 4, 3  # one small size everywhere, so each cell compiles once per check
N, T = 3, 10
SGD = {"type": "sgd", "lr": 0.05}
# Method fields without a default; a method added later that needs more fails here by name.
REQUIRED_METHOD_FIELDS = {"truncated_bptt": {"window": 3}}

CellLike = str | CellConfig


def cell_names() -> list[str]:
    """Every registered cell a spec can name bare (`model.cell: NAME`): the built-ins and every
    user cell registered so far (`function` itself needs its options, so it is not one)."""
    out = []
    for name, cls in CELLS.items():
        try:
            cls()
        except ValidationError:
            continue
        out.append(name)
    return out


def builtin(cell: CellLike) -> bool:
    return is_builtin(as_cell_config(cell))


def model_of(cell: CellLike, key: int = 0) -> tuple[Model, Any]:
    return build_model(cell, IN, HIDDEN, OUT, jax.random.key(key))


def _name(cell: CellLike) -> str:
    return cell if isinstance(cell, str) else str(getattr(cell, "type", cell))


# ----------------------------------------------------------------------------- the checks


def declares_the_truth(cell: CellLike) -> None:
    """The step's shape, dtype and finiteness at random states, JAX can trace it, and its declared
    Jacobian structure (and analytic Jacobian, if it writes one) agrees with `jax.jacfwd`."""
    check_cell(as_cell_config(cell), IN, HIDDEN, _name(cell))


def scan_is_a_python_loop(cell: CellLike) -> None:
    """The rollout (`lax.scan`, `vmap` over sequences) is the cell stepped one example at a time."""
    model, params = model_of(cell)
    x = jax.random.normal(jax.random.key(5), (N, 6, IN))
    states = rollout_states(model, params, x)
    assert states.shape == (N, 6, model.state_dim)
    step = jax.jit(model.step)
    s = [model.initial_state()] * N
    for k in range(x.shape[1]):
        s = [step(params, s[i], x[i, k]) for i in range(N)]
        np.testing.assert_allclose(states[:, k], jnp.stack(s), atol=1e-5, rtol=1e-5)
    assert model.readout(params, s[0]).shape == (OUT,)
    assert float(jnp.std(states[:, -1])) > 1e-3, "the states do not move"


def jacobian_is_jacfwd(cell: CellLike, *, require_analytic: bool | None = None) -> None:
    """One pass gives the next state and the Jacobian in the declared structure; `jacfwd` agrees and
    is exactly zero where the structure says so; the diagonal paths agree too. A built-in cell
    must write its Jacobian out (`require_analytic` defaults to that); a user's may use autodiff."""
    model, params = model_of(cell)
    if require_analytic if require_analytic is not None else builtin(cell):
        assert model.cell_jacobian_kind == "analytic", f"{_name(cell)}: write step_and_jacobian analytically"
    assert model.state_dim % model.jacobian_block == 0
    outside = _outside_structure(model)
    ks, kx = jax.random.split(jax.random.key(2))
    for scale in (0.5, 2.0):  # around zero and in saturation
        s = scale * jax.random.normal(ks, (model.state_dim,))
        x = scale * jax.random.normal(kx, (IN,))
        px = model.project(params, x)
        new, jac = model.step_and_jacobian(params, s, px)
        ref = jax.jacfwd(model.step_projected, argnums=1)(params, s, px)
        np.testing.assert_allclose(new, model.step(params, s, x), atol=1e-6)
        np.testing.assert_allclose(dense_jacobian(jac, model.jacobian_structure), ref, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(ref)[outside], 0.0)
        np.testing.assert_allclose(model.jacobian(params, s, x), ref, atol=1e-6)
        new_d, diag = model.step_and_diagonal(params, s, px)
        np.testing.assert_allclose(new_d, new, atol=1e-6)
        np.testing.assert_allclose(diag, jnp.diagonal(ref), atol=1e-6)
        np.testing.assert_allclose(model.diag_jacobian(params, s, x), jnp.diagonal(ref), atol=1e-6)


def _outside_structure(model: Model) -> np.ndarray:
    """True where the cell's declared Jacobian structure says d s'_i / d s_j is exactly zero."""
    s, k = model.state_dim, model.jacobian_block
    if model.jacobian_structure == "full":
        return np.zeros((s, s), bool)
    if model.jacobian_structure == "diagonal":
        return ~np.eye(s, dtype=bool)
    unit = np.arange(s) % (s // k)  # entry a n + j belongs to unit j
    return unit[:, None] != unit[None, :]


def gradient_reaches_every_parameter(cell: CellLike) -> None:
    """BPTT's gradient is non-zero in every parameter array (nothing is dead or detached)."""
    *_, grads = _solved(as_cell_config(cell))
    for path, g in jax.tree_util.tree_leaves_with_path(grads["bptt"]):
        assert float(jnp.max(jnp.abs(g))) > 0, f"{_name(cell)}: no gradient reaches {jax.tree_util.keystr(path)}"


_SOLVED: dict[Any, tuple[Model, Any, dict, dict]] = {}  # one solve per cell config, shared by the checks


def _solved(cfg: CellConfig) -> tuple[Model, Any, dict, dict]:
    """Per Jacobian, the Newton states from zeros and from a random guess; the rollout; the
    adjoint gradients and BPTT's (one jit per cell)."""
    if cfg not in _SOLVED:
        _SOLVED[cfg] = _solve(cfg)
    return _SOLVED[cfg]


def _solve(cfg: CellConfig) -> tuple[Model, Any, dict, dict]:
    model, params = model_of(cfg)
    x = jax.random.normal(jax.random.key(5), (N, T, IN))
    cot = jax.random.normal(jax.random.key(6), (N, T, model.state_dim))
    guesses = {"zeros": jnp.zeros((N, T, model.state_dim)), "random": jax.random.normal(jax.random.key(9), (N, T, model.state_dim))}

    @jax.jit
    def compute(params):
        truth = rollout_states(model, params, x)
        solved = {
            (jac, g): solve_states(model, params, x, guess, NewtonOptions(jac, max_iters=100, tol=1e-6))
            for jac in ("full", "diagonal")
            for g, guess in guesses.items()
        }
        bptt = jax.grad(lambda p: jnp.sum(rollout_states(model, p, x) * cot))(params)
        states = solved[("full", "zeros")][0]

        def adjoint(gradient: Jacobian, how: Adjoint = "auto"):
            return jax.grad(lambda p: jnp.sum(differentiable_states(model, p, x, states, gradient, how) * cot))(params)

        adjoints = {how: adjoint("full", how) for how in ("auto", "sequential", "parallel")}
        return truth, solved, {"bptt": bptt, **adjoints, "diagonal": adjoint("diagonal")}

    truth, solved, grads = compute(params)
    return model, truth, solved, grads


def newton_solves_the_rollout(cell: CellLike) -> None:
    """DEER and quasi-DEER, from zeros and from a random guess, converge to the rollout's states in
    at most T iterations; on a structured cell quasi-DEER is full Newton step for step; on a cell
    linear in its state one iteration is exact (minGRU's parallel scan)."""
    model, truth, solved, _ = _solved(as_cell_config(cell))
    for (jac, guess), (states, stats) in solved.items():
        assert bool(jnp.all(stats.converged)), (jac, guess, stats)
        np.testing.assert_allclose(states, truth, atol=1e-5, err_msg=f"{jac} from {guess}")
        assert int(jnp.max(stats.iterations)) <= T  # Newton without damping: at most T iterations
    if model.jacobian_structure != "full":
        for guess in ("zeros", "random"):
            (full, full_stats), (quasi, quasi_stats) = solved[("full", guess)], solved[("diagonal", guess)]
            np.testing.assert_array_equal(quasi_stats.iterations, full_stats.iterations)
            np.testing.assert_allclose(quasi, full, atol=1e-6)
    if model.linear_recurrence:
        for guess in ("zeros", "random"):
            np.testing.assert_array_equal(solved[("diagonal", guess)][1].iterations, 1)


def rel_err(a: Any, b: Any) -> float:
    """The largest over arrays of max |a − b| / max |b|."""
    return max(float(jnp.max(jnp.abs(x - y)) / jnp.max(jnp.abs(y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def adjoint_is_the_bptt_gradient(cell: CellLike) -> None:
    """The Newton methods' gradient (the adjoint at the solved states, however it is solved) is
    BPTT's; the diagonal adjoint is exact on a structured cell and an approximation otherwise."""
    model, _, _, grads = _solved(as_cell_config(cell))
    bptt = grads["bptt"]
    for how in ("auto", "sequential", "parallel"):
        assert rel_err(grads[how], bptt) <= 1e-4, how
    if model.jacobian_structure != "full":
        assert rel_err(grads["diagonal"], bptt) <= 1e-4
    else:
        assert rel_err(grads["diagonal"], bptt) > 1e-3


def tiny_spec(cell: CellLike, method: str, layers: int = 1) -> Spec:
    """Two steps of one method on a tiny delayed-recall task (every method's required fields filled)."""
    task = DelayedRecallConfig(length=6, lag=2, vocab=IN, train_sequences=4, test_sequences=4)
    c = as_cell_config(cell)
    return validate_spec(
        {
            "name": f"tiny-{_name(cell)}-{method}",
            "seed": 0,
            "task": task.model_dump(),
            "model": {"cell": c.model_dump(mode="json"), "hidden": HIDDEN, **({"layers": layers} if layers > 1 else {})},
            "train": {"steps": 2, "batch_size": 4, "eval_every": 2},
            "methods": [{"type": method, "optimizer": SGD, **REQUIRED_METHOD_FIELDS.get(method, {})}],
        }
    )


def trains_with(cell: CellLike, method: str, layers: int = 1) -> None:
    """Two steps of `method` complete with a finite objective and a finite held-out rollout."""
    spec = tiny_spec(cell, method, layers)
    record = run_method(build_experiment(spec), spec.methods[0], lambda line: None)
    assert record["status"] == "completed", record["error"]
    assert record["steps_done"] == 2
    assert np.isfinite(record["final"]["rollout_loss_test"])
    assert np.isfinite(record["final"]["objective"])


def every_method_trains(cell: CellLike) -> None:
    """`trains_with` for every registered method, one layer and a two-layer stack."""
    for method in METHODS.names():
        for layers in (1, 2):
            trains_with(cell, method, layers)


CELL_CHECKS: list[Callable[[CellLike], None]] = [
    declares_the_truth,
    scan_is_a_python_loop,
    jacobian_is_jacfwd,
    gradient_reaches_every_parameter,
    newton_solves_the_rollout,
    adjoint_is_the_bptt_gradient,
    every_method_trains,
]

__all__ = [
    "CELL_CHECKS",
    "adjoint_is_the_bptt_gradient",
    "cell_names",
    "declares_the_truth",
    "every_method_trains",
    "gradient_reaches_every_parameter",
    "jacobian_is_jacfwd",
    "newton_solves_the_rollout",
    "scan_is_a_python_loop",
    "trains_with",
]

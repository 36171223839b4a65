"""Newton-parallel methods (DEER, quasi-DEER, ELK): the solver, the cells' Jacobians, the method.

Fixed tolerances, never loosened: states 1e-5, gradients 1e-4 relative, analytic
Jacobian diagonals 1e-6, scans against plain loops 1e-5.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqpar import testing as checks
from seqpar.methods.bptt import BPTTConfig
from seqpar.model.cells import CellConfig
from seqpar.model.cells.base import dense_jacobian
from seqpar.model.cells.elman import ElmanConfig
from seqpar.model.model import build_model
from seqpar.model.newton import (
    NewtonOptions,
    kalman_filter_means,
    linear_recurrence,
    reverse_linear_recurrence,
    solve_states,
)
from seqpar.model.rollout import rollout_states
from seqpar.spec import SpecError, validate_spec
from seqpar.tasks.delayed_recall import DelayedRecallConfig
from seqpar.train.loop import build_experiment, run_method

CELL_NAMES = checks.cell_names()
IN, HIDDEN, OUT = 3, 4, 3
N, T = 3, 10
SGD = {"type": "sgd", "lr": 0.05}


def _model(cell, key=0):
    return build_model(cell, IN, HIDDEN, OUT, jax.random.key(key))


# ----------------------------------------------------------------------------- linear solves


def _random_blocks(key, jacobian, t=7):
    ka, kb, ky = jax.random.split(key, 3)
    s = 4 if jacobian == "block" else 3
    shape = {"full": (t, s, s), "diagonal": (t, s), "block": (t, s // 2, 2, 2)}[jacobian]  # block: 2×2 per unit
    a = 0.9 * jax.random.normal(ka, shape)
    return a.at[0].set(0.0), jax.random.normal(kb, (t, s)), jax.random.normal(ky, (t, s))


def _dense(a, jacobian):
    return np.stack([np.asarray(dense_jacobian(r, jacobian)) for r in a])


@pytest.mark.parametrize("jacobian", ["full", "diagonal", "block"])
def test_scans_solve_the_linear_recurrences_of_a_plain_loop(jacobian):
    a, b, _ = _random_blocks(jax.random.key(0), jacobian)
    A, B = _dense(a, jacobian), np.asarray(b)
    h, forward = np.zeros(B.shape[1]), []
    for t in range(len(B)):
        h = A[t] @ h + B[t]
        forward.append(h)
    np.testing.assert_allclose(linear_recurrence(a, b, jacobian), np.stack(forward), atol=1e-5)
    h, backward = np.zeros(B.shape[1]), np.zeros_like(B)
    for t in reversed(range(len(B))):
        h = (A[t] @ h if t < len(B) - 1 else 0) + B[t]
        backward[t] = h
    np.testing.assert_allclose(reverse_linear_recurrence(a, b, jacobian), backward, atol=1e-5)


@pytest.mark.parametrize("jacobian", ["full", "diagonal", "block"])
def test_parallel_kalman_filter_is_the_sequential_filter(jacobian):
    """ELK's damped step: the filtered means of dynamics a s + b (unit noise) observed as y (variance 1/λ)."""
    a, b, y = _random_blocks(jax.random.key(1), jacobian)
    A, B, Y, lam = _dense(a, jacobian), np.asarray(b), np.asarray(y), 0.7
    s = B.shape[1]
    m, p, means = np.zeros(s), np.zeros((s, s)), []
    for t in range(len(B)):
        mp, pp = A[t] @ m + B[t], A[t] @ p @ A[t].T + np.eye(s)
        gain = pp @ np.linalg.inv(pp + np.eye(s) / lam)
        m, p = mp + gain @ (Y[t] - mp), (np.eye(s) - gain) @ pp
        means.append(m)
    np.testing.assert_allclose(kalman_filter_means(a, b, y, lam, jacobian), np.stack(means), atol=1e-5)


# ----------------------------------------------------------------------------- cells and Newton against the rollout
# The checks live in `seqpar.testing`, so a user runs the same ones on their own cell; here they
# run on every registered cell (the built-ins, and the user cells tests/conftest.py registers).


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_every_cell_writes_its_structured_jacobian_out_and_it_is_jacfwd(cell):
    """One pass gives the next state and the exact Jacobian in the declared structure; jacfwd agrees,
    and is exactly zero where the structure says so. A built-in cell must write the Jacobian out;
    a user's cell may leave it to autodiff."""
    checks.jacobian_is_jacfwd(cell)


def test_a_user_cell_may_leave_its_jacobian_to_autodiff_and_a_builtin_may_not():
    user = next(c for c in CELL_NAMES if not checks.builtin(c))
    checks.jacobian_is_jacfwd(user)
    with pytest.raises(AssertionError, match="write step_and_jacobian analytically"):
        checks.jacobian_is_jacfwd(user, require_analytic=True)


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_converged_states_are_the_rollout(cell):
    checks.newton_solves_the_rollout(cell)


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_adjoint_gradient_is_the_bptt_gradient(cell):
    checks.adjoint_is_the_bptt_gradient(cell)


# ----------------------------------------------------------------------------- damping


def _unstable(scale):
    """Elman with recurrent weights `scale`·orthogonal: linearised at zero, J = scale·U, and
    scale^T overflows float32 for T = 64 (the diagonal of U is smaller, so quasi-DEER needs more)."""
    return ElmanConfig.model_validate({"recurrent_scale": scale})


# (hidden, recurrent scale) where plain Newton from zeros overflows: the full Jacobian at 4, its diagonal at 8.
UNSTABLE = {"full": (4, 4.0), "diagonal": (8, 8.0)}


@pytest.mark.parametrize("jacobian", ["full", "diagonal"])
def test_damping_converges_where_plain_newton_overflows(jacobian):
    hidden, scale = UNSTABLE[jacobian]
    model, params = build_model(_unstable(scale), IN, hidden, OUT, jax.random.key(0))
    x = jax.nn.one_hot(jax.random.randint(jax.random.key(5), (2, 64), 0, IN), IN)
    guess = jnp.zeros((2, 64, model.state_dim))

    @jax.jit
    def solve(params):
        plain = solve_states(model, params, x, guess, NewtonOptions(jacobian, max_iters=400))
        damped = solve_states(model, params, x, guess, NewtonOptions(jacobian, max_iters=400, damping=1e-3))
        return plain, damped

    (plain, plain_stats), (_, damped_stats) = solve(params)
    # Blown up: a residual that is not finite, states far outside tanh's (-1, 1) or not numbers at all.
    assert not bool(jnp.any(jnp.isfinite(plain_stats.residual))) and not bool(jnp.all(jnp.abs(plain) < 1e6))
    assert bool(jnp.all(damped_stats.converged)) and float(jnp.max(damped_stats.residual)) <= 1e-5, damped_stats


# ----------------------------------------------------------------------------- the method in the trainer


def _spec(methods, cell: str | CellConfig = "gru", hidden=HIDDEN, length=8, steps=4, batch=4, sequences=8, log_every=None):
    return validate_spec(
        {
            "name": "newton",
            "seed": 0,
            "task": DelayedRecallConfig(length=length, lag=2, vocab=IN, train_sequences=sequences, test_sequences=4).model_dump(),
            "model": {"cell": cell if isinstance(cell, str) else cell.model_dump(), "hidden": hidden},
            "train": {"steps": steps, "batch_size": batch, "eval_every": steps, **({"log_every": log_every} if log_every else {})},
            "methods": methods,
        }
    )


def test_deer_training_tracks_bptt_for_50_sgd_steps():
    spec = _spec([BPTTConfig(optimizer=SGD).model_dump(), {"type": "deer", "optimizer": SGD, "tol": 1e-6}], steps=50, log_every=1)
    exp = build_experiment(spec)
    curves = {}
    for cfg in spec.methods:
        lines = []
        record = run_method(exp, cfg, lines.append)
        assert record["status"] == "completed", record["error"]
        curves[cfg.type] = np.array([line["train_objective"] for line in lines if "train_objective" in line])
    assert len(curves["deer"]) == 50
    np.testing.assert_allclose(curves["deer"], curves["bptt"], rtol=1e-4)
    assert curves["bptt"][-1] < curves["bptt"][0]  # it trained


def test_warm_start_from_the_previous_solution_needs_fewer_iterations():
    methods = [
        {"type": "deer", "label": label, "warm_start": warm, "jacobian": "diagonal", "optimizer": {"type": "adam", "lr": 1e-2}}
        for label, warm in (("zeros", "zeros"), ("previous", "previous"))
    ]
    spec = _spec(methods, length=16, steps=12, batch=8, sequences=8, log_every=1)  # full batches: every row every step
    exp = build_experiment(spec)
    iters = {}
    for cfg in spec.methods:
        lines = []
        record = run_method(exp, cfg, lines.append)
        assert record["status"] == "completed", record["error"]
        iters[cfg.display_label] = np.mean([line["train_newton_iters_mean"] for line in lines[-6:] if "train_newton_iters_mean" in line])
    print(f"mean Newton iterations over steps 7-12: zeros {iters['zeros']:.2f}, previous {iters['previous']:.2f}")
    assert iters["previous"] < iters["zeros"]


def test_unstable_cell_undamped_run_diverges_and_damped_run_completes():
    # `unconverged: apply`: the overflowed iterate's gradient is applied (the default falls back to BPTT's).
    methods = [
        {"type": "deer", "label": "undamped", "jacobian": "diagonal", "max_iters": 400, "unconverged": "apply", "optimizer": SGD},
        {"type": "deer", "label": "damped", "jacobian": "diagonal", "max_iters": 400, "damping": 1e-3, "optimizer": SGD},
    ]
    hidden, scale = UNSTABLE["diagonal"]
    spec = _spec(methods, cell=_unstable(scale), hidden=hidden, length=64, steps=2, batch=2, sequences=2)
    exp = build_experiment(spec)
    undamped, damped = (run_method(exp, cfg, lambda line: None) for cfg in spec.methods)
    assert undamped["status"] == "diverged" and undamped["diverged_at_step"] == 1, undamped["error"]
    assert damped["status"] == "completed", damped["error"]
    assert damped["diagnostics"]["train_newton_hit_max"] == 0 and damped["diagnostics"]["newton_hit_max"] == 0
    assert damped["diagnostics"]["newton_residual"] <= 1e-5


@pytest.mark.parametrize(
    "options, message",
    [
        ({"gradient": "diagonal"}, "methods.0.gradient: diagonal is offered with jacobian: diagonal only"),
        ({"jacobian": "dense"}, "methods.0.jacobian"),
        ({"damping": -1.0}, "methods.0.damping"),
        ({"max_iters": 0}, "methods.0.max_iters"),
        ({"warm_start": "table"}, "methods.0.warm_start"),
        ({"tol": "fast"}, "methods.0.tol"),
        ({"tol": -1e-3}, "methods.0.tol"),
        ({"jacobian": "none", "damping": 0.1}, "methods.0.damping: Picard iteration (jacobian: none) has no linearisation to damp"),
        ({"tol": 0, "unconverged": "apply"}, "methods.0.unconverged: a fixed budget (tol: 0) is never unconverged"),
        ({"adjoint": "magic"}, "methods.0.adjoint"),
        (
            {"jacobian": "diagonal", "gradient": "diagonal", "adjoint": "parallel"},
            "methods.0.adjoint: only meaningful with gradient: exact",
        ),
    ],
)
def test_bad_deer_options_name_the_key(options, message):
    with pytest.raises(SpecError) as e:
        _spec([{"type": "deer", "optimizer": SGD, **options}])
    assert message in str(e.value)


# ----------------------------------------------------------------------------- memory


def _memory_spec(method, batch=8, length=1024, hidden=64):
    return validate_spec(
        {
            "name": "mem",
            "seed": 0,
            "task": {"type": "delayed_recall", "length": length, "lag": 2, "vocab": 8, "train_sequences": batch, "test_sequences": batch},
            "model": {"cell": "gru", "hidden": hidden},
            "train": {"steps": 1, "batch_size": batch},
            "methods": [{"optimizer": SGD, **method}],
        }
    )


def test_full_jacobians_enter_the_memory_estimate_and_an_impossible_spec_is_refused(monkeypatch):
    from seqpar.train import memory

    bptt = memory.estimate(_memory_spec({"type": "bptt"}))
    full = memory.estimate(_memory_spec({"type": "deer"}))
    quasi = memory.estimate(_memory_spec({"type": "deer", "jacobian": "diagonal", "gradient": "diagonal"}))
    jacobians = 8 * 1024 * 64 * 64 * 4  # N·T·S² float32: one set of full Jacobians
    assert full.method_buffers >= jacobians and full.total - bptt.total >= jacobians
    assert quasi.method_buffers * 32 <= full.method_buffers  # diagonals: T·S floats per sequence, not T·S²
    # A limit BPTT fits under and full DEER does not: refused before anything is allocated, naming the buffers.
    monkeypatch.setattr(memory, "available", lambda: ((bptt.total + full.total) // 2, "test limit"))
    assert memory.check(_memory_spec({"type": "bptt"})).startswith("memory: estimated")
    with pytest.raises(memory.MemoryLimitError, match="method buffers"):
        memory.check(_memory_spec({"type": "deer"}))


@pytest.mark.parametrize("method", [{"type": "deer"}, {"type": "deer", "damping": 0.01}, {"type": "deer", "jacobian": "diagonal"}])
def test_memory_estimate_covers_the_compiled_step(method):
    """The estimate is an upper bound of XLA's own memory analysis of the step (never an underestimate)."""
    from seqpar.train import memory
    from seqpar.train.loop import compiled_memory_mb, init_state, make_train_step

    spec = _memory_spec(method, batch=4, length=128, hidden=32)
    exp = build_experiment(spec)
    m = spec.methods[0].build(exp.model, exp.task)
    state = init_state(exp, m)
    compiled = jax.jit(make_train_step(m, exp.train_key, 4, 4)).lower(state, exp.train, jnp.int32(0)).compile()
    est = memory.estimate(spec)
    mb = compiled_memory_mb(compiled)
    assert mb is not None and mb * 2**20 <= est.total - est.overhead


# ----------------------------------------------------------------------------- stopping rule


def test_a_solve_stopped_at_max_iters_returns_its_best_iterate_and_says_so():
    """Plain quasi-DEER on an expanding cell wanders before it converges: the solver returns the
    iterate of lowest residual (the yardstick's plain iterates, computed apart), not the last one."""
    from seqpar.bench.yardstick import yardstick_solve
    from seqpar.model.newton import residual

    model, params = build_model(_unstable(1.5), IN, 8, OUT, jax.random.key(0))
    x = jax.nn.one_hot(jax.random.randint(jax.random.key(5), (1, 16), 0, IN), IN)
    guess = jnp.zeros((1, 16, model.state_dim))
    s0 = model.initial_state()

    @jax.jit
    def compute(params):
        def res(states):
            return residual(lambda s, xt: model.step(params, s, xt), s0, x[0], states[0])

        states, stats = solve_states(model, params, x, guess, NewtonOptions("diagonal", max_iters=4, tol=1e-9))
        return res(states), stats, jnp.stack([res(yardstick_solve(model, "elman", params, x, k)) for k in range(5)])

    returned, stats, plain = compute(params)
    assert not bool(stats.converged[0]) and int(stats.iterations[0]) == 4
    best = int(jnp.argmin(plain))
    assert np.all(np.isfinite(plain)) and 0 < best < 4  # neither the guess nor the last iterate
    np.testing.assert_allclose(float(stats.residual[0]), float(plain[best]), rtol=1e-5)
    np.testing.assert_allclose(float(returned), float(stats.residual[0]), rtol=1e-5)


def test_tol_auto_stops_at_the_dtype_accuracy_with_no_more_iterations_than_a_tight_tol():
    model, params = _model("gru")
    x = jax.random.normal(jax.random.key(5), (N, T, IN))
    guess = jnp.zeros((N, T, model.state_dim))
    auto_states, auto = solve_states(model, params, x, guess, NewtonOptions("diagonal", tol="auto"))
    _, tight = solve_states(model, params, x, guess, NewtonOptions("diagonal", tol=1e-7))
    assert bool(jnp.all(auto.converged))
    assert bool(jnp.all(auto.iterations <= tight.iterations))
    scale = np.max(np.linalg.norm(np.asarray(auto_states), axis=-1), axis=-1)
    bound = np.sqrt(np.finfo(np.float32).eps) * (1.0 + scale)
    # Stopped by the residual (at most the bound) or by a step no longer than it (then within ~it of the rollout).
    np.testing.assert_allclose(auto_states, rollout_states(model, params, x), atol=float(np.max(bound)))

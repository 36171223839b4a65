"""The task suite: shapes, masks, determinism, held-out data, and every memoryless baseline
checked against the loss of its predictor on generated data (within 2%, fixed)."""

from __future__ import annotations

import collections
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from typer.testing import CliRunner

from seqpar.cli import app
from seqpar.spec import SpecError, validate_spec
from seqpar.tasks import TASKS
from seqpar.tasks.adding import AddingConfig
from seqpar.tasks.base import ClassificationTask, RegressionTask
from seqpar.tasks.catalog import task_rows
from seqpar.tasks.char_lm import CharLMConfig, shipped_text_path
from seqpar.tasks.copy_memory import CopyMemoryConfig
from seqpar.tasks.delayed_recall import DelayedRecallConfig
from seqpar.tasks.dynamics import DynamicsConfig, trajectories
from seqpar.tasks.parity import ParityConfig
from seqpar.train.loop import build_experiment

BASELINE_RTOL = 0.02

# One configuration and sample size per task, shared by every test of that task: each
# distinct shape costs XLA compiles, and the baseline checks need large samples anyway.
SAMPLES = {
    "adding": (AddingConfig(length=20), 50_000),
    "char_lm": (CharLMConfig(length=64), 2000),
    "copy_memory": (CopyMemoryConfig(length=12), 20_000),  # baseline 10 ln 8 / 32 (length 10 would give ln 2, like parity)
    "delayed_recall": (DelayedRecallConfig(length=16, lag=3, vocab=8), 20_000),
    "dynamics": (DynamicsConfig(length=16, burn_in=50), 16_384),  # 2^18 steps, as the baseline's reference
    "parity": (ParityConfig(length=16), 20_000),
}


@functools.cache
def _task(name):
    return SAMPLES[name][0].build()


@functools.cache
def _data(name, seed=0, split="train"):
    return _task(name).make_data(jax.random.key(seed), SAMPLES[name][1], split=split)


def test_every_task_is_registered_and_sampled_here():
    assert set(TASKS.names()) == set(SAMPLES)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_shapes_dtypes_and_masks(name):
    task, d = _task(name), _data(name)
    n, t = SAMPLES[name][1], task.seq_len
    assert d.x.shape == (n, t, task.input_dim) and d.x.dtype == jnp.float32
    assert d.mask.shape == (n, t) and d.mask.dtype == jnp.float32
    assert set(np.unique(d.mask)) <= {0.0, 1.0} and float(d.mask.sum()) > 0
    if isinstance(task, ClassificationTask):
        assert task.loss_name == "cross-entropy"
        assert d.y.shape == (n, t) and d.y.dtype == jnp.int32
        assert 0 <= int(d.y.min()) and int(d.y.max()) < task.output_dim
        assert np.all(np.asarray(d.x).sum(-1) == 1.0)  # one-hot tokens
    else:
        assert isinstance(task, RegressionTask) and task.loss_name == "mse"
        assert d.y.shape == (n, t, task.output_dim) and d.y.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(d.x))) and np.all(np.isfinite(np.asarray(d.y)))
    assert math.isfinite(task.baseline_loss) and task.baseline_loss > 0
    assert task.baseline_formula


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_data_is_a_function_of_the_key(name):
    task, n = _task(name), SAMPLES[name][1]
    a, b = task.make_data(jax.random.key(7), n), task.make_data(jax.random.key(7), n)
    c = _data(name)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a.x, c.x)


@functools.cache
def _char_lm_experiment():
    cfg, n = SAMPLES["char_lm"]
    spec = validate_spec(
        {
            "name": "tiny",
            "task": {**cfg.model_dump(), "train_sequences": n, "test_sequences": n},
            "model": {"cell": "elman", "hidden": 3},
            "train": {"steps": 1, "batch_size": 4},
            "methods": [{"type": "bptt", "optimizer": {"type": "sgd", "lr": 0.1}}],
        }
    )
    return build_experiment(spec)


def test_experiment_train_and_test_sets_differ():
    exp = _char_lm_experiment()
    assert not np.array_equal(exp.train.x, exp.test.x)


def test_experiment_val_and_test_sets_come_from_their_own_parts_of_the_text():
    exp = _char_lm_experiment()
    text, parts = shipped_text_path().read_text(encoding="utf-8"), exp.task.parts
    assert parts["train"][1] == parts["val"][0] and parts["val"][1] == parts["test"][0] == len(text) - round(0.1 * len(text))
    for i in range(20):
        for split, data in (("train", exp.train), ("val", exp.val), ("test", exp.test)):
            lo, hi = parts[split]
            assert _decode(exp.task, data, i) in text[lo:hi]


# ----------------------------------------------------------------------------- baselines


def _fitted_memoryless_logprobs(task, fit, evaluate):
    """Log-probabilities of the best predictor that sees the position t and the current input only,
    fitted by counting on `fit` (add-1/2 smoothing) and applied to `evaluate`."""
    t, c = task.seq_len, task.output_dim
    tok_fit, tok_eval = np.argmax(fit.x, -1), np.argmax(evaluate.x, -1)
    counts = np.full((t, task.input_dim, c), 0.5)
    np.add.at(counts, (np.arange(t)[None, :], tok_fit, np.asarray(fit.y)), 1.0)
    logp = np.log(counts / counts.sum(-1, keepdims=True))
    return jnp.asarray(logp[np.arange(t)[None, :], tok_eval])


@pytest.mark.parametrize("name", ["copy_memory", "parity", "delayed_recall"])
def test_no_memoryless_classifier_beats_the_baseline(name):
    """The best (position, current input) -> distribution table, fitted on one large sample and scored on
    another, reaches the baseline formula (so the formula is right and the mask scores the right steps)."""
    task, fit, ev = _task(name), _data(name, 0), _data(name, 1)
    loss = float(task.loss(_fitted_memoryless_logprobs(task, fit, ev), ev.y, ev.mask))
    np.testing.assert_allclose(loss, task.baseline_loss, rtol=BASELINE_RTOL)


def test_copy_memory_baseline_formula_and_layout():
    task, d = _task("copy_memory"), _data("copy_memory")
    n, length = d.x.shape[0], task.cfg.length
    total = length + 20
    assert task.seq_len == total and task.input_dim == 10 and task.output_dim == 9
    np.testing.assert_allclose(task.baseline_loss, 10 * math.log(8) / total, rtol=1e-12)
    tok, y = np.argmax(d.x, -1), np.asarray(d.y)
    assert set(np.unique(tok[:, :10])) == set(range(1, 9))  # all 8 symbols, never blank or delimiter (no 7-symbol bug)
    assert np.all(tok[:, 10 : length + 9] == 0)  # length - 1 blanks
    assert np.all(tok[:, length + 9] == 9) and np.all(tok[:, length + 10 :] == 0)  # delimiter, then 10 blanks
    assert np.all(y[:, : length + 10] == 0) and np.array_equal(y[:, length + 10 :], tok[:, :10])
    assert np.all(np.asarray(d.mask) == 1.0)  # the formula averages over all length + 20 steps
    # The predictor of the formula: blank for sure, then uniform over the 8 symbols.
    logp = np.full((total, 9), -np.inf)
    logp[: length + 10, 0] = 0.0
    logp[length + 10 :, 1:] = -math.log(8)
    loss = float(task.loss(jnp.broadcast_to(jnp.asarray(logp), (n, total, 9)), d.y, d.mask))
    np.testing.assert_allclose(loss, task.baseline_loss, rtol=1e-5)


def test_parity_targets_and_scored_steps():
    d = _data("parity")
    bits = np.argmax(d.x, -1)
    np.testing.assert_array_equal(d.y, np.bitwise_xor.accumulate(bits, axis=1))
    np.testing.assert_array_equal(d.mask[:, 0], 0.0)  # target = the current bit: no memory needed
    np.testing.assert_array_equal(d.mask[:, 1:], 1.0)


def test_adding_markers_targets_and_baseline():
    task, d = _task("adding"), _data("adding")
    values, markers, y = np.asarray(d.x[..., 0]), np.asarray(d.x[..., 1]), np.asarray(d.y[..., 0])
    assert np.all(markers[:, :10].sum(1) == 1) and np.all(markers[:, 10:].sum(1) == 1)
    assert np.all(markers[:, -1] == 0)  # the last input never holds an addend
    assert np.all((values >= 0) & (values < 1))
    np.testing.assert_allclose(y[:, -1], (values * markers).sum(1), rtol=1e-6)
    np.testing.assert_array_equal(d.mask[:, :-1], 0.0)
    np.testing.assert_array_equal(d.mask[:, -1], 1.0)
    assert task.baseline_loss == 1 / 6
    ones = float(task.loss(jnp.ones_like(d.y), d.y, d.mask))  # predict 1 everywhere; only the last step counts
    np.testing.assert_allclose(ones, 1 / 6, rtol=BASELINE_RTOL)
    best_constant = float(task.loss(jnp.full_like(d.y, y[:, -1].mean()), d.y, d.mask))
    np.testing.assert_allclose(best_constant, 1 / 6, rtol=BASELINE_RTOL)


def test_dynamics_persistence_baseline_on_fresh_data():
    task, d = _task("dynamics"), _data("dynamics")  # the baseline's reference sample has its own key
    np.testing.assert_array_equal(d.x[:, 1:], d.y[:, :-1])  # target = next observation
    persistence = float(task.loss(d.x, d.y, d.mask))
    np.testing.assert_allclose(persistence, task.baseline_loss, rtol=BASELINE_RTOL)


def test_dynamics_noise_adds_twice_its_variance_to_persistence():
    cfg, n = SAMPLES["dynamics"]
    a, b = _task("dynamics"), cfg.model_copy(update={"noise": 0.2}).build()
    da, db = _data("dynamics"), b.make_data(jax.random.key(0), n)  # same key: same trajectories
    gap = float(b.loss(db.x, db.y, db.mask)) - float(a.loss(da.x, da.y, da.mask))
    np.testing.assert_allclose(gap, 2 * 0.2**2, rtol=BASELINE_RTOL)


def test_dynamics_rk4_converges_and_is_standardised():
    key = jax.random.key(2)
    coarse = trajectories(key, 8, 10, 0, 5, 0.05)
    fine = trajectories(key, 8, 10, 0, 50, 0.05)
    assert float(jnp.max(jnp.abs(coarse - fine))) < 1e-2  # RK4 at h = 0.01 is accurate over 0.5 time units
    obs = np.asarray(_data("dynamics").x).reshape(-1, 3)  # 16384 independent starts on the attractor
    assert np.all(np.abs(obs.mean(0)) < 0.15) and np.all(np.abs(obs.std(0) - 1) < 0.15)


def test_char_lm_baseline_is_the_unigram_entropy_of_the_training_text():
    task = _task("char_lm")
    text = shipped_text_path().read_text(encoding="utf-8")
    train_text = text[: task.num_train_chars]
    counts = collections.Counter(train_text)
    entropy = -math.fsum(k / len(train_text) * math.log(k / len(train_text)) for k in counts.values())
    np.testing.assert_allclose(task.baseline_loss, entropy, rtol=1e-9)
    # The unigram predictor on generated training windows.
    logp = np.full(task.output_dim, -np.inf)
    for ch, k in counts.items():
        logp[task.vocab.index(ch)] = math.log(k / len(train_text))
    d = _data("char_lm")
    loss = float(task.loss(jnp.broadcast_to(jnp.asarray(logp), d.x.shape), d.y, d.mask))
    np.testing.assert_allclose(loss, task.baseline_loss, rtol=BASELINE_RTOL)


def _decode(task, d, i):
    ids = list(np.argmax(d.x[i], -1)) + [int(d.y[i, -1])]
    return "".join(task.vocab[j] for j in ids)


def test_char_lm_windows_and_held_out_part(tmp_path):
    text = "".join(f"line {i}: the quick brown fox {i * 7919 % 1000}\n" for i in range(200))
    f = tmp_path / "own.txt"
    f.write_text(text, encoding="utf-8")
    task = CharLMConfig(path=str(f), length=20, test_fraction=0.25, val_fraction=0.15).build()
    assert task.vocab == "".join(sorted(set(text)))
    cut, val_end = task.num_train_chars, len(text) - round(len(text) * 0.25)
    assert cut == val_end - round(len(text) * 0.15)
    tr, va, te = (task.make_data(jax.random.key(0), 64, split=s) for s in ("train", "val", "test"))
    np.testing.assert_array_equal(np.argmax(tr.x[:, 1:], -1), tr.y[:, :-1])  # target = next character
    for i in range(64):
        assert _decode(task, tr, i) in text[:cut]
        assert _decode(task, va, i) in text[cut:val_end]
        assert _decode(task, te, i) in text[val_end:]


@pytest.mark.parametrize(
    "task, key, words",
    [
        ({"type": "char_lm", "path": "/nonexistent/book.txt"}, "task.path", "file not found"),
        ({"type": "char_lm", "path": "."}, "task.path", "is a directory"),
        ({"type": "char_lm", "path": "BINARY"}, "task.path", "not UTF-8"),
        ({"type": "char_lm", "path": "SHORT"}, "task.path", "must hold a window"),
        ({"type": "char_lm", "length": 10**6}, "task.length", "must hold a window"),
        ({"type": "char_lm", "val_fraction": 0.5, "test_fraction": 0.5}, "task.val_fraction", "must be below 1"),
        ({"type": "copy_memory", "length": 0}, "task.length", "greater than 0"),
        ({"type": "adding", "length": 2}, "task.length", "greater than or equal to 3"),
        ({"type": "parity", "length": 1}, "task.length", "greater than or equal to 2"),
        ({"type": "dynamics", "noise": -1}, "task.noise", "greater than or equal to 0"),
        ({"type": "dynamics", "dt": float("nan")}, "task.dt", "finite"),
    ],
)
def test_bad_task_configs_name_the_key(tmp_path, task, key, words):
    if task.get("path") == "BINARY":
        (tmp_path / "b.bin").write_bytes(b"\xff\xfe\x00abc" * 100)
        task = {**task, "path": str(tmp_path / "b.bin")}
    if task.get("path") == "SHORT":
        (tmp_path / "s.txt").write_text("too short")
        task = {**task, "path": str(tmp_path / "s.txt")}
    bptt = {"type": "bptt", "optimizer": {"type": "sgd", "lr": 0.1}}
    raw = {"name": "bad", "task": task, "train": {"steps": 1, "batch_size": 1}, "methods": [bptt]}
    with pytest.raises(SpecError) as e:
        validate_spec(raw)
    msg = str(e.value)
    assert f"{key}:" in msg and words in msg, msg


# ----------------------------------------------------------------------------- `seqpar tasks`


def test_catalog_rows_cover_every_task():
    rows = {r.name: r for r in task_rows()}
    assert set(rows) == set(TASKS.names())
    np.testing.assert_allclose(rows["copy_memory"].baseline_at_defaults, 10 * math.log(8) / 120, rtol=1e-12)
    assert rows["adding"].loss == "mse" and rows["parity"].loss == "cross-entropy"
    assert [p.name for p in rows["delayed_recall"].params] == ["length", "lag", "vocab"]
    assert all(p.description for r in rows.values() for p in r.params)


def test_cli_tasks_prints_the_table():
    result = CliRunner().invoke(app, ["tasks"])
    assert result.exit_code == 0, result.output
    for name in TASKS.names():
        assert name in result.output
    assert "10·ln 8 / (length + 20)" in result.output and "ln 2" in result.output

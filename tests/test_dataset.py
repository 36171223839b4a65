"""The `dataset` task: a user's .npz round trip, its splits and baseline, and every malformed file
refused with one line naming the file and the array (exit 2, no run directory)."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from seqpar.cli import app
from seqpar.spec import validate_spec
from seqpar.tasks.dataset import DatasetConfig
from seqpar.train.memory import estimate

runner = CliRunner()
N, T, V = 60, 6, 4


def _tokens(n=N, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, V, (n, T))
    return x, x[:, 0].copy()  # the label is the first token: it needs memory


def _spec(path, **task):
    return {
        "name": "ds",
        "seed": 1,
        "task": {"type": "dataset", "path": str(path), **task},
        "model": {"cell": "gru", "hidden": 8},
        "train": {"steps": 2, "batch_size": 4, "eval_every": 2},
        "methods": [{"type": "bptt", "optimizer": {"type": "adam", "lr": 1e-2}}],
    }


def test_round_trip_tokens_with_a_label_per_sequence(tmp_path):
    x, y = _tokens()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    spec = validate_spec(_spec(tmp_path / "d.npz"))
    c = spec.task
    assert isinstance(c, DatasetConfig)
    assert (c.train_sequences, c.val_sequences, c.test_sequences, c.split_seed) == (48, 6, 6, 1)  # counts and seed resolved
    task = c.build()
    assert (task.input_dim, task.output_dim, task.seq_len, task.loss_name) == (V, V, T, "cross-entropy")
    parts = {s: task.make_data(None, n, split=s) for s, n in (("train", 48), ("val", 6), ("test", 6))}
    rows = []
    for d in parts.values():
        tok = np.argmax(np.asarray(d.x), -1)
        np.testing.assert_array_equal(np.asarray(d.mask), np.tile(np.arange(T) == T - 1, (len(tok), 1)))  # scored at the last step
        np.testing.assert_array_equal(np.asarray(d.y)[:, -1], tok[:, 0])
        rows += [np.flatnonzero((x == r).all(1))[0] for r in tok]
    assert sorted(rows) == list(range(N))  # the splits partition the file's rows
    # Seeded: another spec seed shuffles differently; split_seed pins it.
    other = validate_spec({**_spec(tmp_path / "d.npz"), "seed": 2}).task.build().make_data(None, 6, split="test")
    assert not np.array_equal(np.asarray(other.x), np.asarray(parts["test"].x))
    pinned = validate_spec({**_spec(tmp_path / "d.npz", split_seed=1), "seed": 2}).task.build().make_data(None, 6, split="test")
    np.testing.assert_array_equal(np.asarray(pinned.x), np.asarray(parts["test"].x))
    # Fewer sequences than a split holds: a key-chosen subset, and the memory estimate (shapes only) works.
    small = validate_spec(_spec(tmp_path / "d.npz", train_sequences=10, test_sequences=4))
    assert small.task.build().make_data(jax.random.key(0), 10).x.shape == (10, T, V)
    assert estimate(small).data > 0
    # Baseline: H(y | last token): the label is independent of it, so about ln 4 (few rows: loose).
    assert task.baseline_loss is not None and abs(task.baseline_loss - math.log(V)) < 0.5


def test_float_features_per_step_targets_mask_and_explicit_splits(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, T, 3)).astype(np.float32)
    y = np.cumsum(x[..., 0], axis=1)
    mask = np.ones((20, T))
    mask[:, -2:] = 0  # padding
    x_test, y_test = rng.normal(size=(5, T, 3)), rng.normal(size=(5, T))
    np.savez(tmp_path / "f.npz", x=x, y=y, mask=mask, x_test=x_test, y_test=y_test)
    c = validate_spec(_spec(tmp_path / "f.npz", val_fraction=0.25)).task
    assert (c.train_sequences, c.val_sequences, c.test_sequences) == (15, 5, 5)
    task = c.build()
    assert (task.input_dim, task.output_dim, task.loss_name, task.baseline_loss) == (3, 1, "mse", None)
    d = task.make_data(None, 15)
    assert d.y.shape == (15, T, 1) and float(d.mask[:, -2:].sum()) == 0.0
    np.testing.assert_allclose(np.asarray(task.make_data(None, 5, split="test").x), x_test, rtol=1e-6)


def test_a_run_on_float_data_trains_the_baseline_it_needs(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "f.npz", x=rng.normal(size=(40, T, 2)), y=rng.normal(size=40))
    res = runner.invoke(app, ["run", yaml_file(tmp_path, _spec(tmp_path / "f.npz")), "--out", str(tmp_path / "run"), "--quiet"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    base, bptt = summary["runs"]
    assert base["label"] == "baseline_trained" and summary["task"]["baseline_loss"] is None
    assert bptt["baseline_loss"] == base["final"]["rollout_loss_test"] and bptt["baseline_source"] == "trained"


def yaml_file(tmp_path, spec) -> str:
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(p)


def _npz(**arrays):
    return lambda p: np.savez(p, **arrays)


x_ok, y_ok = _tokens()
ragged = np.empty(2, dtype=object)
ragged[0], ragged[1] = np.zeros(3), np.zeros(5)
BAD = [
    ("missing file", None, "task.path", ["file not found"]),
    ("not an npz", lambda p: p.write_text("x,y\n1,2\n"), "task.path", ["not an .npz archive"]),
    ("a single npy", lambda p: np.save(open(p, "wb"), x_ok), "task.path", ["single .npy array"]),
    ("missing y", _npz(x=x_ok), "task.path", ["array 'y' missing"]),
    ("unknown array", _npz(x=x_ok, y=y_ok, x_vall=x_ok), "task.path", ["unknown array 'x_vall'"]),
    ("ragged x", _npz(x=ragged, y=y_ok[:2]), "task.path", ["array 'x'", "ragged"]),
    ("x of wrong rank", _npz(x=x_ok[:, :, None, None].astype(float), y=y_ok), "task.path", ["array 'x'", "(N, T, D)"]),
    ("y length mismatch", _npz(x=x_ok, y=y_ok[:-1]), "task.path", ["array 'y'", "expected (N,) = (60,)"]),
    ("empty", _npz(x=np.zeros((0, T), int), y=np.zeros(0, int)), "task.path", ["array 'x'", "empty"]),
    ("NaN in x", _npz(x=np.full((N, T, 1), np.nan), y=y_ok), "task.path", ["array 'x'", "non-finite"]),
    ("inf in y", _npz(x=x_ok, y=np.where(np.arange(N) == 3, np.inf, 1.0)), "task.path", ["array 'y'", "non-finite"]),
    ("negative label", _npz(x=x_ok, y=y_ok - 1), "task.path", ["array 'y'", "negative label -1"]),
    ("label beyond classes", "classes", "task.path", ["array 'y'", "label 3 out of range for classes=2"]),
    ("x_val without y_val", _npz(x=x_ok, y=y_ok, x_val=x_ok), "task.path", ["array 'y_val' missing"]),
    ("x_test of another length", _npz(x=x_ok, y=y_ok, x_test=x_ok[:, :3], y_test=y_ok), "task.path", ["array 'x_test'", "does not match"]),
    ("mask not 0/1", _npz(x=x_ok, y=y_ok, mask=np.full((N, T), 2)), "task.path", ["array 'mask'", "0 or 1"]),
    ("too few rows to split", _npz(x=x_ok[:3], y=y_ok[:3]), "task.val_fraction", ["3 sequences", "at least one"]),
]


@pytest.mark.parametrize("make, key, words", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_malformed_file_is_one_line_exit_2_and_writes_nothing(tmp_path, make, key, words):
    path = tmp_path / "data.npz"
    task = {}
    if make == "classes":
        np.savez(path, x=x_ok, y=y_ok % 4)
        task = {"classes": 2}
    elif make is not None:
        make(path)
    out, root = tmp_path / "out", tmp_path / "results"
    spec = yaml_file(tmp_path, _spec(path, **task))
    res = runner.invoke(app, ["run", spec, "--out", str(out), "--results-root", str(root), "--quiet"])
    assert res.exit_code == 2, res.output
    msg = res.output.strip()
    assert len(msg.splitlines()) == 1 and msg.startswith(f"error: {spec}: line ") and f" {key}: " in msg, msg
    assert str(path) in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    assert not out.exists() and not root.exists()


# ----------------------------------------------------------------------------- ids a 32-bit index cannot hold

WIDE = [
    ("token 2**32+1", {"x": np.where(np.arange(N * T).reshape(N, T) == 0, 2**32 + 1, x_ok)}, {}, ["array 'x'", "token 4294967297"]),
    ("token 2**31", {"x": np.where(np.arange(N * T).reshape(N, T) == 0, 2**31, x_ok)}, {}, ["array 'x'", "token 2147483648"]),
    ("label 2**32+2", {"y": np.where(np.arange(N) == 0, 2**32 + 2, y_ok)}, {}, ["array 'y'", "label 4294967298"]),
    ("float label 1e10", {"y": np.where(np.arange(N) == 0, 1e10, 1.0 * y_ok)}, {"kind": "classification"}, ["array 'y'", "label 1e+10"]),
]


@pytest.mark.parametrize("arrays, task, words", [c[1:] for c in WIDE], ids=[c[0] for c in WIDE])
def test_ids_a_32_bit_index_cannot_hold_are_refused_not_wrapped(tmp_path, arrays, task, words):
    path = tmp_path / "data.npz"
    np.savez(path, **{"x": x_ok, "y": y_ok, **arrays})
    spec = yaml_file(tmp_path, _spec(path, **task))
    for args in (["validate", spec], ["run", spec, "--out", str(tmp_path / "out"), "--quiet"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, res.output
        msg = res.output.strip()
        assert len(msg.splitlines()) == 1 and str(path) in msg and "32-bit index" in msg, msg
        for w in words:
            assert w in msg, (w, msg)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- data are part of a run's identity


def _text(seed: int) -> str:
    rng = np.random.default_rng(seed)
    return "".join(rng.choice(list("abcd "), 400))


@pytest.mark.parametrize("kind", ["dataset", "char_lm"])
def test_resume_on_changed_data_is_refused_naming_the_file_and_both_hashes(tmp_path, kind):
    import hashlib

    from test_reliability import _Crash, _CrashAt

    from seqpar.train.runner import run_experiment

    if kind == "dataset":
        path = tmp_path / "data.npz"
        np.savez(path, x=x_ok, y=y_ok)
        raw = _spec(path)
    else:
        path = tmp_path / "text.txt"
        path.write_text(_text(0))
        raw = {**_spec(path), "task": {"type": "char_lm", "path": str(path), "length": 8, "train_sequences": 8, "test_sequences": 8}}
    raw["train"] = {"steps": 6, "batch_size": 4, "eval_every": 3, "checkpoint_every": 2}
    out = tmp_path / "run"
    with pytest.raises(_Crash):
        run_experiment(validate_spec(raw), out, _CrashAt("bptt", 3))
    was = hashlib.sha256(path.read_bytes()).hexdigest()
    recorded = json.loads((out / "summary.json").read_text())["task"]["data"]
    assert recorded == {"task.path": {"path": str(path.resolve()), "sha256": was}}  # recorded when the run started

    if kind == "dataset":  # other data of the same shapes
        np.savez(path, x=_tokens(seed=1)[0], y=_tokens(seed=1)[1])
    else:
        path.write_text(_text(1))
    now = hashlib.sha256(path.read_bytes()).hexdigest()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    res = runner.invoke(app, ["run", "--resume", str(out), "--quiet"])
    assert res.exit_code == 2, res.output
    msg = res.output.strip().splitlines()[-1]
    assert msg.startswith("error: ") and str(path.resolve()) in msg and was[:12] in msg and now[:12] in msg, msg
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # nothing written

    # The same bytes again (a restored file, another mtime): the run continues.
    if kind == "dataset":
        np.savez(path, x=x_ok, y=y_ok)
    else:
        path.write_text(_text(0))
    res = runner.invoke(app, ["run", "--resume", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "summary.json").read_text())["task"]["data"] == recorded

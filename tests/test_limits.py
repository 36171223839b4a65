"""Caps and user errors that used to run away or crash: a study of a trillion trials, a `--storage`
that cannot be opened, a zip bomb in a dataset, an unexpected error in `validate`.
Each is one line and an exit code, with nothing written (docs/limits.md lists the caps)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from seqpar.cli import app

runner = CliRunner()

pytest.importorskip("optuna")


def _study(tiny_spec, trials: int) -> dict:
    tiny_spec["methods"] = tiny_spec["methods"][:1]
    tiny_spec["tune"] = {"trials": trials, "space": {"bptt": {"optimizer.lr": {"log": [1e-3, 1e-1]}}}}
    return tiny_spec


def _one_error_line(res) -> str:
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, res.output
    assert lines[0].startswith("error:"), res.output
    return lines[0]


@pytest.mark.parametrize("command", ["validate", "tune"])
def test_a_study_past_the_trial_cap_is_refused_before_anything_runs(tiny_spec, write_spec, tmp_path, command):
    path = write_spec(_study(tiny_spec, 1_000_000_000_000))
    out = tmp_path / "study"
    args = [command, str(path)] + (["--out", str(out)] if command == "tune" else [])
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    line = _one_error_line(res)
    assert "tune.trials" in line and "1000000000000 trials exceed the limit of 10000" in line and "--max-trials" in line
    assert not out.exists()


def test_max_trials_raises_and_lowers_the_cap(tiny_spec, write_spec):
    path = write_spec(_study(tiny_spec, 20))
    res = runner.invoke(app, ["validate", str(path), "--max-trials", "10"])
    assert res.exit_code == 2 and "--max-trials 20" in _one_error_line(res)
    res = runner.invoke(app, ["validate", str(path), "--max-trials", "20"])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("url", ["sqlite:////no/such/dir/study.db", "bogus://x"])
def test_a_storage_that_cannot_be_opened_is_exit_2_and_writes_nothing(tiny_spec, write_spec, tmp_path, url):
    out = tmp_path / "study"
    res = runner.invoke(app, ["tune", str(write_spec(_study(tiny_spec, 2))), "--out", str(out), "--storage", url])
    assert res.exit_code == 2, res.output
    line = _one_error_line(res)
    assert f"--storage {url}: cannot open" in line and "unexpected" not in line
    assert not out.exists()


# ----------------------------------------------------------------------------- zip bombs (crafted headers, nothing allocated)


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _lying_npy(shape: tuple[int, ...]) -> bytes:
    """A `.npy` member whose header declares `shape` float64 but that holds 64 bytes: what a bomb's header says."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": shape})
    return buf.getvalue() + bytes(64)


def _dataset_spec(path: Path, **task) -> dict:
    return {
        "name": "ds",
        "task": {"type": "dataset", "path": str(path), **task},
        "model": {"cell": "gru", "hidden": 8},
        "train": {"steps": 2, "batch_size": 4, "eval_every": 2},
        "methods": [{"type": "bptt", "optimizer": {"type": "adam", "lr": 1e-2}}],
    }


def _y() -> bytes:
    return _npy_bytes(np.zeros(40, np.int64))


def _header_bomb(path: Path) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", _lying_npy((10**12, 6, 1)))  # 48 TB declared
        z.writestr("y.npy", _y())


def _directory_bomb(path: Path) -> None:
    """A real small x whose zip central directory declares 3 GB uncompressed."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", _npy_bytes(np.zeros((40, 6), np.int64)))
        z.writestr("y.npy", _y())
    data = bytearray(path.read_bytes())
    at = data.index(b"PK\x01\x02")  # the first central-directory entry (x.npy); its uncompressed size is at +24
    data[at + 24 : at + 28] = (3_000_000_000).to_bytes(4, "little")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("make, declared", [(_header_bomb, "48.0 TB"), (_directory_bomb, "3.0 GB")], ids=["npy-header", "zip-directory"])
def test_a_zip_bomb_is_refused_from_its_declared_sizes(tmp_path, write_spec, make, declared, command):
    data = tmp_path / "bomb.npz"
    make(data)
    out = tmp_path / "out"
    args = [command, str(write_spec(_dataset_spec(data)))] + (["--out", str(out), "--quiet"] if command == "run" else [])
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    line = _one_error_line(res)
    assert str(data) in line and "array 'x'" in line and f"declares {declared}" in line and "task.max_mb" in line
    assert not out.exists()


def test_the_cap_is_the_spec_key_max_mb(tmp_path, write_spec):
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((40, 6), np.int64), y=np.zeros(40, np.int64))  # 2048 + 448 bytes with their .npy headers
    res = runner.invoke(app, ["validate", str(write_spec(_dataset_spec(data, max_mb=0.0022)))])
    assert res.exit_code == 2 and "array 'y'" in _one_error_line(res)  # x fits, x and y together do not
    res = runner.invoke(app, ["validate", str(write_spec(_dataset_spec(data, max_mb=0.01)))])
    assert res.exit_code == 0, res.output


def test_validate_turns_an_unexpected_error_into_one_line(tiny_spec, write_spec, monkeypatch):
    import seqpar.train.memory as memory

    def broken(specs, force):
        raise MemoryError("the estimate ran out of memory")

    monkeypatch.setattr(memory, "check_all", broken)
    path = write_spec(tiny_spec)
    res = runner.invoke(app, ["validate", str(path)])
    assert res.exit_code == 1
    assert "unexpected MemoryError: the estimate ran out of memory (rerun with --debug" in _one_error_line(res)
    res = runner.invoke(app, ["validate", str(path), "--debug"])
    assert isinstance(res.exception, MemoryError)  # --debug lets the traceback through

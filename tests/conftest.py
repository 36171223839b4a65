"""Shared fixtures: a tiny spec (seconds to run) as a dict and as a YAML file.

Before JAX starts: four virtual CPU devices, so the data-parallel tests can build
a real 4-device mesh in-process (every other test uses one device, the default),
and cheaper XLA compilation: the suite is dominated by compiling tiny programs,
and no test measures speed.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true"]
).strip()

import jax
import pytest
import yaml

import seqpar
from seqpar.train.loop import NullProgress

jax.config.update("jax_num_cpu_devices", 4)


# A user's cell, registered as a user registers one (two plain functions, no seqpar class), so every
# test parametrised over the cell registry (`seqpar.testing.cell_names()`) runs it beside the built-ins:
# examples/function_cell/mycell.py, a GRU whose candidate uses softsign, its Jacobian left to autodiff.
def _example_cell():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "function_cell" / "mycell.py"
    spec = importlib.util.spec_from_file_location("seqpar_example_mycell", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_mycell = _example_cell()
USER_CELL = "user_softgru"
seqpar.register_cell(USER_CELL, init=_mycell.init, step=_mycell.step)


class Crash(BaseException):
    """Stands for the process dying (not an Exception: nothing records it as a failure)."""


class CrashAt(NullProgress):
    """A progress sink that kills the run (raises `Crash`) when `label` logs `step`."""

    def __init__(self, label, step):
        self.label, self.step = label, step

    def update(self, label, step, record):
        if (label, step) == (self.label, self.step):
            raise Crash


def metric_lines(run_dir: Path) -> list[dict]:
    """metrics.jsonl without its wall-clock field: what a resumed run must reproduce exactly."""
    from seqpar.records.reader import read_metrics

    return [{k: v for k, v in rec.items() if k != "wall_s"} for rec in read_metrics(run_dir)]


TINY = {
    "name": "tiny",
    "seed": 0,
    "task": {"type": "delayed_recall", "length": 8, "lag": 2, "vocab": 4, "train_sequences": 16, "test_sequences": 16},
    "model": {"cell": "gru", "hidden": 8},
    "train": {"steps": 6, "batch_size": 8, "eval_every": 3, "target_loss": 1.0},
    "methods": [
        {"type": "bptt", "optimizer": {"type": "adam", "lr": 1e-2}},
        {"type": "parallel", "optimizer": {"type": "adam", "lr": 1e-2}, "consistency_weight": 1.0},
    ],
}


@pytest.fixture
def tiny_spec() -> dict:
    return copy.deepcopy(TINY)


@pytest.fixture
def write_spec(tmp_path: Path):
    """Write a spec dict (or raw text) to a YAML file in tmp_path and return its path."""

    def _write(spec: dict | str, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec, sort_keys=False))
        return path

    return _write

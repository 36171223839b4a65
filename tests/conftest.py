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

jax.config.update("jax_num_cpu_devices", 4)


# A user's cell, registered as a user registers one (two plain functions, no seqpar class), so every
# test parametrised over the cell registry (`seqpar.testing.cell_names()`) runs it beside the built-ins:
# a GRU whose candidate uses softsign, its Jacobian left to autodiff.
def _softgru_init(key, input_size, hidden_size):
    kx, kh = jax.random.split(key)
    return {
        "wx": jax.random.normal(kx, (input_size, 3 * hidden_size)) / input_size**0.5,
        "wh": jax.random.normal(kh, (hidden_size, 3 * hidden_size)) / hidden_size**0.5,
        "b": jax.numpy.zeros(3 * hidden_size),
    }


def _softgru_step(params, h, x):
    xr, xz, xn = jax.numpy.split(x @ params["wx"] + params["b"], 3)
    hr, hz, hn = jax.numpy.split(h @ params["wh"], 3)
    r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
    return (1 - z) * jax.nn.soft_sign(xn + r * hn) + z * h


USER_CELL = "user_softgru"
seqpar.register_cell(USER_CELL, init=_softgru_init, step=_softgru_step)

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

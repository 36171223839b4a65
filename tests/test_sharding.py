"""Data parallelism on a 4-device CPU mesh: same numbers as one device, the table split by rows."""

from __future__ import annotations

import copy
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_cells import REQUIRED_METHOD_FIELDS

from seqpar.methods import METHODS
from seqpar.optim import OPTIMIZERS
from seqpar.records.writer import new_run_dir
from seqpar.spec import SpecError, validate_spec
from seqpar.train.loop import build_experiment, init_state, make_train_step
from seqpar.train.runner import run_experiment

# Every registered optimizer with its defaults; `sgd` (no momentum) is stateless, an empty
# optimizer-state pytree, which once crashed the sharded row gather.
OPTIMIZER_SPECS = {name: {"type": name, "lr": 1e-2} for name in OPTIMIZERS.names()}


def _methods(optimizer: dict) -> list[dict]:
    """Every registered method (drawn from the registry: a new one is tested here unasked), plus the
    variants whose extra state is row-sharded too: a parallel method with a frozen table (its
    gradient buffers) and DEER with a warm-start cache (one solution per training sequence)."""
    methods = [{"type": name, "optimizer": optimizer, **REQUIRED_METHOD_FIELDS.get(name, {})} for name in METHODS.names()]
    return [
        *methods,
        {"type": "parallel", "label": "freeze", "freeze_every": 2, "optimizer": optimizer},
        {"type": "deer", "label": "deer-warm", "jacobian": "diagonal", "warm_start": "previous", "optimizer": optimizer},
    ]


def _spec(tiny_spec, devices, strata=4, optimizer=OPTIMIZER_SPECS["adam"]):
    tiny_spec["methods"] = _methods(optimizer)
    tiny_spec["train"].update(devices=devices, sample_strata=strata, steps=6, batch_size=8)
    return validate_spec(tiny_spec)


def _method(spec, label):
    return next(m for m in spec.methods if m.display_label == label)


def _run(spec, tmp_path, name):
    return run_experiment(spec, new_run_dir(tmp_path, name))


def test_four_devices_give_the_one_device_numbers(tiny_spec, tmp_path):
    assert len(jax.devices()) >= 4, "conftest sets four CPU devices"
    one = _run(_spec(copy.deepcopy(tiny_spec), 1), tmp_path, "one")
    four = _run(_spec(copy.deepcopy(tiny_spec), 4), tmp_path, "four")
    for a, b in zip(one["runs"], four["runs"], strict=True):
        assert a["status"] == b["status"] == "completed", (a["label"], a.get("error"), b.get("error"))
        assert a["mesh"] == {"data": 1} and b["mesh"] == {"data": 4}
        for key in ("rollout_loss_test", "rollout_loss_train", "objective"):
            np.testing.assert_allclose(b["final"][key], a["final"][key], rtol=1e-5, atol=1e-6, err_msg=f"{a['label']} {key}")


@functools.cache
def _two_steps(optimizer: str, devices: int) -> dict[str, float]:
    """Objective after two steps of every method that keeps per-row state (the sharded table and
    its optimizer state), with `optimizer` for the model and the table, on `devices` devices."""
    from conftest import TINY

    spec = _spec(copy.deepcopy(TINY), devices, optimizer=OPTIMIZER_SPECS[optimizer])
    exp = build_experiment(spec)
    out = {}
    with jax.set_mesh(exp.mesh):
        for cfg in spec.methods:
            method = cfg.build(exp.model, exp.task)
            if not method.row_state_keys:
                continue  # replicated state: nothing optimizer-specific is sharded (every method runs on 4 devices above)
            state = init_state(exp, method)
            step = jax.jit(make_train_step(method, exp.train_key, 16, 8, exp.strata))
            for i in range(2):  # the second step applies a frozen table's accumulated gradient
                state, metrics = step(state, exp.train, jnp.int32(i))
            out[cfg.display_label] = float(metrics["objective"])
    return out


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZER_SPECS))
def test_every_optimizer_trains_the_row_sharded_state_on_four_devices(optimizer):
    """sgd's state is an empty pytree, which the sharded row gather once indexed into (IndexError);
    every optimizer must step the table on a mesh exactly as on one device."""
    got, ref = _two_steps(optimizer, 4), _two_steps(optimizer, 1)
    assert got, "some registered method keeps per-row state"
    for label, value in got.items():
        assert np.isfinite(value), (optimizer, label)
        np.testing.assert_allclose(value, ref[label], rtol=1e-5, atol=1e-6, err_msg=f"{optimizer} {label} on 4 devices")


@pytest.mark.parametrize("devices", [1, 2, 4])
def test_row_gather_and_scatter_pass_an_empty_state_through(devices):
    from jax.sharding import Mesh

    from seqpar.sharding import AXIS, put_rows, shard_rows, take_rows

    mesh = Mesh(np.asarray(jax.devices()[:devices]), (AXIS,))
    rows = shard_rows({"a": np.arange(16.0)}, mesh)
    idx = jnp.arange(0, 16, 2)

    @jax.jit
    def roundtrip(tree, empty):
        plus_one = jax.tree.map(lambda a: a + 1, take_rows(tree, idx))
        return take_rows(empty, idx), put_rows(empty, idx, take_rows(empty, idx)), put_rows(tree, idx, plus_one)

    with jax.set_mesh(mesh):
        taken, put, tree = roundtrip(rows, ())
    assert taken == () and put == ()
    np.testing.assert_array_equal(np.asarray(tree["a"]), np.arange(16.0) + (np.arange(16) % 2 == 0))


def test_each_device_holds_a_quarter_of_the_table(tiny_spec):
    spec = _spec(tiny_spec, 4)
    exp = build_experiment(spec)
    method = _method(spec, "freeze").build(exp.model, exp.task)  # table, optimizer state and buffers
    state = init_state(exp, method)
    for key in ("table", "table_opt_state", "grad_sum", "grad_count"):
        for leaf in jax.tree.leaves(state[key]):
            shards = leaf.addressable_shards
            assert len(shards) == 4
            assert sorted(s.index[0].start for s in shards) == [0, 4, 8, 12]  # contiguous rows per device
            assert all(s.data.shape[0] == leaf.shape[0] // 4 for s in shards)
    for leaf in jax.tree.leaves(state["params"]):  # parameters are replicated
        assert leaf.sharding.is_fully_replicated
    deer = _method(spec, "deer-warm").build(exp.model, exp.task)
    guess = init_state(exp, deer)["guess"]
    assert sorted(s.index[0].start for s in guess.addressable_shards) == [0, 4, 8, 12]


def test_per_device_table_bytes_fall_as_devices_are_added(tiny_spec, tmp_path):
    per_device = {}
    for d in (1, 2, 4):
        spec = _spec(copy.deepcopy(tiny_spec), d)
        spec = spec.model_copy(update={"methods": [_method(spec, "parallel")]})
        run = _run(spec, tmp_path, f"d{d}")["runs"][0]
        assert run["status"] == "completed"
        per_device[d] = max(run["row_state_bytes_per_device"].values())
        assert len(run["row_state_bytes_per_device"]) == d
    assert per_device[1] == 2 * per_device[2] == 4 * per_device[4]


def test_the_parallel_step_moves_no_table_rows_between_devices(tiny_spec):
    spec = _spec(tiny_spec, 4)
    exp = build_experiment(spec)
    method = _method(spec, "parallel").build(exp.model, exp.task)
    state = init_state(exp, method)
    step = jax.jit(make_train_step(method, exp.train_key, 16, 8, exp.strata))
    with jax.set_mesh(exp.mesh):
        hlo = step.lower(state, exp.train, jnp.int32(0)).compile().as_text()
    assert hlo is not None
    assert "all-to-all" not in hlo and "all-gather" not in hlo
    table_shape = "f32[{},{},{}]".format(*state["table"].shape)
    collectives = [line for line in hlo.splitlines() if re.search(r"= .*(all-reduce|collective-permute|reduce-scatter)\(", line)]
    assert collectives, "parameter gradients must be reduced across devices"
    assert not any(table_shape in line for line in collectives)


@pytest.mark.parametrize(
    "train, key",
    [
        ({"devices": 3}, "train.devices: must divide task.train_sequences=16"),
        ({"devices": 2, "sample_strata": 3}, "train.sample_strata: must divide task.train_sequences=16"),
        ({"devices": 4, "sample_strata": 2}, "train.sample_strata: must be a multiple of train.devices=4"),
        ({"devices": 0}, "train.devices"),
    ],
)
def test_bad_device_layouts_name_the_key(tiny_spec, train, key):
    tiny_spec["train"].update(train)
    with pytest.raises(SpecError, match=re.escape(key)):
        validate_spec(tiny_spec)

"""Data parallelism on a 4-device CPU mesh: same numbers as one device, the table split by rows."""

from __future__ import annotations

import copy
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqpar.records.writer import new_run_dir
from seqpar.spec import SpecError, validate_spec
from seqpar.train.loop import build_experiment, init_state, make_train_step
from seqpar.train.runner import run_experiment

METHODS = [
    {"type": "bptt", "optimizer": {"type": "adam", "lr": 1e-2}},
    {"type": "truncated_bptt", "window": 3, "optimizer": {"type": "adam", "lr": 1e-2}},
    {"type": "parallel", "optimizer": {"type": "adam", "lr": 1e-2}},
    {"type": "parallel", "label": "freeze", "freeze_every": 2, "optimizer": {"type": "adam", "lr": 1e-2}},
    # Its warm-start cache (one solution per training sequence) is row state, sharded like the table.
    {"type": "deer", "label": "deer-warm", "jacobian": "diagonal", "warm_start": "previous", "optimizer": {"type": "adam", "lr": 1e-2}},
]


def _spec(tiny_spec, devices, strata=4):
    tiny_spec["methods"] = METHODS
    tiny_spec["train"].update(devices=devices, sample_strata=strata, steps=6, batch_size=8)
    return validate_spec(tiny_spec)


def _run(spec, tmp_path, name):
    return run_experiment(spec, new_run_dir(tmp_path, name))


def test_four_devices_give_the_one_device_numbers(tiny_spec, tmp_path):
    assert len(jax.devices()) >= 4, "conftest sets four CPU devices"
    one = _run(_spec(copy.deepcopy(tiny_spec), 1), tmp_path, "one")
    four = _run(_spec(copy.deepcopy(tiny_spec), 4), tmp_path, "four")
    for a, b in zip(one["runs"], four["runs"], strict=True):
        assert a["status"] == b["status"] == "completed", (a.get("error"), b.get("error"))
        assert a["mesh"] == {"data": 1} and b["mesh"] == {"data": 4}
        for key in ("rollout_loss_test", "rollout_loss_train", "objective"):
            np.testing.assert_allclose(b["final"][key], a["final"][key], rtol=1e-5, atol=1e-6, err_msg=f"{a['label']} {key}")


def test_each_device_holds_a_quarter_of_the_table(tiny_spec):
    spec = _spec(tiny_spec, 4)
    exp = build_experiment(spec)
    method = spec.methods[3].build(exp.model, exp.task)  # freeze: table, optimizer state and buffers
    state = init_state(exp, method)
    for key in ("table", "table_opt_state", "grad_sum", "grad_count"):
        for leaf in jax.tree.leaves(state[key]):
            shards = leaf.addressable_shards
            assert len(shards) == 4
            assert sorted(s.index[0].start for s in shards) == [0, 4, 8, 12]  # contiguous rows per device
            assert all(s.data.shape[0] == leaf.shape[0] // 4 for s in shards)
    for leaf in jax.tree.leaves(state["params"]):  # parameters are replicated
        assert leaf.sharding.is_fully_replicated
    deer = spec.methods[4].build(exp.model, exp.task)
    guess = init_state(exp, deer)["guess"]
    assert sorted(s.index[0].start for s in guess.addressable_shards) == [0, 4, 8, 12]


def test_per_device_table_bytes_fall_as_devices_are_added(tiny_spec, tmp_path):
    per_device = {}
    for d in (1, 2, 4):
        spec = _spec(copy.deepcopy(tiny_spec), d)
        spec = spec.model_copy(update={"methods": spec.methods[2:3]})
        run = _run(spec, tmp_path, f"d{d}")["runs"][0]
        assert run["status"] == "completed"
        per_device[d] = max(run["row_state_bytes_per_device"].values())
        assert len(run["row_state_bytes_per_device"]) == d
    assert per_device[1] == 2 * per_device[2] == 4 * per_device[4]


def test_the_parallel_step_moves_no_table_rows_between_devices(tiny_spec):
    spec = _spec(tiny_spec, 4)
    exp = build_experiment(spec)
    method = spec.methods[2].build(exp.model, exp.task)
    state = init_state(exp, method)
    step = jax.jit(make_train_step(method, exp.train_key, 16, 8, exp.strata))
    with jax.set_mesh(exp.mesh):
        hlo = step.lower(state, exp.train, jnp.int32(0)).compile().as_text()
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

"""Sweeps: grid expansion, `--set` before expansion, bad sweeps exit 2 with nothing written, a failing point does not stop the rest."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from seqpar.cli import app
from seqpar.records.layout import SWEEP_INDEX, SWEEP_SPEC
from seqpar.spec import SpecError, load_spec
from seqpar.sweep.execute import run_sweep, status_counts
from seqpar.sweep.plan import load_plan

runner = CliRunner()


@pytest.fixture
def sweep_spec(tiny_spec):
    tiny_spec["sweep"] = {"task.length": [8, 16, 32], "seed": [0, 1]}
    return tiny_spec


def test_grid_size_order_and_point_specs(sweep_spec, write_spec):
    plan = load_plan(write_spec(sweep_spec))
    assert plan.is_sweep and plan.axes == {"task.length": [8, 16, 32], "seed": [0, 1]}
    assert len(plan.points) == 6
    # itertools.product order: the last key varies fastest
    assert [p.values for p in plan.points[:3]] == [
        {"task.length": 8, "seed": 0},
        {"task.length": 8, "seed": 1},
        {"task.length": 16, "seed": 0},
    ]
    assert [(p.spec.task.length, p.spec.seed) for p in plan.points] == [(8, 0), (8, 1), (16, 0), (16, 1), (32, 0), (32, 1)]
    assert plan.points[3].dirname == "003_task.length=16_seed=1"
    assert len({p.dirname for p in plan.points}) == 6


def test_nested_sweep_mapping_and_method_keys(tiny_spec, write_spec):
    tiny_spec["sweep"] = {"task": {"lag": [1, 3]}, "methods.1.consistency_weight": [0.1, 10]}
    plan = load_plan(write_spec(tiny_spec))
    assert list(plan.axes) == ["task.lag", "methods.1.consistency_weight"]
    assert [(p.spec.task.lag, p.spec.methods[1].consistency_weight) for p in plan.points] == [(1, 0.1), (1, 10), (3, 0.1), (3, 10)]


def test_set_applies_before_expansion(sweep_spec, write_spec):
    path = write_spec(sweep_spec)
    plan = load_plan(path, ["model.hidden=4"])  # a plain key: every point inherits it
    assert len(plan.points) == 6 and {p.spec.model.hidden for p in plan.points} == {4}
    plan = load_plan(path, ["sweep.seed=[5, 6, 7]"])  # the sweep itself can be overridden
    assert len(plan.points) == 9 and {p.spec.seed for p in plan.points} == {5, 6, 7}
    plan = load_plan(path, ["task.length=12"])  # a swept key set on the command line is pinned, not swept
    assert plan.pinned == {"task.length": 12} and list(plan.axes) == ["seed"]
    assert [(p.spec.task.length, p.spec.seed) for p in plan.points] == [(12, 0), (12, 1)]


def test_plain_spec_is_a_one_point_plan_and_load_spec_refuses_a_sweep(sweep_spec, write_spec):
    plain = {k: v for k, v in sweep_spec.items() if k != "sweep"}
    plan = load_plan(write_spec(plain, "plain.yaml"))
    assert not plan.is_sweep and len(plan.points) == 1 and plan.points[0].values == {}
    with pytest.raises(SpecError, match="sweep"):
        load_spec(write_spec(sweep_spec))


@pytest.mark.parametrize(
    "sweep, named",
    [
        ({"task.lenght": [8, 16]}, "sweep: task.lenght: unknown key; did you mean 'length'"),
        ({"methods.7.consistency_weight": [1.0]}, "methods.7"),
        ({"model.hidden": 8}, "sweep: model.hidden: expected a non-empty list"),
        ({"model.hidden": []}, "sweep: model.hidden: expected a non-empty list"),
        ({"task.lag": [2, 9]}, "sweep: task.lag: must be smaller than length=8"),  # only point 1 is bad
        ({"model.hidden": [8, -1]}, "sweep: model.hidden"),
        ({"task bad": [1]}, "'task bad' is not a dotted key"),
        ({"task": [1], "task.length": [8]}, "overlaps"),
        ([1, 2], "sweep: must be a mapping"),
    ],
)
def test_bad_sweep_exits_2_naming_the_key_and_writes_nothing(tiny_spec, write_spec, tmp_path, sweep, named):
    tiny_spec["sweep"] = sweep
    out = tmp_path / "out"
    res = runner.invoke(app, ["run", str(write_spec(tiny_spec)), "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert named in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()
    assert runner.invoke(app, ["validate", str(write_spec(tiny_spec))]).exit_code == 2


def test_invalid_sweep_key_from_set_exits_2(sweep_spec, write_spec, tmp_path):
    res = runner.invoke(app, ["run", str(write_spec(sweep_spec)), "--set", "sweep.model.hiden=[4]", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "sweep: model.hiden" in res.stderr and not (tmp_path / "o").exists()


def test_dry_run_lists_points_and_writes_nothing(sweep_spec, write_spec, tmp_path):
    res = runner.invoke(app, ["run", str(write_spec(sweep_spec)), "--dry-run", "--results-root", str(tmp_path / "results")])
    assert res.exit_code == 0, res.output
    assert "6 point(s)" in res.stdout and "005_task.length=32_seed=1" in res.stdout
    assert not (tmp_path / "results").exists()
    res = runner.invoke(app, ["validate", str(write_spec(sweep_spec))])
    assert res.exit_code == 0 and "sweep of 6 point(s)" in res.stdout


def _fake_summary(spec, status="completed"):
    return {
        "status": status,
        "runs": [{"label": m.display_label, "status": "diverged" if spec.seed == 1 else status} for m in spec.methods],
    }


def test_a_failing_point_is_recorded_and_the_sweep_goes_on(sweep_spec, write_spec, tmp_path):
    plan = load_plan(write_spec(sweep_spec))
    ran = []

    def run_point(spec, point_dir):
        ran.append(point_dir.name)
        if spec.task.length == 16 and spec.seed == 0:
            raise RuntimeError("boom")
        return _fake_summary(spec)

    index = run_sweep(plan, tmp_path / "sw", run_point)
    assert len(ran) == 6 and index["status"] == "failed"
    on_disk = json.loads((tmp_path / "sw" / SWEEP_INDEX).read_text())
    assert [p["status"] for p in on_disk["points"]] == ["completed", "completed", "failed", "completed", "completed", "completed"]
    assert on_disk["points"][2]["error"] == "RuntimeError: boom"
    assert on_disk["axes"] == {"task.length": [8, 16, 32], "seed": [0, 1]}
    assert status_counts(on_disk) == {"completed": 2, "diverged": 3, "failed": 1}
    assert "sweep" in (tmp_path / "sw" / SWEEP_SPEC).read_text()  # the spec as run, re-runnable


def test_interrupt_stops_the_sweep_and_keeps_finished_points(sweep_spec, write_spec, tmp_path):
    plan = load_plan(write_spec(sweep_spec))

    def run_point(spec, point_dir):
        if spec.task.length == 16:
            raise KeyboardInterrupt
        return _fake_summary(spec)

    index = run_sweep(plan, tmp_path / "sw", run_point)
    assert index["status"] == "interrupted"
    assert [p["status"] for p in index["points"]] == ["completed", "completed", "interrupted", "pending", "pending", "pending"]


def test_resume_reruns_only_unfinished_points(sweep_spec, write_spec, tmp_path):
    plan = load_plan(write_spec(sweep_spec))

    def interrupted_at_16(spec, point_dir):
        if spec.task.length == 16:
            raise KeyboardInterrupt
        return _fake_summary(spec)

    run_sweep(plan, tmp_path / "sw", interrupted_at_16)
    ran = []
    index = run_sweep(plan, tmp_path / "sw", lambda spec, d: ran.append(d.name) or _fake_summary(spec), resume=True)
    assert ran == [p.dirname for p in plan.points[2:]] and index["status"] == "completed"
    # sweep.yaml reproduces the same grid
    assert [p.values for p in load_plan(tmp_path / "sw" / SWEEP_SPEC).points] == [p.values for p in plan.points]


def test_cli_resume_of_a_sweep_directory_finishes_its_unfinished_points(tiny_spec, write_spec, tmp_path):
    tiny_spec["methods"] = tiny_spec["methods"][:1]
    tiny_spec["train"].update(steps=2, eval_every=2)
    tiny_spec["sweep"] = {"seed": [0, 1]}
    out = tmp_path / "sw"
    assert runner.invoke(app, ["run", str(write_spec(tiny_spec)), "--out", str(out), "--quiet"]).exit_code == 0
    first = json.loads((out / SWEEP_INDEX).read_text())
    finished = out / first["points"][0]["dir"] / "summary.json"
    before = finished.read_bytes()
    # Pretend the sweep was killed during its second point.
    second = out / first["points"][1]["dir"]
    for f in second.iterdir():
        f.unlink()
    first["points"][1]["status"] = "interrupted"
    (out / SWEEP_INDEX).write_text(json.dumps(first))

    res = runner.invoke(app, ["run", "--resume", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    index = json.loads((out / SWEEP_INDEX).read_text())
    assert [p["status"] for p in index["points"]] == ["completed", "completed"]
    assert finished.read_bytes() == before  # a finished point is left as it was
    assert json.loads((second / "summary.json").read_text())["runs"][0]["status"] == "completed"


def _tree(path):
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_resume_of_a_sweep_whose_spec_was_edited_is_refused_naming_the_key(sweep_spec, write_spec, tmp_path):
    plan = load_plan(write_spec(sweep_spec))
    sw = tmp_path / "sw"
    run_sweep(plan, sw, lambda spec, d: _fake_summary(spec), shard=(0, 2))  # half the points ran, the rest are pending
    text = (sw / SWEEP_SPEC).read_text()
    assert "steps: 6" in text
    (sw / SWEEP_SPEC).write_text(text.replace("steps: 6", "steps: 4"))  # edited during the sweep
    before = _tree(sw)
    res = runner.invoke(app, ["run", "--resume", str(sw), "--quiet"])
    assert res.exit_code == 2, res.output
    msg = res.output.strip().splitlines()[-1]
    assert msg.startswith("error: ") and "train.steps" in msg and SWEEP_SPEC in msg, msg
    assert _tree(sw) == before  # no point ran with the edited spec, nothing was written


def test_a_sweep_resumed_on_changed_data_is_refused_naming_the_file(tiny_spec, write_spec, tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, x=rng.integers(0, 4, (40, 6)), y=rng.integers(0, 2, 40))
    tiny_spec["task"] = {"type": "dataset", "path": str(data)}
    tiny_spec["sweep"] = {"seed": [0, 1]}
    plan = load_plan(write_spec(tiny_spec))
    sw = tmp_path / "sw"
    index = run_sweep(plan, sw, lambda spec, d: _fake_summary(spec), shard=(0, 2))
    assert index["identity"]["data"]["task.path"]["path"] == str(data.resolve())
    np.savez(data, x=rng.integers(0, 4, (40, 6)), y=rng.integers(0, 2, 40))  # same shapes, other data
    before = _tree(sw)
    res = runner.invoke(app, ["run", "--resume", str(sw), "--quiet"])
    assert res.exit_code == 2, res.output
    msg = res.output.strip().splitlines()[-1]
    assert msg.startswith("error: ") and str(data.resolve()) in msg and "changed since the sweep started" in msg, msg
    assert _tree(sw) == before

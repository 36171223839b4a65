"""A tiny real sweep with `--plot --tensorboard`: PNGs of the expected pixel size, readable event files."""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from seqpar.analysis.plots import figure_size
from seqpar.cli import app

runner = CliRunner()


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory) -> Path:
    """Two lengths, BPTT and embedding-parallel, 6 steps: one real `seqpar run` (compiles dominate its ~10 s)."""
    from conftest import TINY

    spec = json.loads(json.dumps(TINY))
    spec["sweep"] = {"task.length": [8, 16]}
    root = tmp_path_factory.mktemp("sweep")
    (root / "spec.yaml").write_text(json.dumps(spec))  # JSON is YAML
    args = ["run", str(root / "spec.yaml"), "--out", str(root / "out"), "--plot", "--quiet"]
    tb = ["--tensorboard"] if importlib.util.find_spec("tensorboardX") else []  # optional: seqpar[tb]
    res = runner.invoke(app, args + tb)
    assert res.exit_code == 0, res.output
    return root / "out"


def test_sweep_writes_index_point_records_and_table(tiny_sweep):
    index = json.loads((tiny_sweep / "sweep.json").read_text())
    assert index["status"] == "completed" and [p["dir"] for p in index["points"]] == ["000_task.length=8", "001_task.length=16"]
    for p in index["points"]:
        summary = json.loads((tiny_sweep / p["dir"] / "summary.json").read_text())
        assert summary["spec"]["task"]["length"] == p["values"]["task.length"] and summary["status"] == "completed"
    res = runner.invoke(app, ["compare", str(tiny_sweep), "--format", "json"])
    rows = json.loads(res.stdout)
    assert [(r["method"], r["settings"], r["runs"]) for r in rows] == [
        ("bptt", {"task.length": 8}, 1),
        ("parallel", {"task.length": 8}, 1),
        ("bptt", {"task.length": 16}, 1),
        ("parallel", {"task.length": 16}, 1),
    ]


EXPECTED = {
    "rollout_vs_steps.png": figure_size(2),  # one panel per length
    "rollout_vs_seconds.png": figure_size(2),
    "objective_vs_rollout.png": figure_size(2),
    "scaling_vs_length.png": figure_size(2, ncols_max=2),
    "final_vs_task.length.png": figure_size(1),
    "lle_vs_parallel.png": (550, 440),  # the parallel runs' table distance against the LLE: one panel
    "pareto_seconds.png": figure_size(2),  # one panel per length (seqpar.analysis.cost_plots)
    "pareto_depth.png": figure_size(2),
}


def test_run_plot_writes_every_figure_at_its_size(tiny_sweep):
    plots = tiny_sweep / "plots"
    assert sorted(p.name for p in plots.iterdir()) == sorted(EXPECTED)
    for name, size in EXPECTED.items():
        assert (plots / name).stat().st_size > 10_000, name  # drawn, not blank
        assert png_size(plots / name) == size, name
    assert figure_size(2) == (1000, 450) and figure_size(1) == (700, 450)


def test_plot_command_on_one_run_and_a_corrupt_one(tiny_sweep, tmp_path):
    point = tiny_sweep / "001_task.length=16"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "summary.json").write_text("{ truncated")
    res = runner.invoke(app, ["plot", str(point), str(bad), "--out", str(tmp_path / "figs")])
    assert res.exit_code == 0, res.output
    assert "bad" in res.stderr and "not valid JSON" in res.stderr
    names = sorted(p.name for p in (tmp_path / "figs").iterdir())
    # One run: no scaling, no sweep axis; its parallel method's table against the LLE; its methods' costs are still points.
    assert names == [
        "lle_vs_parallel.png",
        "objective_vs_rollout.png",
        "pareto_depth.png",
        "pareto_seconds.png",
        "rollout_vs_seconds.png",
        "rollout_vs_steps.png",
    ]
    assert png_size(tmp_path / "figs" / "rollout_vs_steps.png") == figure_size(1)
    res = runner.invoke(app, ["plot", str(point), "--out", str(tmp_path / "f2"), "--metric", "nope"])
    assert res.exit_code == 2 and "--metric nope" in res.stderr and not (tmp_path / "f2").exists()


def _events(path: Path) -> list:
    from tensorboardX.proto.event_pb2 import Event  # pyright: ignore[reportAttributeAccessIssue] - generated protobuf module

    data, out, i = path.read_bytes(), [], 0
    while i < len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
        (n,) = struct.unpack("<Q", data[i : i + 8])
        out.append(Event.FromString(data[i + 12 : i + 12 + n]))
        i += 12 + n + 4
    return out


def test_tensorboard_event_files_hold_the_metrics(tiny_sweep):
    pytest.importorskip("tensorboardX")
    point = tiny_sweep / "000_task.length=8"
    lines = [json.loads(x) for x in (point / "metrics.jsonl").read_text().splitlines()]
    for index, label in enumerate(("bptt", "parallel")):
        (events_file,) = (point / "tensorboard" / f"{index}-{label}").glob("events.out.tfevents.*")
        scalars = {(v.tag, e.step): v.simple_value for e in _events(events_file) for v in e.summary.value if v.HasField("simple_value")}
        want = {(line["step"], line["rollout_loss_test"]) for line in lines if line["method"] == label and "rollout_loss_test" in line}
        assert {(step, round(v, 5)) for (tag, step), v in scalars.items() if tag == "rollout/loss_test"} == {
            (s, round(v, 5)) for s, v in want
        }
        assert any(tag.startswith("train/") for tag, _ in scalars)


def test_seed_bands_and_a_swept_method_key_from_hand_made_records(tmp_path):
    from test_compare import make_run, method_record

    from seqpar.analysis.plots import plot_records

    for seed in (0, 1, 2):
        for w in (0.1, 1.0, 10.0):
            make_run(
                tmp_path / "runs",
                f"w{w}s{seed}",
                seed,
                [method_record("bptt", 0.1 + seed / 10), method_record("parallel", w + seed / 10, objective=w / 10)],
                weight=w,
            )
    files, warnings = plot_records([tmp_path / "runs"], tmp_path / "figs")
    assert warnings == []
    sizes = {f.name: png_size(f) for f in files}
    assert sizes == {
        "rollout_vs_steps.png": figure_size(3),  # one panel per weight; bptt drawn in each
        "rollout_vs_seconds.png": figure_size(3),
        "objective_vs_rollout.png": figure_size(3),
        "final_vs_method.consistency_weight.png": figure_size(1),
        "final_by_method.png": figure_size(1),  # several seeds: every run a point
    }
    assert figure_size(3) == (1500, 450) and figure_size(4) == (1500, 810)

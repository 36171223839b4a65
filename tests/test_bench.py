"""`seqpar bench` on a tiny grid: a valid JSON record and a PNG (correctness only, no timing asserts)."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from seqpar.bench import grid as B
from seqpar.bench.measure import run_bench
from seqpar.cli import app

TINY = ["--lengths", "8", "--batch", "2", "--unrolls", "1,2", "--min-time", "0", "--repeats", "2", "--overhead-rounds", "1"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "run"
    result = CliRunner().invoke(app, ["bench", *TINY, "--overhead-steps", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_tiny_grid_writes_json_and_png(tiny_run):
    out, output = tiny_run
    rec = json.loads((out / "bench.json").read_text())
    assert rec["schema"] == B.SCHEMA
    assert rec["machine"]["cpu_model"] and rec["machine"]["device"]
    assert rec["matmul_peak"]["flops_per_s"] > 0
    # Every method at every (length, batch): the default spec's bptt and parallel.
    points = {(p["label"], p["length"], p["batch"]) for p in rec["points"]}
    assert points == {("bptt", 8, 2), ("parallel", 8, 2)}
    for p in rec["points"]:
        s = p["step_ms"]
        assert s["n"] >= 2 and 0 < s["min"] <= s["median"] <= s["max"]
        assert p["compile_s"] > 0 and p["flops"] > 0 and p["peak_rss_mb"] > 0
        assert p["speedup_vs_bptt"] > 0
        if p["method"] == "bptt":
            # Tuned over the unrolls; the winner is the fastest candidate, reported.
            assert [c["unroll"] for c in p["unroll_candidates"]] == [1, 2]
            assert p["unroll"] in (1, 2) and p["step_ms"]["median"] == min(c["step_ms"] for c in p["unroll_candidates"])
            assert p["table_bytes"] == 0 and p["flops_exact"] is False  # a scan: XLA counts the body once
        else:
            assert p["table_bytes"] == 2 * p["length"] * 64 * 4  # (sequences, length, hidden) float32
            assert p["flops_exact"] is True and 0 < p["peak_fraction"]
    assert [o["method"] for o in rec["loop_overhead"]] == ["bptt", "parallel"]
    assert all(o["ratio"] > 0 and math.isfinite(o["ratio"]) for o in rec["loop_overhead"])
    png = (out / "bench.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert "speedup" in output and "bench.json" in output


def test_spec_methods_are_measured_with_a_bptt_baseline_added(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "name: only-parallel\n"
        "task: {type: delayed_recall, length: 8, lag: 2, vocab: 4}\n"
        "model: {cell: elman, hidden: 8}\n"
        "train: {steps: 1, batch_size: 1}\n"
        "methods:\n  - {type: parallel, label: par, optimizer: {type: sgd, lr: 0.1}}\n"
    )
    s = B.load_bench_spec(spec)
    assert [m.type for m in B.with_baseline(s)] == ["bptt", "parallel"]
    grid = B.Grid(lengths=(8,), batches=(1,), hidden=8, unrolls=(1,), min_repeats=1, min_time_s=0, warmup=1)
    rec = run_bench(s, grid)
    assert [(p["label"], p["cell"], p["hidden"]) for p in rec["points"]] == [("bptt", "elman", 8), ("par", "elman", 8)]


def test_newton_methods_report_iterations_and_a_point_over_memory_is_skipped(tmp_path, monkeypatch):
    from seqpar.train import memory

    spec = tmp_path / "s.yaml"
    spec.write_text(
        "name: newton\n"
        "task: {type: delayed_recall, length: 8, lag: 2, vocab: 4}\n"
        "model: {cell: gru, hidden: 8}\n"
        "train: {steps: 1, batch_size: 1}\n"
        "methods:\n"
        "  - {type: deer, label: quasi-warm, jacobian: diagonal, gradient: diagonal, warm_start: previous,"
        " optimizer: {type: sgd, lr: 0.1}}\n"
        "  - {type: deer, label: full, optimizer: {type: sgd, lr: 0.1}}\n"
    )
    s = B.load_bench_spec(spec)
    grid = B.Grid(lengths=(8,), batches=(2,), hidden=32, unrolls=(1,), min_repeats=1, min_time_s=0, warmup=1)
    # A machine with room for the diagonal method, not for full Jacobians at this point.
    point = B.point_spec(s, "gru", 8, 2, 32, 2)
    quasi, full = (memory.estimate(point.model_copy(update={"methods": [m]})).total for m in s.methods)
    assert quasi < full
    monkeypatch.setattr(memory, "available", lambda: ((quasi + full) // 2, "test limit"))
    rec = run_bench(s, grid)
    assert [p["label"] for p in rec["points"]] == ["bptt", "quasi-warm"]
    assert rec["points"][1]["step_metrics"]["newton_iters_mean"] >= 1
    assert [(k["label"], k["length"], k["batch"]) for k in rec["skipped"]] == [("full", 8, 2)]
    assert "exceeds" in rec["skipped"][0]["reason"] and "method buffers" in rec["skipped"][0]["reason"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lengths", "8,x"], "comma-separated integers"),
        (["--batch", "0"], "positive integers"),
        (["--cells", "gru,nope"], "unknown cell"),
        (["--batch", "4", "--sequences", "2"], "at least the largest batch"),
        (["--overhead-rounds", "0"], "rounds >= 1"),
        (["--lengths", "2"], "lag: must be smaller than length=2"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, args, message):
    result = CliRunner().invoke(app, ["bench", *args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "o").exists()


def test_an_unknown_or_missing_peer_is_one_line(monkeypatch):
    import sys

    from seqpar.bench.peer import available

    assert available("jax") == "--peer jax: expected one of torch"
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    assert available("torch") == "--peer torch needs PyTorch: pip install 'seqpar[peer]' (or pip install torch)"


def test_the_torch_peer_times_an_nn_gru_step_at_the_point():
    pytest.importorskip("torch")
    from types import SimpleNamespace
    from typing import Any, cast

    from seqpar.bench.peer import torch_row

    grid = cast(Any, SimpleNamespace(warmup=1, max_repeats=3, min_repeats=2, min_time_s=0.0))
    row = torch_row(4, 8, 6, 2, grid, lambda t: {"n": len(t), "median": sorted(t)[len(t) // 2] * 1e3})
    assert (row["peer"], row["cell"], row["length"], row["batch"], row["hidden"]) == ("torch", "gru", 6, 2, 8)
    assert row["step_ms"]["n"] >= 2 and row["step_ms"]["median"] > 0

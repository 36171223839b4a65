"""`seqpar bench --profile`: the embedding-parallel step in stages (correctness only, no timing asserts)."""

from __future__ import annotations

import json

import jax
from typer.testing import CliRunner

from seqpar.bench import grid as B
from seqpar.bench.measure import run_bench
from seqpar.cli import app
from seqpar.train.loop import build_experiment

STAGES = ["dense products", "objective", "+ gradient", "+ parameter optimizer", "+ table optimizer", "whole step"]


def _spec(tmp_path, cell="gru", layers=1):
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "name: prof\n"
        "task: {type: delayed_recall, length: 8, lag: 2, vocab: 4}\n"
        f"model: {{cell: {cell}, hidden: 8, layers: {layers}}}\n"
        "train: {steps: 1, batch_size: 1}\n"
        "methods:\n  - {type: parallel, label: emb, optimizer: {type: adam, lr: 0.01}}\n"
    )
    return spec


def test_profile_times_every_stage_and_counts_the_dense_products_flops(tmp_path, monkeypatch):
    from seqpar.bench import measure

    monkeypatch.setattr(measure, "matmul_peak", lambda: {"flops_per_s": 1e9, "per_size": {}, "dtype": "float32"})  # not timed here
    grid = B.Grid(lengths=(8,), batches=(2,), hidden=8, unrolls=(1,), min_repeats=2, min_time_s=0, warmup=1, profile=True)
    rec = run_bench(B.load_bench_spec(_spec(tmp_path)), grid)
    rows = rec["profile"]
    assert [r["stage"] for r in rows] == STAGES and {r["label"] for r in rows} == {"emb"}
    # The last stage is the bench's own row for the method, copied in.
    (step,) = [p for p in rec["points"] if p["label"] == "emb"]
    assert rows[-1]["step_ms"] == step["step_ms"] and rows[-1]["flops"] == step["flops"]
    for r in rows[:-1]:
        assert r["step_ms"]["n"] >= 2 and r["fusions"] >= 1 and r["peak_fraction"] > 0
    # Dense products: three products of 2·M·k·n FLOPs per 2-D parameter at M = B·T rows,
    # counted here from the model's parameters, independently of the profiler.
    spec = B.load_bench_spec(_spec(tmp_path))
    params = build_experiment(B.point_spec(spec, "gru", 8, 2, 8, 2)).init_params
    m = 2 * 8
    expected = sum(3 * 2 * m * w.shape[0] * w.shape[1] for w in jax.tree.leaves(params) if w.ndim == 2)
    assert rows[0]["flops"] == expected
    # Gradients add work; the cumulative stages never get cheaper in FLOPs.
    flops = [r["flops"] for r in rows[1:5]]
    assert flops == sorted(flops)
    assert rows[1]["added_ms"] is None and all(r["added_ms"] is not None for r in rows[2:])


def test_cli_profile_prints_the_stage_table_and_a_spec_without_parallel_has_none(tmp_path):
    out = tmp_path / "run"
    args = ["--lengths", "8", "--batch", "2", "--unrolls", "1", "--min-time", "0", "--repeats", "2", "--overhead-steps", "0"]
    result = CliRunner().invoke(app, ["bench", str(_spec(tmp_path, "paragru", 2)), *args, "--profile", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "in stages" in result.output and "+ table optimizer" in result.output
    assert [r["stage"] for r in json.loads((out / "bench.json").read_text())["profile"]] == STAGES
    bptt_only = tmp_path / "b.yaml"
    bptt_only.write_text(_spec(tmp_path).read_text().replace("{type: parallel, label: emb,", "{type: bptt,"))
    result = CliRunner().invoke(app, ["bench", str(bptt_only), *args, "--profile", "--out", str(tmp_path / "run2")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run2" / "bench.json").read_text())["profile"] == []

"""`seqpar compare` on hand-made run records: known numbers in, known mean/std/n out; bad records skipped."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from seqpar.analysis import compare as cmp
from seqpar.cli import app

runner = CliRunner()
BASELINE = math.log(4)


def method_record(label, loss, status="completed", steps_to_target=None, step_ms=1.0, peak_mb=2.0, objective=None):
    return {
        "method": label,
        "label": label,
        "status": status,
        "final": {
            "rollout_loss_test": loss,
            "rollout_loss_train": loss,
            "rollout_acc_test": 0.5,
            "objective": objective if objective is not None else loss,
        },
        "baseline_loss": BASELINE,
        "steps_to_target": steps_to_target,
        "seconds_to_target": None if steps_to_target is None else steps_to_target / 10,
        "step_time_ms": step_ms,
        "peak_memory_mb": peak_mb,
        "diagnostics": {},
    }


def make_run(
    root: Path, name: str, seed: int, records: list[dict], length: int = 8, weight: float = 1.0, target: float | None = 0.5
) -> Path:
    """A run directory as seqpar.train.runner writes it (summary.json + metrics.jsonl + spec.yaml)."""
    d = root / name
    d.mkdir(parents=True)
    spec = {
        "name": "hand",
        "seed": seed,
        "task": {"type": "delayed_recall", "length": length, "lag": 2, "vocab": 4},
        "model": {"cell": "gru", "hidden": 8},
        "train": {"steps": 20, "batch_size": 8, "eval_every": 10, "target_loss": target},
        "methods": [{"type": "bptt", "label": None, "unroll": 1}, {"type": "parallel", "label": None, "consistency_weight": weight}],
    }
    summary = {
        "schema_version": 1,
        "name": "hand",
        "seed": seed,
        "status": "completed",
        "spec": spec,
        "runs": records,
        "task": {"baseline_loss": BASELINE, "baseline_formula": "ln(vocab)", "loss": "cross-entropy"},
    }
    (d / "summary.json").write_text(json.dumps(summary))
    (d / "spec.yaml").write_text("name: hand\n")
    lines = []
    for r in records:
        loss = r["final"]["rollout_loss_test"]
        for step, (x, o) in enumerate([(BASELINE, 2.0), (loss, r["final"]["objective"])]):
            lines.append(
                {
                    "method": r["label"],
                    "step": step * 10,
                    "wall_s": step * 0.5,
                    "rollout_loss_test": x,
                    "rollout_loss_train": x,
                    "objective": o,
                }
            )
    (d / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return d


@pytest.fixture
def three_seeds(tmp_path):
    """bptt losses 1, 2, 3 over seeds 0-2; parallel 0.5, 0.7 and one diverged (no final loss)."""
    for seed, (b, p, pstatus) in enumerate([(1.0, 0.5, "completed"), (2.0, 0.7, "completed"), (3.0, None, "diverged")]):
        make_run(
            tmp_path,
            f"run{seed}",
            seed,
            [
                method_record("bptt", b, steps_to_target=10 * (seed + 1), step_ms=[1.0, 3.0, 2.0][seed], peak_mb=[5.0, 7.0, 6.0][seed]),
                method_record("parallel", p, status=pstatus),
            ],
        )
    return tmp_path


def test_mean_std_n_and_status_counts_from_known_numbers(three_seeds):
    rows, keys, warnings = cmp.compare([three_seeds])
    assert warnings == [] and keys == []  # only the seed differs: one row per method
    by = {r["method"]: r for r in rows}
    b, p = by["bptt"], by["parallel"]
    assert b["mean"] == pytest.approx(2.0, abs=1e-12)
    assert b["std"] == pytest.approx(1.0, abs=1e-12)  # sample std (n - 1)
    assert (b["n"], b["runs"], b["seeds"]) == (3, 3, [0, 1, 2])
    assert b["baseline_frac"] == pytest.approx(2.0 / BASELINE, abs=1e-12)
    assert (b["steps_to_target"], b["reached"]) == (20, 3)  # median of 10, 20, 30
    assert b["step_time_ms"] == 2.0 and b["peak_memory_mb"] == 7.0  # median step time, max peak
    assert b["status"] == {"completed": 3}
    # The diverged run has no final loss: not in n, but in the status counts.
    assert p["mean"] == pytest.approx(0.6, abs=1e-12)
    assert p["std"] == pytest.approx(math.sqrt(0.02), abs=1e-12)
    assert (p["n"], p["runs"]) == (2, 3)
    assert p["status"] == {"completed": 2, "diverged": 1}
    assert (p["steps_to_target"], p["reached"]) == (None, 0)


def test_groups_by_the_differing_setting_and_by_option(tmp_path):
    for seed in (0, 1):
        for length in (8, 16):
            make_run(
                tmp_path,
                f"L{length}s{seed}",
                seed,
                [method_record("bptt", length / 8 + seed), method_record("parallel", 9.0)],
                length=length,
            )
    rows, keys, _ = cmp.compare([tmp_path])
    assert keys == ["task.length"]
    assert [(r["method"], r["settings"]["task.length"], r["mean"], r["n"]) for r in rows] == [
        ("bptt", 8, 1.5, 2),
        ("parallel", 8, 9.0, 2),
        ("bptt", 16, 2.5, 2),
        ("parallel", 16, 9.0, 2),
    ]
    rows, keys, _ = cmp.compare([tmp_path], by=["seed"])
    assert keys == ["seed"] and [(r["settings"]["seed"], r["mean"]) for r in rows if r["method"] == "bptt"] == [(0, 1.5), (1, 2.5)]
    rows, _, _ = cmp.compare([tmp_path], sort="-metric")
    assert [r["mean"] for r in rows] == [9.0, 9.0, 2.5, 1.5]
    # --by with a spec-style method key, and --diff-only dropping a column equal in every row
    rows, keys, _ = cmp.compare([tmp_path], by=["methods.1.consistency_weight,task.length"])
    assert keys == ["method.consistency_weight", "task.length"]
    _, keys, _ = cmp.compare([tmp_path], by=["model.hidden", "task.length"], diff_only=True)
    assert keys == ["task.length"]


def test_method_settings_differ_only_within_a_method(tmp_path):
    make_run(tmp_path, "w1", 0, [method_record("bptt", 1.0), method_record("parallel", 1.0)], weight=1.0)
    make_run(tmp_path, "w10", 0, [method_record("bptt", 1.0), method_record("parallel", 2.0)], weight=10.0)
    rows, keys, _ = cmp.compare([tmp_path])
    assert keys == ["method.consistency_weight"]
    assert [(r["method"], r["settings"]["method.consistency_weight"], r["n"]) for r in rows] == [
        ("parallel", 1.0, 1),
        ("parallel", 10.0, 1),
        ("bptt", None, 2),
    ]


def test_corrupt_and_partial_run_dirs_are_skipped_with_a_warning(three_seeds):
    (three_seeds / "run1" / "summary.json").write_text('{"runs": [')  # truncated mid-write
    (three_seeds / "half").mkdir()
    (three_seeds / "half" / "spec.yaml").write_text("name: x\n")  # killed before its summary
    (three_seeds / "other").mkdir()
    (three_seeds / "other" / "summary.json").write_text('["not", "a", "summary"]')
    rows, _, warnings = cmp.compare([three_seeds])
    assert {r["method"]: r["n"] for r in rows} == {"bptt": 2, "parallel": 1}
    assert {r["method"]: r["mean"] for r in rows}["bptt"] == pytest.approx(2.0)  # seeds 0 and 2: 1 and 3
    text = "\n".join(warnings)
    for name in ("run1", "half", "other"):
        assert str(three_seeds / name) in text
    res = runner.invoke(app, ["compare", str(three_seeds)])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output and "run1" in res.stderr and "not valid JSON" in res.stderr


def test_output_formats(three_seeds):
    res = runner.invoke(app, ["compare", str(three_seeds / "run*"), "--format", "csv"])
    assert res.exit_code == 0, res.output
    table = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [r["method"] for r in table] == ["bptt", "parallel"]
    assert float(table[0]["rollout_loss_test_mean"]) == pytest.approx(2.0) and table[0]["n"] == "3"
    assert table[1]["status"] == "completed:2;diverged:1"
    res = runner.invoke(app, ["compare", str(three_seeds), "--format", "json", "--metric", "rollout_acc_test"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data[0]["metric"] == "rollout_acc_test" and data[0]["mean"] == pytest.approx(0.5)
    res = runner.invoke(app, ["compare", str(three_seeds), "--format", "markdown"])
    lines = res.stdout.splitlines()
    assert lines[0].startswith("| method |") and "2.0000 ± 1.0000" in res.stdout and len(lines) == 4
    res = runner.invoke(app, ["compare", str(three_seeds)])
    assert res.exit_code == 0 and "2.0000 ± 1.0000" in res.stdout and "1 diverged" in res.stdout


@pytest.mark.parametrize(
    "args, named",
    [
        (["--metric", "nope"], "--metric nope"),
        (["--by", "task.lenth"], "task.length"),
        (["--sort", "bogus"], "--sort bogus"),
        (["--format", "xml"], "--format xml"),
    ],
)
def test_bad_arguments_exit_2_naming_them(three_seeds, args, named):
    res = runner.invoke(app, ["compare", str(three_seeds), *args])
    assert res.exit_code == 2 and named in res.stderr and "Traceback" not in res.output


def test_nothing_to_compare_exits_2(tmp_path):
    res = runner.invoke(app, ["compare", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "missing" in res.stderr


def test_val_and_test_are_both_shown(tmp_path):
    for seed, (test, val) in enumerate([(1.0, 1.5), (3.0, 2.5)]):
        rec = method_record("bptt", test)
        rec["final"]["rollout_loss_val"] = val
        make_run(tmp_path, f"run{seed}", seed, [rec])
    rows, keys, _ = cmp.compare([tmp_path])
    assert (rows[0]["mean"], rows[0]["val_mean"]) == (pytest.approx(2.0), pytest.approx(2.0))
    assert rows[0]["val_std"] == pytest.approx(math.sqrt(0.5))
    md = cmp.markdown(rows, keys)
    assert "| rollout_loss_test (mean ± std) | rollout_loss_val (mean ± std) |" in md and "2.0000 ± 0.7071" in md
    assert "steps to target (val)" in md


def test_a_one_layer_record_groups_as_layers_1(tmp_path):
    """A one-layer record leaves `model.layers` out (its hash predates stacks); compare reads it as 1."""
    one = make_run(tmp_path, "one", 0, [method_record("bptt", 1.0)])
    two = make_run(tmp_path, "two", 0, [method_record("bptt", 2.0)])
    summary = json.loads((two / "summary.json").read_text())
    summary["spec"]["model"]["layers"] = 2
    (two / "summary.json").write_text(json.dumps(summary))
    rows, keys, _ = cmp.compare([one, two])
    assert keys == ["model.layers"]
    assert [(r["settings"]["model.layers"], r["mean"]) for r in rows] == [(1, 1.0), (2, 2.0)]

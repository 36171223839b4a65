"""Findings that cannot disagree: every generated block and figure matches the committed store, a hand
edit fails the check, the store is slim and holds no machine path, and the statistics follow the rules."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from seqpar.analysis.findings import MARKER, generate
from seqpar.analysis.findings.stats import MIN_SLOPE_POINTS, seeds_cell, slope, spearman
from seqpar.analysis.findings.store import CURVE_POINTS, STORE, add_runs, slim_metrics, store_bytes

ROOT = Path(__file__).resolve().parents[1]


def test_every_generated_block_and_figure_matches_the_store():
    """What CI checks: `seqpar findings --check` would change nothing."""
    report = generate(check=True)
    assert report.problems == [], "\n".join(report.problems)


def test_the_check_reads_no_jax_and_the_command_exits_0():
    probe = "import sys; from seqpar.analysis.findings import generate; generate(check=True); print('jax' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stdout + done.stderr
    done = subprocess.run([sys.executable, "-m", "seqpar", "findings", "--check"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def _copy_pages(tmp: Path) -> Path:
    root = tmp / "repo"
    (root / "docs").mkdir(parents=True)
    shutil.copy(ROOT / "README.md", root / "README.md")
    shutil.copytree(ROOT / "docs", root / "docs", dirs_exist_ok=True)
    return root


def test_a_hand_edited_number_fails_the_check_and_a_regeneration_restores_it(tmp_path):
    root = _copy_pages(tmp_path)
    page, m = next(
        (p, m)
        for p in sorted((root / "docs" / "findings").glob("*.md"))
        for m in MARKER.finditer(p.read_text())
        if re.search(r"\d\.\d", m.group(2))
    )
    text = page.read_text()
    body = m.group(2)
    edited = re.sub(r"(\d)\.(\d)", lambda d: f"{d.group(1)}.{(int(d.group(2)) + 1) % 10}", body, count=1)
    page.write_text(text.replace(body, edited))
    report = generate(check=True, root=root)
    assert any(p.startswith(f"docs/findings/{page.name}: {m.group(1)}: differs") for p in report.problems), report.problems
    generate(check=False, root=root)
    assert page.read_text() == text


def test_a_marker_naming_no_block_is_reported(tmp_path):
    root = _copy_pages(tmp_path)
    page = root / "docs" / "findings" / "lag.md"
    page.write_text(page.read_text() + "\n<!-- findings:lag.nothing -->\n<!-- /findings:lag.nothing -->\n")
    report = generate(check=True, root=root)
    assert any("findings block 'lag.nothing' is not defined" in p for p in report.problems)


def test_the_store_is_small_and_holds_no_machine_path():
    size = store_bytes()
    assert 0 < size < 20e6, size  # committed with the code: megabytes, not a results tree
    for path in STORE.rglob("*.json*"):
        text = path.read_text()
        assert not re.search(r'"/(?:home|root|tmp|work|Users)/', text), path
        assert '"env"' not in text and '"traceback"' not in text, path


def test_a_study_is_added_slim(tmp_path, tiny_spec):
    import seqpar

    tiny_spec["train"].update(steps=60, eval_every=1, log_every=1)
    record = seqpar.run(tiny_spec, out=tmp_path / "runs" / "a")
    info = add_runs("tiny", [tmp_path / "runs"], ["seqpar run tiny.yaml"], store=tmp_path / "store")
    assert info["sources"][0]["runs"] == 1
    summary = json.loads(next((tmp_path / "store" / "tiny").rglob("summary.json")).read_text())
    assert "env" not in summary and all("traceback" not in r for r in summary["runs"])
    assert str(tmp_path) not in json.dumps(summary)
    lines = [json.loads(x) for x in next((tmp_path / "store" / "tiny").rglob("metrics.jsonl")).read_text().splitlines()]
    for label in ("bptt", "parallel"):
        evals = [ln for ln in lines if ln["method"] == label and "rollout_loss_val" in ln]
        assert len(evals) == CURVE_POINTS and evals[-1]["step"] == 60
    assert record.methods[0].rollout_loss_test is not None


def test_slim_metrics_keeps_every_evaluation_while_there_are_few():
    lines = [{"method": "m", "step": s, "rollout_loss_val": 1.0 / s} for s in range(1, 11)]
    assert slim_metrics(lines) == [{**ln, "rollout_loss_val": float(f"{ln['rollout_loss_val']:.7g}")} for ln in lines]


def test_seeds_that_disagree_are_shown_one_by_one_never_as_a_mean():
    assert seeds_cell([0.01, 0.012, 0.011]) == "**0.011**"  # all used their memory: the mean
    bimodal = seeds_cell([0.02, 0.9, 1.3])
    assert bimodal.startswith("median 0.90; 2 of 3 below") and "0.020 · 0.90 · 1.3" in bimodal
    assert "±" not in bimodal
    assert seeds_cell([1.2, 2.5]).startswith("median")  # both above the baseline, but far apart
    assert seeds_cell([0.02, None]) == "**0.020** (1 diverged)"


def test_no_slope_through_fewer_points_and_ranks_are_spearmans():
    assert slope([1, 2, 4], [10, 20, 40]) is None
    assert MIN_SLOPE_POINTS == 4 and slope([1, 2, 3, 4], [3, 5, 7, 9]) == pytest.approx(2.0)
    assert spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    assert spearman([1, 2], [1, 2]) is None


def test_a_study_the_store_lacks_is_said_once_per_page_and_shows_nothing(tmp_path):
    """An empty store (a fork before its first study) builds pages that say each study was not measured:
    once per page and study, no figure linked, no number; stale figures are flagged, then removed."""
    root = _copy_pages(tmp_path)
    empty = tmp_path / "store"
    empty.mkdir()
    (root / "docs" / "img" / "verdict.json").write_text("{}\n")
    assert any("docs/img/verdict.png: drawn from a study" in p for p in generate(check=True, root=root, store=empty).problems)
    report = generate(check=False, root=root, store=empty)
    assert report.problems == [], report.problems
    assert not (root / "docs" / "img" / "verdict.json").exists()
    page = (root / "docs" / "findings" / "verdict.md").read_text()
    assert page.count("holds no record of the study `verdict`") == 1
    assert "img/verdict.png" not in page and not re.search(r"\d\.\d", "".join(m.group(2) for m in MARKER.finditer(page)))
    assert "not measured" in (root / "README.md").read_text()
    assert generate(check=True, root=root, store=empty).problems == []


def test_a_record_of_a_narrowed_sweep_says_how_many_points_it_holds(tmp_path):
    """A study run at fewer points than its spec declares (`--set sweep=...`) says so in its provenance."""
    from seqpar.analysis.findings.common import coverage

    (tmp_path / "shooting" / "part").mkdir(parents=True)
    (tmp_path / "shooting" / "study.json").write_text(
        json.dumps({"study": "shooting", "commands": [], "sources": [{"name": "part", "runs": 4}]})
    )
    (tmp_path / "shooting" / "part" / "sweep.json").write_text(json.dumps({"source": "experiments/shooting.yaml"}))
    assert "holds 4 of the 9 sweep points `experiments/shooting.yaml` declares" in coverage(tmp_path, "shooting")
    (tmp_path / "shooting" / "study.json").write_text(
        json.dumps({"study": "shooting", "commands": [], "sources": [{"name": "part", "runs": 9}]})
    )
    assert coverage(tmp_path, "shooting") == ""

"""The Python API as docs/api.md shows it: every python block of the page runs, in order, on a tiny spec."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import TINY

import seqpar
from seqpar.spec import SpecError

PAGE = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


def test_the_api_page_runs_as_a_notebook(tmp_path, monkeypatch, capsys):
    pytest.importorskip("pandas")
    tiny = copy.deepcopy(TINY)
    tiny.update(name="recall-quickstart", methods=tiny["methods"][:1])  # bptt only: one compile per run
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "quickstart.yaml").write_text(yaml.safe_dump(tiny, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks(PAGE.read_text())
    assert len(blocks) >= 6
    ns: dict = {}
    for block in blocks:
        exec(compile(block, str(PAGE), "exec"), ns)  # noqa: S102 - the page's own examples
    printed = capsys.readouterr().out
    assert "--set trian.steps=50: trian: unknown key; did you mean 'train'?" in printed
    (row,) = ns["rows"]
    assert row["method"] == "bptt" and row["n"] == 2 and row["seeds"] == [0, 1]
    assert list(ns["df"]["n"]) == [2]
    # The typed record is the summary's fields, as written.
    summary = json.loads((tmp_path / "results/notebook/seed1/summary.json").read_text())
    rec = ns["records"][1]
    assert rec.status == summary["status"] == "completed" and rec.seed == 1
    (m,) = rec.methods
    r = summary["runs"][0]
    assert (m.label, m.steps_done, m.rollout_loss_test, m.step_time_ms) == ("bptt", 100, r["final"]["rollout_loss_test"], r["step_time_ms"])
    assert (m.lle, m.sequential_depth, m.stop_reason) == (r["final"]["lle"], r["sequential_depth"], r["stop_reason"])
    assert m.stop_reason == "steps" and m.sequential_depth == 2 * TINY["task"]["length"] and m.lle is not None
    assert ns["small"].spec["train"]["steps"] == 30


def test_run_refuses_a_bad_spec_before_writing(tmp_path):
    bad = copy.deepcopy(TINY)
    bad["methods"][0]["type"] = "dear"
    with pytest.raises(SpecError, match=r"^spec: methods.0.type: unknown type 'dear' \(did you mean 'deer'\?\)"):
        seqpar.run(bad, out=tmp_path / "never")
    with pytest.raises(SpecError, match=r"sweep: seqpar.run runs one spec"):
        seqpar.run({**TINY, "sweep": {"seed": [0, 1]}}, out=tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_load_names_a_missing_method(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    summary = {
        "name": "x",
        "seed": 0,
        "status": "completed",
        "spec": TINY,
        "runs": [{"label": "bptt", "method": "bptt", "status": "completed"}],
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    rec = seqpar.load(run_dir)
    assert rec.method("bptt").rollout_loss_test is None
    with pytest.raises(KeyError, match="no method labelled 'deer'.*methods: bptt"):
        rec.method("deer")

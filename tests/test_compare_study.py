"""`seqpar compare` on a study directory keeps trials and final re-runs apart; numbers are rounded, never cut."""

from __future__ import annotations

from test_compare import make_run, method_record
from typer.testing import CliRunner

from seqpar.analysis import compare as cmp
from seqpar.cli import app
from seqpar.records.layout import FINAL, TRIALS, TUNE_SPEC

runner = CliRunner()


def _study(tmp_path):
    """A study directory as `seqpar tune` lays it out: the best trial (seed 0) and its final re-runs (seeds 0, 1)."""
    study = tmp_path / "study"
    study.mkdir()
    (study / TUNE_SPEC).write_text("name: hand\n")
    make_run(study / TRIALS / "0-bptt", "0003", 0, [method_record("bptt", 0.002388)])
    make_run(study / FINAL, "seed=0", 0, [method_record("bptt", 0.002388)])
    make_run(study / FINAL, "seed=1", 1, [method_record("bptt", 0.0025)])
    return study


def test_a_trial_and_its_final_rerun_with_the_same_seed_stay_apart(tmp_path):
    study = _study(tmp_path)
    for by in (None, ["task.length"]):
        rows, keys, _ = cmp.compare([str(study)], by=by)
        assert keys[0] == "study"
        got = sorted((r["settings"]["study"], r["n"], r["seeds"]) for r in rows)
        assert got == [("final", 2, [0, 1]), ("trial", 1, [0])]


def test_small_means_keep_four_significant_figures_and_are_not_cut(tmp_path, monkeypatch):
    import seqpar.cli

    study = _study(tmp_path)
    monkeypatch.setattr(seqpar.cli.console, "width", 60)  # narrower than the table
    res = runner.invoke(app, ["compare", str(study)])
    assert res.exit_code == 0, res.output
    assert "0.002444 ± 0.000079" in res.output  # the final rows: mean of 0.002388 and 0.0025
    assert "0.002388" in res.output and "…" not in res.output
    assert "0.00172" in res.output  # the loss over the baseline ln 4, to 3 significant figures
    assert "1 completed" in res.output and "2 completed" in res.output  # the last column: not cropped
    assert cmp.sig(2.0, cmp.decimals(2.0)) == "2.0000" and cmp.sig(123.456, cmp.decimals(123.456)) == "123.4560"
    assert cmp.sig(2.5e-15, cmp.decimals(2.5e-15)) == "2.500e-15"

"""Figures a reader can trust at a glance: coinciding curves stay visible and say so, panels share
one y-scale, log axes carry plain ticks, legends list only what ran. Hand-made records, no JAX."""

from __future__ import annotations

import json
import shutil

import pytest
from test_compare import make_run, method_record

import seqpar.analysis.plots as plots
from seqpar.analysis.compare import group_keys
from seqpar.records.reader import load, results


@pytest.fixture
def saved(monkeypatch):
    """Every figure `plots` saves, with its legend labels."""
    figures: dict[str, tuple] = {}
    original = plots._save

    def record(fig, path, handles, labels):
        figures[path.name] = (fig, list(labels), list(handles))
        return original(fig, path, handles, labels)

    monkeypatch.setattr(plots, "_save", record)
    return figures


def _records(root, *, lengths=(8, 32), losses=None):
    """Two task lengths x two seeds; bptt and deer identical (the same gradients), parallel apart."""
    for length in lengths:
        for seed in (0, 1):
            base = (losses or {}).get(length, 0.5) + 0.01 * seed
            make_run(
                root,
                f"L{length}-s{seed}",
                seed,
                [method_record("bptt", base), method_record("deer", base), method_record("parallel", 3 * base, objective=0.1)],
                length=length,
            )
    return root


def _figures(root, out, names):
    """Only the figures a test looks at (each figure costs a second or more to draw)."""
    out.mkdir(parents=True, exist_ok=True)
    loaded = load([str(root)])
    rs = results(loaded.runs)
    keys = [k for k in group_keys(rs, loaded.swept, None) if k != "seed"]
    for x in ("step", "wall_s"):
        if f"rollout_vs_{x}.png" in names:
            plots.plot_curves(rs, plots._panels(rs, keys), x, out / f"rollout_vs_{x}.png", "curves")
    if "final_by_method.png" in names:
        plots.plot_final_by_method(rs, keys, "rollout_loss_test", out / "final_by_method.png")


def test_identical_curves_are_both_drawn_and_named_in_the_legend(tmp_path, saved):
    root = _records(tmp_path / "runs")
    for line_file in root.glob("*/metrics.jsonl"):  # deer takes longer per step: the same curve vs steps, not vs seconds
        text = line_file.read_text().splitlines()
        lines = [json.loads(t) for t in text]
        for ln in lines:
            ln["wall_s"] *= 2 if ln["method"] == "deer" else 1
        line_file.write_text("".join(json.dumps(ln) + "\n" for ln in lines))
    _figures(root, tmp_path / "png", ["rollout_vs_step.png", "rollout_vs_wall_s.png"])
    _, labels_s, _ = saved["rollout_vs_wall_s.png"]
    assert not any("identical" in label for label in labels_s), labels_s
    fig, labels, handles = saved["rollout_vs_step.png"]
    assert "deer (mean of 2 runs, band min-max) [identical to bptt, drawn over it]" in labels
    assert not any("parallel" in label and "identical" in label for label in labels)
    by_label = {label.split(" ")[0]: h for label, h in zip(labels, handles, strict=True)}
    # Told apart by dashes and markers, not only colour: the one drawn over the other shows through.
    assert by_label["bptt"].get_linestyle() != by_label["deer"].get_linestyle()
    assert by_label["bptt"].get_marker() != by_label["deer"].get_marker()


def test_panels_of_a_figure_share_one_y_scale(tmp_path, saved):
    # Losses that span decades in one panel only: every panel goes log together, on one range.
    _figures(_records(tmp_path / "runs", losses={8: 0.5, 32: 0.001}), tmp_path / "png", ["rollout_vs_step.png", "final_by_method.png"])
    for name in ("rollout_vs_step.png", "final_by_method.png"):
        fig, _, _ = saved[name]
        axes = [ax for ax in fig.axes if ax.get_visible()]
        assert len(axes) == 2, name
        assert {ax.get_yscale() for ax in axes} == {"log"}, name
        assert axes[0].get_ylim() == axes[1].get_ylim(), name
        labels = [t.get_text() for t in axes[0].yaxis.get_ticklabels() if t.get_text()]
        assert labels and all("10^" not in t and "times" not in t for t in labels), labels


def test_final_by_method_mentions_the_trained_baseline_only_when_it_ran(tmp_path, saved):
    _figures(_records(tmp_path / "a"), tmp_path / "png-a", ["final_by_method.png"])
    _, labels, _ = saved["final_by_method.png"]
    assert labels == ["memoryless baseline (formula)"]
    for seed in (0, 1):
        make_run(tmp_path / "b", f"s{seed}", seed, [method_record("baseline_trained", 1.3), method_record("bptt", 0.5 + seed / 10)])
    _figures(tmp_path / "b", tmp_path / "png-b", ["final_by_method.png"])
    _, labels, _ = saved["final_by_method.png"]
    assert labels == ["memoryless baseline (formula); baseline_trained: the same model with its recurrence cut"]


def test_the_legend_says_when_panels_hold_different_numbers_of_runs(tmp_path, saved):
    # Two seeds at length 8, one at length 32: the one legend must not claim two runs everywhere.
    root = _records(tmp_path / "runs")
    for d in root.glob("L32-s1*"):
        shutil.rmtree(d)
    _figures(root, tmp_path / "png", ["rollout_vs_step.png"])
    _, labels, _ = saved["rollout_vs_step.png"]
    assert "parallel (mean of 1-2 runs per panel, band min-max)" in labels, labels

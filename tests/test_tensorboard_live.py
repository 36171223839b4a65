"""TensorBoard event files are written while a run goes (a crash keeps the curves so far), one folder per method index."""

from __future__ import annotations

import pytest
from test_plots import _events

from seqpar.spec import validate_spec
from seqpar.train.runner import run_experiment


def _scalars(folder) -> set[tuple[str, int]]:
    return {(v.tag, e.step) for f in sorted(folder.glob("events.out.tfevents.*")) for e in _events(f) for v in e.summary.value}


def test_live_event_files_per_method_index_even_for_labels_that_sanitise_alike(tiny_spec, tmp_path):
    pytest.importorskip("tensorboardX")
    tiny_spec["methods"] = [
        {"type": "bptt", "label": "bptt a", "optimizer": {"type": "adam", "lr": 1e-2}},
        {"type": "bptt", "label": "bptt_a", "optimizer": {"type": "adam", "lr": 3e-2}},
    ]
    tiny_spec["train"].update(steps=4, eval_every=2)
    seen_during_run: list[set] = []

    class Peek:
        """A tracker after the TensorBoard one: what is on disk when the loop logs a line."""

        def write(self, record):
            if record["method"] == "bptt a" and record["step"] == 2:
                seen_during_run.append(_scalars(tmp_path / "run" / "tensorboard" / "0-bptt-a"))

        def close(self):
            pass

    summary = run_experiment(validate_spec(tiny_spec), tmp_path / "run", tensorboard=True, trackers=[Peek()])
    assert summary["status"] == "completed"
    (during,) = seen_during_run
    assert {("rollout/loss_test", 0), ("rollout/loss_test", 2)} <= during  # flushed as logged, before the run ended
    folders = sorted(p.name for p in (tmp_path / "run" / "tensorboard").iterdir())
    assert folders == ["0-bptt-a", "1-bptt_a"]  # two methods, two folders: neither overwrites the other
    for name in folders:
        assert {s for t, s in _scalars(tmp_path / "run" / "tensorboard" / name) if t == "rollout/loss_test"} == {0, 2, 4}


def test_the_tb_extra_installs_the_viewer_the_docs_run(tiny_spec, tmp_path):
    """docs/tracking.md: `pip install 'seqpar[tb]'`, then `tensorboard --logdir RUN_DIR`: the extra must bring the command."""
    import re
    import shutil
    import subprocess
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    extra = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["tb"]
    assert {re.split(r"[<>=\[ ;]", r, maxsplit=1)[0] for r in extra} >= {"tensorboardX", "tensorboard"}
    assert "tensorboard --logdir" in (root / "docs" / "tracking.md").read_text()
    pytest.importorskip("tensorboard")
    command = shutil.which("tensorboard")
    assert command is not None
    assert subprocess.run([command, "--version"], capture_output=True, text=True, timeout=120).returncode == 0
    # The viewer's own reader sees the scalars the live writer wrote.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tiny_spec["methods"] = tiny_spec["methods"][:1]
    run_experiment(validate_spec(tiny_spec), tmp_path / "run", tensorboard=True)
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard" / "0-bptt"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("rollout/loss_test")] == [0, 3, 6]

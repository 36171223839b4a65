"""What a person watching a run sees: the bar between log points, a resume's starting step, Ctrl-C twice."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

from seqpar.spec import validate_spec
from seqpar.train.loop import NullProgress
from seqpar.train.runner import FIRST_INTERRUPT, SECOND_INTERRUPT, run_experiment


class Seen(NullProgress):
    def __init__(self):
        self.updates: list[tuple[str, int, dict]] = []
        self.advances: list[tuple[str, int]] = []
        self.resumes: list[tuple[str, int]] = []

    def update(self, label, step, record):
        self.updates.append((label, step, dict(record)))

    def advance(self, label, step):
        self.advances.append((label, step))

    def resume(self, label, step):
        self.resumes.append((label, step))


class StopAt(Seen):
    def advance(self, label, step):
        super().advance(label, step)
        if step == 9:
            raise KeyboardInterrupt  # as Ctrl-C arrives where no handler runs: the newest checkpoint is step 8


def test_the_bar_moves_between_log_points_and_a_resume_names_its_step(tiny_spec, tmp_path, monkeypatch):
    import seqpar.train.loop as loop_mod

    monkeypatch.setattr(loop_mod, "ADVANCE_EVERY_S", 0.0)  # every step, so the count is exact
    tiny_spec["methods"] = tiny_spec["methods"][:1]
    tiny_spec["train"].update(steps=12, eval_every=6, checkpoint_every=4)
    spec, out = validate_spec(tiny_spec), tmp_path / "run"
    first = StopAt()
    assert run_experiment(spec, out, first)["status"] == "interrupted"
    # Between log points every step is shown (checkpoint steps too); at the log point (6) its line with the metrics.
    assert first.advances == [("bptt", s) for s in (1, 2, 3, 4, 5, 7, 8, 9)]
    assert [s for _, s, _ in first.updates] == [6] and "train_objective" in first.updates[0][2]
    assert first.resumes == []

    seen = Seen()
    summary = run_experiment(spec, out, seen, resume=True)
    assert summary["status"] == "completed"
    assert seen.resumes == [("bptt", 8)]
    assert summary["resumes"][-1]["from_step"] == {"bptt": 8}
    assert seen.advances == [("bptt", s) for s in (9, 10, 11)]
    assert [s for _, s, _ in seen.updates] == [8, 12]


CHILD = textwrap.dedent(
    """
    import time
    from seqpar.train.runner import stop_on_signals
    with stop_on_signals() as stop:
        print("ready", flush=True)
        while not stop():
            time.sleep(0.01)
        print("stopping", flush=True)
        time.sleep(60)  # a long save, say: the second Ctrl-C must not wait for it
    """
)


def test_a_second_interrupt_quits_at_once_and_says_so():
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        assert proc.stdout.readline().strip() == "stopping"
        time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert err == FIRST_INTERRUPT + SECOND_INTERRUPT
    assert "Ctrl-C again to quit at once" in FIRST_INTERRUPT and "quitting now without saving" in SECOND_INTERRUPT

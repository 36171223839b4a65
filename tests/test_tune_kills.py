"""Kill anywhere: a `seqpar tune` with two workers SIGKILLed (launcher and workers at once) at random
moments, at least ten times over one study, and run again each time with the same command. The
study ends with exactly its budget of finished trials per method, each with one run record, and
final re-runs equal to a run of its best.yaml that was never killed."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seqpar.records.layout import SUMMARY

optuna = pytest.importorskip("optuna")
pytestmark = pytest.mark.slow

KILLS = 10
TRIALS = 3


def _spec(tiny_spec) -> dict:
    tiny_spec["task"]["val_sequences"] = 16
    tiny_spec["train"].update(steps=30, eval_every=10, checkpoint_every=5)
    tiny_spec["tune"] = {
        "trials": TRIALS,
        "seeds": [0],
        "sampler": {"type": "random"},
        "space": {
            "bptt": {"optimizer.lr": {"log": [1e-3, 1e-1]}},
            "parallel": {"optimizer.lr": {"log": [1e-3, 1e-1]}, "consistency_weight": {"log": [0.1, 10]}},
        },
    }
    return tiny_spec


def _written(out: Path) -> int:
    """Bytes of the study's own files (not the workers' logs, written at startup): grows with every
    trial asked, record line and checkpoint."""
    if not out.exists():
        return 0
    total = 0
    for f in out.rglob("*"):
        if "workers" in f.relative_to(out).parts:
            continue
        try:
            if f.is_file():
                total += f.stat().st_size
        except FileNotFoundError:  # a transient file (the journal's lock) gone between listing and stat
            continue
    return total


def _finished(out: Path) -> int:
    """Trials finished so far, from the journal (what a kill interrupted)."""
    if not (out / "study.journal").exists():
        return 0
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "study.journal")))
    return sum(t.state.name == "COMPLETE" for s in storage.get_all_studies() for t in storage.get_all_trials(s._study_id))


def test_a_study_killed_ten_times_ends_with_its_budget_and_the_numbers_of_an_unkilled_run(tiny_spec, write_spec, tmp_path):
    spec, out = write_spec(_spec(tiny_spec)), tmp_path / "study"
    cmd = [sys.executable, "-m", "seqpar", "tune", str(spec), "--out", str(out), "--workers", "2", "--quiet"]
    rng, kills, at = random.Random(22), 0, []
    while True:
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        if kills < KILLS:
            # Kills spread over the whole study: the i-th once this life has written something (startup alone
            # is not "anywhere") and about i/10 of the trials are finished (the last ones in the final re-runs),
            # then at a random moment.
            target = min(2 * TRIALS, round(kills * (2 * TRIALS + 1) / KILLS))
            start, deadline = _written(out), time.time() + 300
            while (_written(out) == start or _finished(out) < target) and p.poll() is None and time.time() < deadline:
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 1.5))  # short: on a quiet machine a whole phase takes seconds
            if p.poll() is None:
                at.append(f"{_finished(out)}{'+final' if (out / 'final').exists() else ''}")
                os.killpg(p.pid, signal.SIGKILL)  # the launcher and both workers, mid-whatever
                p.wait()
                kills += 1
                continue
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err.decode()
        break
    assert kills >= KILLS, f"the study finished after {kills} kills"
    print(f"kills: {kills}, trials finished at each kill: {at}")

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "study.journal")))
    index = json.loads((out / "tune.json").read_text())
    for m in index["methods"]:
        trials = optuna.load_study(study_name=m["study"], storage=storage).get_trials()
        done = [t for t in trials if t.state.name == "COMPLETE"]
        assert len(done) == TRIALS and not [t for t in trials if t.state.name == "RUNNING"], m
        assert all(t.user_attrs.get("lost") for t in trials if t.state.name == "FAIL")  # only trials killed with their worker
        dirs = [t.user_attrs["dir"] for t in done]
        assert len(set(dirs)) == TRIALS
        for d in dirs:  # every counted trial has its complete record
            assert json.loads((out / d / SUMMARY).read_text())["status"] == "completed"
        recorded = {str(p.parent.relative_to(out)) for p in (out / "trials").glob(f"*-{m['method']}/*/{SUMMARY}")}
        completed = {d for d in recorded if json.loads((out / d / SUMMARY).read_text())["status"] == "completed"}
        assert completed == set(dirs)  # no completed record that the study does not count
        assert m["trials"]["completed"] == TRIALS and m["trials"]["failed"] == m["trials"]["lost"]
        print(f"{m['method']}: {m['trials']}")

    # The final re-runs equal best.yaml run once, never killed.
    fresh = tmp_path / "fresh"
    rerun = [sys.executable, "-m", "seqpar", "run", str(out / "best.yaml"), "--out", str(fresh), "--quiet"]
    res = subprocess.run(rerun, capture_output=True)
    assert res.returncode == 0, res.stderr.decode()
    finals = sorted((out / "final").glob(f"*/{SUMMARY}"))
    assert finals and len(finals) == len(sorted(fresh.glob(f"*/{SUMMARY}")))
    for f in finals:
        a = json.loads(f.read_text())
        b = json.loads((fresh / f.parent.name / SUMMARY).read_text())
        assert [r["final"]["rollout_loss_test"] for r in a["runs"]] == [r["final"]["rollout_loss_test"] for r in b["runs"]]

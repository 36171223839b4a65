"""`seqpar tune`: the same budget for every method, trials as run records, best.yaml that reproduces, workers, bad blocks."""

from __future__ import annotations

import copy
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from seqpar.cli import app
from seqpar.records.layout import CLAIM, SUMMARY

optuna = pytest.importorskip("optuna")

runner = CliRunner()

SPACE = {
    "bptt": {"optimizer.lr": {"log": [1e-3, 1e-1]}},
    "parallel": {
        "optimizer.lr": {"log": [1e-3, 1e-1]},
        "consistency_weight": {"log": [0.01, 100]},
        "refresh": {"choice": ["none", "rollout", "jacobi"]},
        "refresh_every": {"int": [1, 10], "when": {"refresh": ["rollout", "jacobi"]}},
        "sweeps": {"int": [1, 4], "when": {"refresh": ["jacobi"]}},
    },
}


def _study(tiny_spec, methods=2, trials=4, steps=20, seeds=(0,)) -> dict:
    tiny_spec["methods"] = tiny_spec["methods"][:methods]
    tiny_spec["task"]["val_sequences"] = 16
    tiny_spec["train"].update(steps=steps, eval_every=steps // 2)
    tiny_spec["tune"] = {
        "trials": trials,
        "seeds": list(seeds),
        "sampler": {"type": "tpe", "startup_trials": 2},
        "space": {m["type"]: copy.deepcopy(SPACE[m["type"]]) for m in tiny_spec["methods"]},
    }
    return tiny_spec


def _trials(out: Path, label_dir: str) -> list:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "study.journal")))
    return optuna.load_study(study_name=f"tiny.{label_dir}", storage=storage).get_trials()


def test_tiny_study_gives_every_method_its_trials_and_best_yaml_reproduces_the_numbers(tiny_spec, write_spec, tmp_path):
    out = tmp_path / "study"
    path = write_spec(_study(tiny_spec))
    res = runner.invoke(app, ["tune", str(path), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "4 trials each, 20 steps per trial" in " ".join(res.stdout.split())  # the budget is stated
    index = json.loads((out / "tune.json").read_text())
    for m in index["methods"]:
        c = m["trials"]
        assert c["completed"] + c["pruned"] == 4 and c["failed"] == 0 and c["running"] == 0, m
        assert m["best"] is not None and len(m["final"]) == 1
    for label_dir in ("0-bptt", "1-parallel"):
        trials = _trials(out, label_dir)
        assert sorted(t.number for t in trials) == [0, 1, 2, 3]
        for t in trials:  # every trial is an ordinary run record of its own
            s = json.loads((out / t.user_attrs["dir"] / SUMMARY).read_text())
            assert s["status"] in ("completed", "pruned") and [r["label"] for r in s["runs"]] == [label_dir.split("-", 1)[1]]
    res = runner.invoke(app, ["compare", str(out), "--format", "json"])
    assert res.exit_code == 0 and len(json.loads(res.stdout)) >= 2

    # best.yaml is a plain spec: `seqpar run` reproduces the reported test numbers.
    best = out / "best.yaml"
    assert "tune" not in yaml.safe_load(best.read_text())
    res = runner.invoke(app, ["run", str(best), "--out", str(tmp_path / "again"), "--quiet"])
    assert res.exit_code == 0, res.output
    (again,) = (tmp_path / "again").glob(f"*/{SUMMARY}")
    rerun = {r["label"]: r["final"]["rollout_loss_test"] for r in json.loads(again.read_text())["runs"]}
    for m in index["methods"]:
        assert rerun[m["method"]] == pytest.approx(m["final"][0]["rollout_loss_test"], abs=1e-6)
        assert m["test_mean"] == pytest.approx(m["final"][0]["rollout_loss_test"], abs=1e-12)

    # Running the same command again continues the study: nothing is left to do, nothing is redone.
    before = {p: p.read_bytes() for p in out.glob(f"**/{SUMMARY}")}
    res = runner.invoke(app, ["tune", str(path), "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "continuing" in res.stdout and {p: p.read_bytes() for p in out.glob(f"**/{SUMMARY}")} == before


def test_two_workers_share_one_storage_without_duplicate_or_lost_trials(tiny_spec, write_spec, tmp_path):
    out = tmp_path / "study"
    res = runner.invoke(app, ["tune", str(write_spec(_study(tiny_spec, methods=1, trials=4))), "--out", str(out), "--workers", "2"])
    assert res.exit_code == 0, res.output
    trials = _trials(out, "0-bptt")
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    dirs = [t.user_attrs["dir"] for t in trials]
    assert len(set(dirs)) == 4 and all((out / d / SUMMARY).exists() for d in dirs)
    assert len(list((out / "workers").glob("*.log"))) == 2
    assert {f"bptt #{n}:" for n in range(4)} <= set(" ".join(line.split()[:2]) for line in res.stdout.splitlines() if "#" in line)


def test_a_sigkilled_worker_leaves_its_trial_failed_and_the_study_resumes(tiny_spec, write_spec, tmp_path):
    spec = _study(tiny_spec, methods=1, trials=2)
    path, out = write_spec(spec), tmp_path / "study"
    worker = subprocess.Popen([sys.executable, "-m", "seqpar", "tune", str(path), "--out", str(out), "--quiet"], stdout=subprocess.DEVNULL)
    claim = out / "trials" / "0-bptt" / "0000" / CLAIM  # trial 0 is running: claimed, now compiling (a second or more)
    deadline = time.time() + 120
    while not claim.exists():
        assert time.time() < deadline and worker.poll() is None, "the worker never started trial 0"
        time.sleep(0.01)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    res = runner.invoke(app, ["tune", str(path), "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    states = {t.number: t.state.name for t in _trials(out, "0-bptt")}
    assert states[0] == "FAIL"  # cut off: failed, neither lost nor counted
    assert sorted(s for n, s in states.items() if n) in (["COMPLETE", "COMPLETE"], ["COMPLETE", "PRUNED"], ["PRUNED", "PRUNED"])
    index = json.loads((out / "tune.json").read_text())
    assert index["methods"][0]["trials"] == {**index["methods"][0]["trials"], "failed": 1, "running": 0}


def test_sampling_follows_the_conditionals():
    from seqpar.tune.space import Param, sample

    params = {k: Param.model_validate(v) for k, v in SPACE["parallel"].items()}
    got = sample(params, optuna.trial.FixedTrial({"optimizer.lr": 0.01, "consistency_weight": 1.0, "refresh": "none"}))
    assert got == {"optimizer.lr": 0.01, "consistency_weight": 1.0, "refresh": "none"}
    fixed = {"optimizer.lr": 0.01, "consistency_weight": 1.0, "refresh": "jacobi", "refresh_every": 3, "sweeps": 2}
    assert sample(params, optuna.trial.FixedTrial(fixed)) == fixed


@pytest.mark.parametrize(
    "change, named",
    [
        (lambda t: t.update(trails=3), "tune.trails: unknown key; did you mean 'trials'?"),
        (lambda t: t.update(trials=0), "tune.trials: Input should be greater than 0"),
        (lambda t: t["space"]["bptt"].update({"optimizer.lr": {"float": [0.1, 0.1]}}), "empty range [0.1, 0.1]"),
        (lambda t: t["space"]["bptt"].update({"optimizer.lr": {"log": [0, 0.1]}}), "must be above 0"),
        (lambda t: t["space"]["parallel"].update(refresh={"choice": []}), "choice: expected a non-empty list"),
        (lambda t: t["space"]["parallel"].update(refresh={"chioce": ["none"]}), "refresh.chioce: unknown key; did you mean 'choice'?"),
        (lambda t: t["space"]["bptt"].update(window={"int": [1, 4]}), "tune.space.bptt.window: not a key of method 'bptt'"),
        (lambda t: t["space"]["bptt"].update({"optimizer.lr": {"log": [1e-3, 10.0], "int": [1, 2]}}), "exactly one of"),
        (lambda t: t["space"].update(bpt={"optimizer.lr": {"log": [1e-3, 1e-2]}}), "no method is labelled 'bpt'; did you mean 'bptt'?"),
        (lambda t: t["space"].pop("bptt"), "no search space for method 'bptt'"),
        (lambda t: t["space"]["parallel"].update(sweeps={"int": [1, 4], "when": {"optimizer.lr": [1]}}), "when.optimizer.lr"),
        (lambda t: t["space"]["parallel"].update(consistency_weight={"float": [-1, 1]}), "tune.space.parallel.consistency_weight"),
        (lambda t: t.update(seeds=[0, 0]), "tune.seeds: expected distinct seeds"),
    ],
)
def test_bad_tune_blocks_exit_2_with_one_line_and_write_nothing(tiny_spec, write_spec, tmp_path, change, named):
    spec = _study(tiny_spec)
    change(spec["tune"])
    res = runner.invoke(app, ["tune", str(write_spec(spec)), "--out", str(tmp_path / "study")])
    assert res.exit_code == 2, res.output
    assert named in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "study").exists()


# ----------------------------------------------------------------------------- a shared --storage


def test_studies_in_two_directories_on_one_storage_keep_their_own_trials(tiny_spec, write_spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_spec(_study(tiny_spec, methods=1, trials=2, steps=4))
    for name in ("A", "B"):
        res = runner.invoke(app, ["tune", str(path), "--out", name, "--storage", "sqlite:///s.db", "--quiet"])
        assert res.exit_code == 0, res.output
        assert "continuing" not in res.stdout  # B is a study of its own, not A's continued
    storage = optuna.storages.RDBStorage("sqlite:///s.db")
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
    assert len(names) == 2 and names[0].startswith("tiny.0-bptt@A.") and names[1].startswith("tiny.0-bptt@B.")
    for name in ("A", "B"):
        (method,) = json.loads((tmp_path / name / "tune.json").read_text())["methods"]
        assert method["study"].startswith(f"tiny.0-bptt@{name}.") and method["trials"]["completed"] + method["trials"]["pruned"] == 2
        assert (tmp_path / name / method["best"]["dir"] / SUMMARY).exists()  # its best trial is one of its own records
        assert len(list((tmp_path / name).glob(f"trials/*/*/{SUMMARY}"))) == 2


def test_a_refused_tune_creates_no_storage_file(tiny_spec, write_spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("x")
    res = runner.invoke(app, ["tune", str(write_spec(_study(tiny_spec))), "--out", "full", "--storage", "sqlite:///new.db"])
    assert res.exit_code == 2 and "is not empty and holds no study" in res.stderr, res.output
    assert not (tmp_path / "new.db").exists() and sorted(p.name for p in (tmp_path / "full").iterdir()) == ["notes.txt"]


def test_two_commands_creating_one_storage_at_once_wait_for_each_other(tmp_path, monkeypatch):
    """The loser of the race to create a new database's tables opens the winner's; if it keeps losing, one clear line."""
    from seqpar.tune import study as S

    real, calls = optuna.storages.RDBStorage, []

    def racing(url, *args, **kwargs):
        calls.append(url)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.IntegrityError) UNIQUE constraint failed: alembic_version.version_num")
        return real(url, *args, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert S.storage_for(tmp_path, url) is not None and len(calls) == 3

    def always(url, *args, **kwargs):
        raise RuntimeError("(sqlite3.IntegrityError) UNIQUE constraint failed: alembic_version.version_num")

    monkeypatch.setattr(optuna.storages, "RDBStorage", always)
    monkeypatch.setattr(S.time, "sleep", lambda s: None)
    with pytest.raises(S.StorageError, match="another process kept creating this storage's tables at the same moment"):
        S.storage_for(tmp_path, url)


def test_a_study_continued_on_changed_data_is_refused(tiny_spec, write_spec, tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, x=rng.integers(0, 4, (40, 6)), y=rng.integers(0, 2, 40))
    spec = _study(tiny_spec, methods=1, trials=1, steps=4)
    spec["task"] = {"type": "dataset", "path": str(data)}
    path, out = write_spec(spec), tmp_path / "study"
    assert runner.invoke(app, ["tune", str(path), "--out", str(out), "--quiet"]).exit_code == 0
    np.savez(data, x=rng.integers(0, 4, (40, 6)), y=rng.integers(0, 2, 40))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    res = runner.invoke(app, ["tune", str(path), "--out", str(out), "--quiet"])
    assert res.exit_code == 2, res.output
    assert str(data.resolve()) in res.stderr and "changed since the study started" in res.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

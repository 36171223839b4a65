"""Sweeps over many workers: one claim per point, real worker processes, a SIGKILLed worker, submitit's array path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from seqpar.cli import app
from seqpar.records.layout import CLAIM, METRICS, SUMMARY, SWEEP_INDEX
from seqpar.sweep.claim import Owner, is_live, pid_alive, read_claim, try_claim
from seqpar.sweep.execute import SWEEP_WORKER, new_session, prepare_sweep_dir, rebuild_index
from seqpar.sweep.launch import WorkerJob
from seqpar.sweep.plan import load_plan

runner = CliRunner()


def _sweep(tiny_spec, seeds: int, steps: int = 2) -> dict:
    tiny_spec["methods"] = tiny_spec["methods"][:1]
    tiny_spec["train"].update(steps=steps, eval_every=steps)
    tiny_spec["sweep"] = {"seed": list(range(seeds))}
    return tiny_spec


def _records(out: Path) -> dict[str, list[int]]:
    """Per point directory: the steps of its metrics lines (a point run twice would repeat them)."""
    index = json.loads((out / SWEEP_INDEX).read_text())
    return {p["dir"]: [json.loads(x)["step"] for x in (out / p["dir"] / METRICS).read_text().splitlines()] for p in index["points"]}


def _claim(directory: Path) -> dict:
    info = read_claim(directory)
    assert info is not None, f"no claim in {directory}"
    return info


def test_racing_claims_have_one_winner(tmp_path):
    """Eight threads race for one directory: exactly one claim is granted, and it records its owner."""
    wins, barrier = [], threading.Barrier(8)

    def race(i):
        barrier.wait()
        c = try_claim(tmp_path / "p", Owner("h", 1000 + i, "s"), heartbeat_s=0.05)
        if c is not None:
            wins.append((i, c))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    (i, claim), info = wins[0], read_claim(tmp_path / "p")
    assert info is not None and info["pid"] == 1000 + i and info.get("finished") is None
    time.sleep(0.15)
    assert (tmp_path / "p" / CLAIM).stat().st_mtime > claim.info["started"]  # the heartbeat touches it
    claim.finish("completed", methods={"bptt": "completed"})
    assert _claim(tmp_path / "p")["status"] == "completed" and not is_live(_claim(tmp_path / "p"))


def test_a_dead_owners_claim_is_stale_and_taken_over_only_when_allowed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    me = Owner.me("s1")
    assert try_claim(tmp_path / "p", Owner(me.host, dead.pid, "s0")) is not None
    info = read_claim(tmp_path / "p")
    assert info is not None and not is_live(info)  # same host, pid gone
    assert try_claim(tmp_path / "p", me) is None  # by default nobody takes over
    assert try_claim(tmp_path / "p", me, lambda info: not is_live(info)) is not None
    assert _claim(tmp_path / "p")["pid"] == os.getpid()
    other_host = {"host": "elsewhere", "pid": 1, "mtime": time.time()}
    assert is_live(other_host) and not is_live({**other_host, "mtime": time.time() - 3600})  # heartbeat timeout


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="procfs")
def test_a_killed_but_unreaped_worker_is_dead():
    # A launcher waiting on one worker does not reap another that was SIGKILLed: the zombie still
    # answers signal 0, and its point must not wait for the 5-minute heartbeat to go stale.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert pid_alive(child.pid)
    os.kill(child.pid, signal.SIGKILL)
    deadline = time.time() + 10
    while pid_alive(child.pid):  # a zombie as soon as the kill lands; never reaped here before the check
        assert time.time() < deadline, "a killed, unreaped child still counts as alive"
        time.sleep(0.01)
    assert child.poll() is not None and not pid_alive(child.pid)


def test_three_worker_processes_run_every_point_exactly_once(tiny_spec, write_spec, tmp_path):
    out = tmp_path / "sw"
    res = runner.invoke(app, ["run", str(write_spec(_sweep(tiny_spec, 4))), "--out", str(out), "--workers", "3", "--quiet"])
    assert res.exit_code == 0, res.output
    index = json.loads((out / SWEEP_INDEX).read_text())
    assert index["status"] == "completed" and [p["status"] for p in index["points"]] == ["completed"] * 4
    assert _records(out) == {p["dir"]: [0, 2] for p in index["points"]}  # one run each: no repeated lines
    owners = {p["dir"]: _claim(out / p["dir"])["pid"] for p in index["points"]}
    assert os.getpid() not in owners.values()  # the workers ran them, not this process
    assert len(list((out / "workers").glob("*.log"))) == 3
    # A second command joining the finished sweep finds nothing to do and leaves every record as it was.
    before = {d: (out / d / SUMMARY).read_bytes() for d in owners}
    res = runner.invoke(app, ["run", str(tmp_path / "spec.yaml"), "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert {d: (out / d / SUMMARY).read_bytes() for d in owners} == before


def test_a_sigkilled_workers_point_is_taken_over_by_the_next_worker_of_the_sweep(tiny_spec, write_spec, tmp_path):
    spec = _sweep(tiny_spec, 2, steps=1000)  # point 0 runs long enough to be killed inside
    spec["train"]["eval_every"] = 500
    out = tmp_path / "sw"
    plan = load_plan(write_spec(spec))
    prepare_sweep_dir(plan, out)
    job = WorkerJob(SWEEP_WORKER, str(out), new_session(), time.time())
    worker = subprocess.Popen([sys.executable, "-m", "seqpar.sweep.launch", job.to_json()], stdout=subprocess.DEVNULL)
    first = out / plan.points[0].dirname
    deadline = time.time() + 120
    while not ((first / METRICS).exists() and (first / METRICS).read_text()):  # step 0 evaluated: training has begun
        assert time.time() < deadline and worker.poll() is None, "the worker never started its first point"
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    index = rebuild_index(plan, out)
    assert index["points"][0]["status"] == "interrupted" and "killed" in index["points"][0]["error"]
    # A plain run joining the sweep continues the dead worker's point from its checkpoints (no --resume needed).
    res = runner.invoke(app, ["run", str(tmp_path / "spec.yaml"), "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    index = json.loads((out / SWEEP_INDEX).read_text())
    assert [p["status"] for p in index["points"]] == ["completed", "completed"]
    assert _records(out) == {p.dirname: [0, 500, 1000] for p in plan.points}


def test_a_dead_workers_point_is_taken_over_once_then_left_to_resume(tiny_spec, write_spec, tmp_path):
    """A point whose worker died is continued by the next worker; one that killed a second worker waits for --resume."""
    from seqpar.sweep.execute import work_points

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    plan = load_plan(write_spec(_sweep(tiny_spec, 2)))
    out = tmp_path / "sw"
    prepare_sweep_dir(plan, out)
    ghost = Owner(Owner.me("s0").host, dead.pid, "s0")
    try_claim(out / plan.points[0].dirname, ghost)  # died in point 0, never taken over
    try_claim(out / plan.points[1].dirname, ghost, note={"takeovers": 1})  # died in point 1 after a takeover
    ran = []

    def run_point(spec, d):
        ran.append(d.name)
        return {"status": "completed", "runs": []}

    assert not work_points(plan, out, run_point, owner=Owner.me("s1"), poll_s=0.01)
    assert ran == [plan.points[0].dirname]
    assert _claim(out / plan.points[0].dirname)["takeovers"] == 1
    assert work_points(plan, out, run_point, owner=Owner.me("s2"), resume=True, poll_s=0.01) is False
    assert ran == [plan.points[0].dirname, plan.points[1].dirname]


def test_a_crashed_worker_is_exit_1_and_a_survivor_takes_over_its_point(tiny_spec, write_spec, tmp_path):
    """Two workers; the one running point 0 is SIGKILLed: the other finishes both points, the sweep exits 1 (not 130)."""
    spec = _sweep(tiny_spec, 2, steps=300)
    spec["train"]["eval_every"] = 150
    out = tmp_path / "sw"
    cmd = [sys.executable, "-m", "seqpar", "run", str(write_spec(spec)), "--out", str(out), "--workers", "2", "--quiet"]
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = out / load_plan(tmp_path / "spec.yaml").points[0].dirname
    deadline = time.time() + 120
    while not ((first / METRICS).exists() and (first / METRICS).read_text()):
        assert time.time() < deadline and launcher.poll() is None, "no worker started point 0"
        time.sleep(0.05)
    victim = _claim(first)["pid"]
    os.kill(victim, signal.SIGKILL)
    stdout, stderr = launcher.communicate(timeout=300)
    assert launcher.returncode == 1, stdout + stderr
    assert "1 worker(s) died" in stderr and "interrupted" not in stderr
    index = json.loads((out / SWEEP_INDEX).read_text())
    assert [p["status"] for p in index["points"]] == ["completed", "completed"]
    assert _claim(first)["pid"] not in (victim, os.getpid())  # the surviving worker took it over
    assert _records(out) == {p["dir"]: [0, 150, 300] for p in index["points"]}


def test_slurm_launcher_runs_a_sweep_as_a_submitit_job_array(tiny_spec, write_spec, tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("SEQPAR_SUBMITIT_CLUSTER", "local")  # submitit's local executor: the same array path, no cluster
    out = tmp_path / "sw"
    args = ["run", str(write_spec(_sweep(tiny_spec, 4))), "--out", str(out), "--quiet", "--launcher", "slurm", "--workers", "2"]
    res = runner.invoke(app, args + ["--time", "10", "--partition", "gpu"])
    assert res.exit_code == 0, res.output
    assert "submitit (local) job array on partition gpu" in " ".join(res.stdout.split())
    index = json.loads((out / SWEEP_INDEX).read_text())
    assert [p["status"] for p in index["points"]] == ["completed"] * 4
    assert _records(out) == {p["dir"]: [0, 2] for p in index["points"]}
    assert list((out / "workers" / "slurm").glob("*_result.pkl"))  # submitit's own records of the array tasks


@pytest.mark.parametrize(
    "args, named",
    [
        (["--workers", "0"], "--workers 0"),
        (["--shard", "2/2"], "--shard 2/2"),
        (["--partition", "gpu"], "go with --launcher slurm"),
        (["--launcher", "pbs"], "--launcher pbs"),
    ],
)
def test_bad_worker_options_exit_2_and_write_nothing(tiny_spec, write_spec, tmp_path, args, named):
    res = runner.invoke(app, ["run", str(write_spec(_sweep(tiny_spec, 2))), "--out", str(tmp_path / "sw"), *args])
    assert res.exit_code == 2 and named in res.stderr and not (tmp_path / "sw").exists()


def test_workers_need_a_sweep_and_a_foreign_sweep_dir_is_refused(tiny_spec, write_spec, tmp_path):
    plain = write_spec({k: v for k, v in _sweep(tiny_spec, 2).items() if k != "sweep"}, "plain.yaml")
    res = runner.invoke(app, ["run", str(plain), "--out", str(tmp_path / "one"), "--workers", "2"])
    assert res.exit_code == 2 and "has no sweep" in res.stderr and not (tmp_path / "one").exists()
    spec = _sweep(tiny_spec, 2)
    out = tmp_path / "sw"
    prepare_sweep_dir(load_plan(write_spec(spec)), out)
    spec["sweep"]["seed"] = [5, 6]
    res = runner.invoke(app, ["run", str(write_spec(spec, "other.yaml")), "--out", str(out)])
    assert res.exit_code == 2 and "holds another sweep" in res.stderr


def test_sigterm_to_the_launching_process_stops_its_workers_like_ctrl_c(tiny_spec, write_spec, tmp_path):
    """`kill PARENT` (a scheduler's way to ask) must not orphan the workers: they save and stop, exit 130, resumable."""
    spec = _sweep(tiny_spec, 2, steps=200_000)  # far more than either worker reaches before the signal
    spec["train"].update(eval_every=100_000, checkpoint_every=100)
    out = tmp_path / "sw"
    cmd = [sys.executable, "-m", "seqpar", "run", str(write_spec(spec)), "--out", str(out), "--workers", "2", "--quiet"]
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    points = [out / p.dirname for p in load_plan(tmp_path / "spec.yaml").points]
    deadline = time.time() + 180
    while not all((d / METRICS).exists() and (d / METRICS).read_text() for d in points):  # both workers are training
        assert time.time() < deadline and launcher.poll() is None, "the workers never started"
        time.sleep(0.05)
    workers = [_claim(d)["pid"] for d in points]
    launcher.send_signal(signal.SIGTERM)
    stdout, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode == 130, stdout + stderr
    assert "seqpar run --resume" in stderr
    assert not any(pid_alive(pid) for pid in workers)  # stopped with it, not left running
    for d in points:  # each saved a checkpoint of its last step and says it was interrupted: --resume continues it
        summary = json.loads((d / SUMMARY).read_text())
        assert _claim(d)["status"] == summary["status"] == "interrupted", d
        ckpts = sorted((d / "checkpoints").glob("*/ckpt-*.npz"))
        assert ckpts and int(ckpts[-1].stem.split("-")[1]) == summary["runs"][0]["steps_done"] > 0
    assert [p["status"] for p in json.loads((out / SWEEP_INDEX).read_text())["points"]] == ["interrupted", "interrupted"]

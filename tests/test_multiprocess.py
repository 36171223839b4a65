"""Real multiple processes on one machine: two `seqpar run` processes of 2 CPU devices each, joined
by seqpar's documented multi-host variables (`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`,
`JAX_PROCESS_ID`) into one 4-device mesh over gloo, against one process of 4 devices."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from seqpar.records.layout import SUMMARY

pytestmark = pytest.mark.slow

SPEC = {
    "name": "mp",
    "seed": 0,
    "task": {"type": "delayed_recall", "length": 8, "lag": 2, "vocab": 4, "train_sequences": 16, "val_sequences": 16, "test_sequences": 16},
    "model": {"cell": "gru", "hidden": 8},
    # Strata fixed at 4: the same batches on 1 x 4 and 2 x 2 devices.
    "train": {"steps": 4, "batch_size": 8, "eval_every": 2, "devices": "all", "sample_strata": 4},
    "methods": [
        {"type": "bptt", "optimizer": {"type": "adam", "lr": 1e-2}},
        {"type": "parallel", "optimizer": {"type": "adam", "lr": 1e-2}, "consistency_weight": 1.0},  # table row-sharded
        {"type": "deer", "optimizer": {"type": "adam", "lr": 1e-2}, "warm_start": "previous"},  # warm-start cache row-sharded
    ],
}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: list[str], processes: int, devices: int, logs: Path, heartbeat_s: int = 100) -> list[subprocess.Popen]:
    port = _port()
    procs = []
    for i in range(processes):
        flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
        env = {**os.environ, "XLA_FLAGS": flags}
        env["SEQPAR_HEARTBEAT_TIMEOUT_S"] = str(heartbeat_s)
        env.pop("JAX_NUM_CPU_DEVICES", None)
        if processes > 1:
            env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(i))
        out = open(logs / f"p{i}.log", "w")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen([sys.executable, "-m", "seqpar", "run", *args, "--quiet"], env=env, stdout=out, stderr=out))
    return procs


def _wait(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    deadline = time.time() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(1.0, deadline - time.time())))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("a process hung")
    return codes


def test_two_processes_give_the_numbers_of_one_and_only_process_0_writes(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC, sort_keys=False))
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = _launch([str(spec), "--out", str(tmp_path / "r1")], 1, 4, tmp_path / "one")
    assert _wait(one, 600) == [0], (tmp_path / "one" / "p0.log").read_text()
    two = _launch([str(spec), "--out", str(tmp_path / "r2")], 2, 2, tmp_path / "two")
    logs = [tmp_path / "two" / f"p{i}.log" for i in range(2)]
    assert _wait(two, 600) == [0, 0], "\n".join(p.read_text() for p in logs)
    a, b = (json.loads((tmp_path / r / SUMMARY).read_text()) for r in ("r1", "r2"))
    assert [r["mesh"]["data"] for r in b["runs"]] == [4, 4, 4]
    for ra, rb in zip(a["runs"], b["runs"], strict=True):
        for key in ("rollout_loss_val", "rollout_loss_test", "objective"):
            assert rb["final"][key] == pytest.approx(ra["final"][key], abs=1e-5), (ra["label"], key)
    # Process 1 wrote its record elsewhere (a scratch copy), never into the run directory.
    text = [p.read_text() for p in logs]
    assert f"run record: {tmp_path / 'r2'}" in text[0] and str(tmp_path / "r2") not in text[1].split("->")[-1]
    for i, t in enumerate(text):  # each process reports the row-sharded state its own two devices hold
        for label in ("parallel", "deer"):
            line = next(x for x in t.splitlines() if x.startswith(f"process {i}: {label}: row-sharded state per local device:"))
            assert line.count("KiB") == 2, line


def test_killing_one_process_stops_the_other_and_resume_continues_both(tmp_path):
    raw = json.loads(json.dumps(SPEC))
    raw["methods"] = raw["methods"][1:2]  # the row-sharded table
    raw["train"].update(steps=300, eval_every=100, checkpoint_every=10)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    run = tmp_path / "run"
    procs = _launch([str(spec), "--out", str(run)], 2, 2, tmp_path, heartbeat_s=10)
    deadline = time.time() + 300
    while not list(run.glob("checkpoints/*/*")):
        assert time.time() < deadline and all(p.poll() is None for p in procs), (tmp_path / "p0.log").read_text()
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)
    code = _wait(procs[:1], 120)[0]  # not a hang: the heartbeat says process 1 is gone
    log = (tmp_path / "p0.log").read_text()
    assert code != 0
    assert "stopped sending heartbeats" in log and "another task died" in log, log  # JAX's own words, then it exits
    resumed = _launch(["--resume", str(run)], 2, 2, tmp_path)
    assert _wait(resumed, 600) == [0, 0], (tmp_path / "p0.log").read_text() + (tmp_path / "p1.log").read_text()
    summary = json.loads((run / SUMMARY).read_text())
    assert summary["status"] == "completed" and summary["resumes"][-1]["from_step"]["parallel"] >= 10
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 100, 200, 300]  # every eval once: no repeated or lost line
    assert f"run record: {run}" in (tmp_path / "p0.log").read_text() and f"run record: {run}" not in (tmp_path / "p1.log").read_text()


def _seqpar(args: list[str]) -> int:
    """One task of a submitit job: `seqpar run` in the task's own process."""
    from seqpar.cli import app

    try:
        code = app(args, standalone_mode=False)
    except SystemExit as e:
        code = e.code
    return int(code or 0)


def test_submitit_local_runs_the_two_processes_as_one_job_of_two_tasks(tmp_path, monkeypatch):
    """The SLURM `--ntasks 2` path, on submitit's local executor: one job, two tasks, one 4-device mesh."""
    submitit = pytest.importorskip("submitit")
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the task process cannot import this test module
    raw = json.loads(json.dumps(SPEC))
    raw["methods"] = raw["methods"][1:2]
    raw["train"]["steps"] = 2
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    monkeypatch.setenv("XLA_FLAGS", f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2".strip())
    executor = submitit.AutoExecutor(folder=tmp_path / "job", cluster="local")
    executor.update_parameters(tasks_per_node=2, timeout_min=10)
    job = executor.submit(_seqpar, ["run", str(spec), "--out", str(tmp_path / "run"), "--quiet"])
    assert job.results() == [0, 0]
    summary = json.loads((tmp_path / "run" / SUMMARY).read_text())
    assert summary["status"] == "completed" and summary["runs"][0]["mesh"]["data"] == 4
    assert len(list(tmp_path.glob(f"**/{SUMMARY}"))) == 1  # task 1 wrote its scratch copy elsewhere

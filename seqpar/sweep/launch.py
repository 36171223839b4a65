"""Where workers run: local processes or a SLURM job array (submitit), behind one interface.

Hydra's split, kept: *what* to run (a sweep's points, a study's trials) is decided by the
planner and by claims on disk; a launcher only starts N identical workers and waits.
Each worker is `run_job(WorkerJob)`: it claims work in the shared directory until none
is left, so workers need no coordinator and the same command is safe on several hosts.

- `LocalLauncher`: N child processes (`python -m seqpar.sweep.launch JOB`), each with its
  log in `DIR/workers/`, each optionally pinned to its own GPUs (`CUDA_VISIBLE_DEVICES`).
- `SubmititLauncher`: one SLURM job array of N tasks through submitit (the library Hydra's
  SLURM launcher uses), one worker per array task. `SEQPAR_SUBMITIT_CLUSTER=local` runs the
  same array through submitit's local executor (how the tests exercise this path).
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import importlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seqpar.records.layout import WORKER_LOGS
from seqpar.records.writer import within_run


@dataclass(frozen=True)
class WorkerJob:
    """Everything a worker needs, as plain JSON: it reads the rest from `directory`."""

    entry: str  # "module:function" the worker runs, e.g. "seqpar.sweep.execute:sweep_worker"
    directory: str
    session: str  # the launching command's id, shared by its workers
    since: float  # the launching command's start time (a resume retakes work finished before it)
    resume: bool = False
    worker: int = 0
    workers: int = 1
    shard: tuple[int, int] | None = None  # (i, n): only points with index % n == i
    tensorboard: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # kind-specific (a study's storage URL)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerJob:
        d = json.loads(text)
        d["shard"] = tuple(d["shard"]) if d.get("shard") else None
        return cls(**d)


def run_job(job: WorkerJob) -> int:
    """One worker, in whatever process the launcher made: 0 done, 1 something failed, 130 stopped."""
    # The job names its own entry point, so launchers know nothing of what they launch (sweeps,
    # studies): no import from here to them, and a new kind of worker needs no change here.
    module, _, function = job.entry.partition(":")
    return getattr(importlib.import_module(module), function)(job)


class Running(abc.ABC):
    """Workers that were started: poll, wait, stop."""

    @abc.abstractmethod
    def done(self) -> bool: ...

    @abc.abstractmethod
    def wait(self) -> list[int]:
        """Exit codes (1 for a worker that crashed or could not start)."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Ask every worker to stop after its current step (it saves its state)."""


class Launcher(abc.ABC):
    description: str

    @abc.abstractmethod
    def start(self, jobs: list[WorkerJob]) -> Running: ...


# ----------------------------------------------------------------------------- local processes


class LocalLauncher(Launcher):
    def __init__(self, devices_per_worker: int | None = None):
        self.devices_per_worker = devices_per_worker
        self.description = "local processes" + (f", {devices_per_worker} GPU(s) each" if devices_per_worker else "")

    def env(self, worker: int, workers: int) -> dict[str, str]:
        env = dict(os.environ)
        if self.devices_per_worker:
            k = self.devices_per_worker
            visible = env.get("CUDA_VISIBLE_DEVICES")
            ids = visible.split(",") if visible else [str(i) for i in range(k * workers)]
            env["CUDA_VISIBLE_DEVICES"] = ",".join(ids[worker * k : (worker + 1) * k])
        if workers > 1:
            # Several processes on one GPU must not each grab 75% of its memory up front.
            env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        return env

    def start(self, jobs: list[WorkerJob]) -> Running:
        procs = []
        for job in jobs:
            logs = within_run(Path(job.directory), Path(job.directory) / WORKER_LOGS)
            logs.mkdir(parents=True, exist_ok=True)
            with open(logs / f"{job.session}-{job.worker}.log", "ab") as log:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "seqpar.sweep.launch", job.to_json()],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        env=self.env(job.worker, job.workers),
                    )
                )
        return _LocalRunning(procs)


class _LocalRunning(Running):
    def __init__(self, procs: list[subprocess.Popen]):
        self.procs = procs

    def done(self) -> bool:
        return all(p.poll() is not None for p in self.procs)

    def wait(self) -> list[int]:
        return [p.wait() for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGINT)


# ----------------------------------------------------------------------------- SLURM through submitit


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    gpus_per_task: int = 0
    time_min: int = 60
    array_parallelism: int | None = None
    cpus_per_task: int | None = None


class SubmititLauncher(Launcher):
    """A job array through `submitit.AutoExecutor`; its files go to `folder` (DIR/workers/slurm)."""

    def __init__(self, folder: Path, options: SlurmOptions, cluster: str | None = None):
        self.folder = Path(folder)
        self.options = options
        self.cluster = cluster or os.environ.get("SEQPAR_SUBMITIT_CLUSTER") or "slurm"
        self.description = f"submitit ({self.cluster}) job array" + (f" on partition {options.partition}" if options.partition else "")

    def start(self, jobs: list[WorkerJob]) -> Running:
        import submitit

        executor = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        o = self.options
        params: dict[str, Any] = {"timeout_min": o.time_min, "tasks_per_node": 1, "nodes": 1, "name": "seqpar"}
        if o.gpus_per_task:
            params["gpus_per_node"] = o.gpus_per_task  # one task per array element: per node == per task
        if o.cpus_per_task:
            params["cpus_per_task"] = o.cpus_per_task
        if o.partition:
            params["slurm_partition"] = o.partition
        if o.array_parallelism:
            params["slurm_array_parallelism"] = o.array_parallelism
        executor.update_parameters(**params)
        return _SubmititRunning(executor.map_array(run_job, jobs))


class _SubmititRunning(Running):
    def __init__(self, jobs: list[Any]):
        self.jobs = jobs

    def done(self) -> bool:
        return all(j.done() for j in self.jobs)

    def wait(self) -> list[int]:
        codes = []
        for j in self.jobs:
            try:
                codes.append(int(j.result()))
            except Exception:  # noqa: BLE001 - a crashed task: its log in the submitit folder says why
                codes.append(1)
        return codes

    def stop(self) -> None:
        for j in self.jobs:
            with contextlib.suppress(Exception):
                j.cancel(check=False)


class LaunchError(Exception):
    """Bad worker or launcher options; the message is one line (the CLI exits 2)."""


@dataclass(frozen=True)
class WorkerOptions:
    """The command-line options that say how many workers run where."""

    workers: int = 1
    devices_per_worker: int | None = None
    launcher: str = "local"
    shard: str | None = None
    slurm: SlurmOptions = SlurmOptions()

    def check(self) -> None:
        if self.workers < 1:
            raise LaunchError(f"--workers {self.workers}: expected a positive number of workers")
        if self.devices_per_worker is not None and self.devices_per_worker < 1:
            raise LaunchError(f"--devices-per-worker {self.devices_per_worker}: expected a positive number of GPUs")
        if self.launcher not in ("local", "slurm"):
            raise LaunchError(f"--launcher {self.launcher}: expected local or slurm")
        if self.launcher == "slurm":
            try:
                import submitit  # noqa: F401
            except ImportError:
                raise LaunchError("--launcher slurm needs submitit: pip install 'seqpar[slurm]' (or pip install submitit)") from None
            if self.slurm.time_min < 1:
                raise LaunchError(f"--time {self.slurm.time_min}: expected minutes >= 1")
            if self.slurm.gpus_per_task < 0 or (self.slurm.array_parallelism or 1) < 1:
                raise LaunchError("--gpus-per-task must be >= 0 and --array-parallelism >= 1")
        elif self.slurm != SlurmOptions():
            raise LaunchError("--partition, --gpus-per-task, --time and --array-parallelism go with --launcher slurm")
        self.shard_tuple()

    def shard_tuple(self) -> tuple[int, int] | None:
        if self.shard is None:
            return None
        i, sep, n = self.shard.partition("/")
        if not (sep and i.strip().isdigit() and n.strip().isdigit() and int(i) < int(n)):
            raise LaunchError(f"--shard {self.shard}: expected i/n with 0 <= i < n (this host's share of the points)")
        return int(i), int(n)

    def launcher_for(self, directory: Path) -> Launcher | None:
        """None: one worker in this process (the default); else the launcher that starts the workers."""
        if self.launcher == "slurm":
            return SubmititLauncher(Path(directory) / WORKER_LOGS / "slurm", self.slurm)
        if self.workers > 1:
            return LocalLauncher(self.devices_per_worker)
        return None


def main() -> None:  # `python -m seqpar.sweep.launch JOB_JSON`: one local worker
    sys.exit(run_job(WorkerJob.from_json(sys.argv[1])))


if __name__ == "__main__":
    main()

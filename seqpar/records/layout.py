"""Every file name of a run directory and a sweep directory, spelled once.

A run directory:

    spec.yaml        the resolved spec (written first; its presence marks a run directory)
    summary.json     one record per method, rewritten atomically after each (`writer`)
    metrics.jsonl    one JSON line per log/eval point
    checkpoints/     `<index>-<label>/ckpt-<step>.npz` while a method is unfinished
    tensorboard/     `<index>-<label>/` event files, written live (`seqpar run --tracker tensorboard`)
    mlflow.db        the MLflow store (SQLite) of `seqpar run --tracker mlflow` (unless --tracking-uri)
    plots/           PNG figures (`seqpar run --plot`)

A sweep directory holds `sweep.yaml` (the sweep spec), `sweep.json` (the index of its
points, rebuilt from the points' own files), `workers/` (logs of worker processes) and
one run directory per point, each with its `claim.json` (who runs or ran it: the
one file several workers race to create, see `seqpar.sweep.claim`).

A study directory (`seqpar tune`) holds `tune.yaml` (the spec as tuned), `study.id` (its
studies' names in a shared `--storage URL` end in `@<directory name>.<id>`), the Optuna
storage `study.journal` (unless `--storage URL`), `trials/<method index>-<label>/<trial
number>/` (one ordinary run record per trial), `best.yaml` (the winners as a plain spec),
`final/` (a sweep of best.yaml over the tune block's seeds, judged on the test split),
`defaults/` (the spec untuned, the reference every tuned setting must beat) and
`tune.json` (the study's summary).
"""

from __future__ import annotations

import re
from pathlib import Path

SCHEMA_VERSION = 1
SPEC = "spec.yaml"
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
MLFLOW_DB = "mlflow.db"  # the default MLflow store of `--tracker mlflow`: SQLite, as MLflow recommends
MLFLOW_ARTIFACTS = "mlartifacts"  # its artifact root (seqpar logs no artifacts; MLflow's default would be ./mlruns in the cwd)
PLOTS = "plots"
SWEEP_INDEX = "sweep.json"  # {"kind": "sweep", "axes": {key: [values]}, "points": [{"index", "dir", "values", "status", ...}], ...}
SWEEP_SPEC = "sweep.yaml"
RECORD_FILES = (SPEC, SUMMARY, METRICS)
DATA = "data.npz"  # arrays a run was given in memory (`seqpar.run(spec, data=...)`), so it can be resumed
CLAIM = "claim.json"  # {"host", "pid", "session", "started", "finished", "status", "methods", "error"}; mtime = heartbeat
CLAIMS_LOCK = ".claims.lock"  # serialises taking over a dead worker's claim
WORKER_LOGS = "workers"
TUNE_SPEC = "tune.yaml"
STUDY_ID = "study.id"  # a random id written once: names the directory's studies in a shared --storage URL
STUDY_JOURNAL = "study.journal"
STUDY_LOCK = ".study.lock"  # serialises asking Optuna for a trial, so a budget is never overshot
TRIALS = "trials"
BEST_SPEC = "best.yaml"
FINAL = "final"
DEFAULTS = "defaults"
TUNE_INDEX = "tune.json"


def is_sweep_dir(path: Path) -> bool:
    return (Path(path) / SWEEP_INDEX).exists()


def method_dirname(index: int, label: str) -> str:
    """`1-bptt-a`: unique by the method's index (labels `bptt a` and `bptt_a` stay apart; `..`
    becomes `0-..`, a plain name), its label kept readable and made filesystem-safe."""
    return f"{index}-{re.sub(r'[^A-Za-z0-9._-]', '-', label)}"


def checkpoint_dir(run_dir: Path, index: int, label: str) -> Path:
    """Checkpoints of method number `index`."""
    return Path(run_dir) / CHECKPOINTS / method_dirname(index, label)


def tensorboard_dir(run_dir: Path, index: int, label: str) -> Path:
    """TensorBoard event files of method number `index`: one TensorBoard run per method."""
    return Path(run_dir) / TENSORBOARD / method_dirname(index, label)

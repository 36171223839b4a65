"""Every file name of a run directory and a sweep directory, spelled once.

A run directory:

    spec.yaml        the resolved spec (written first; its presence marks a run directory)
    summary.json     one record per method, rewritten atomically after each (`writer`)
    metrics.jsonl    one JSON line per log/eval point
    checkpoints/     `<index>-<label>/ckpt-<step>.npz` while a method is unfinished
    tensorboard/     event files (`seqpar run --tensorboard`)
    plots/           PNG figures (`seqpar run --plot`)

A sweep directory holds `sweep.yaml` (the sweep spec), `sweep.json` (the index of its
points) and one run directory per point.
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
PLOTS = "plots"
SWEEP_INDEX = "sweep.json"  # {"kind": "sweep", "axes": {key: [values]}, "points": [{"index", "dir", "values", "status", ...}], ...}
SWEEP_SPEC = "sweep.yaml"
RECORD_FILES = (SPEC, SUMMARY, METRICS)


def is_sweep_dir(path: Path) -> bool:
    return (Path(path) / SWEEP_INDEX).exists()


def checkpoint_dir(run_dir: Path, index: int, label: str) -> Path:
    """Checkpoints of method number `index` (its label kept readable, made filesystem-safe)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "-", label)
    return Path(run_dir) / CHECKPOINTS / f"{index}-{safe}"

"""TensorBoard export (`--tensorboard`): event files converted from a finished run record.

    RUN_DIR/tensorboard/<method label>/events.out.tfevents.*

One TensorBoard run per method, so `tensorboard --logdir RUN_DIR` (or a sweep
directory: TensorBoard searches recursively) overlays the methods on every chart.
Tags: `rollout/loss_test`, `rollout/acc_test`, ... (held-out and training-set
sequential rollout), `train/objective`, ... (the training step's metrics) and
`eval/<name>` for a method's own diagnostics. Wall times are the run's start plus
its training seconds, so TensorBoard's "relative" axis is training time.

The export reads metrics.jsonl after the run (or after each sweep point), so the
training loop carries no TensorBoard code and an export can be redone at any time.
Needs the optional `tensorboardX` (`pip install 'seqpar[tb]'`).
"""

from __future__ import annotations

import calendar
import json
import re
import time
from pathlib import Path
from typing import Any

from seqpar.records.layout import TENSORBOARD as TB_DIR
from seqpar.records.reader import read_metrics, read_summary

INSTALL_HINT = "--tensorboard needs tensorboardX: pip install 'seqpar[tb]' (or pip install tensorboardX)"


def available() -> bool:
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        return False
    return True


def tag(key: str) -> str | None:
    """Metric line key -> TensorBoard tag; None for keys that are not scalars to chart."""
    if key in ("method", "step", "wall_s"):
        return None
    if key.startswith("rollout_"):
        return "rollout/" + key.removeprefix("rollout_")
    if key.startswith("train_"):
        return "train/" + key.removeprefix("train_")
    return "eval/" + key


def _start_epoch(summary: dict[str, Any]) -> float:
    try:
        return float(calendar.timegm(time.strptime(summary["started"], "%Y-%m-%dT%H:%M:%S%z")))
    except (KeyError, TypeError, ValueError):
        return time.time()


def export_run(run_dir: Path) -> list[Path]:
    """Write one event file per method of `run_dir`; returns their directories. Raises ValueError on a bad record."""
    from tensorboardX import SummaryWriter

    run_dir = Path(run_dir)
    summary = read_summary(run_dir)
    lines = read_metrics(run_dir)
    t0 = _start_epoch(summary)
    out = []
    for rec in summary["runs"]:
        label = rec["label"]
        logdir = run_dir / TB_DIR / re.sub(r"[^A-Za-z0-9._-]", "_", label)
        if logdir.is_dir():  # a re-export replaces only our own earlier event files
            for old in logdir.glob("events.out.tfevents.*"):
                old.unlink()
        with SummaryWriter(logdir=str(logdir)) as w:
            for line in (ln for ln in lines if ln.get("method") == label):
                wall = t0 + float(line.get("wall_s") or 0.0)
                for key, value in line.items():
                    name = tag(key)
                    if name is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
                        w.add_scalar(name, float(value), global_step=int(line["step"]), walltime=wall)
            final = {k: v for k, v in rec.items() if k not in ("diagnostics", "traceback")}
            text = f"status: {rec['status']}, memoryless baseline: {rec.get('baseline_loss')}\n\n    " + json.dumps(
                final, indent=2
            ).replace("\n", "\n    ")
            w.add_text("run/summary", text, global_step=0, walltime=t0)
            w.add_text("run/spec", "    " + json.dumps(summary["spec"], indent=2).replace("\n", "\n    "), global_step=0, walltime=t0)
        out.append(logdir)
    return out

"""TensorBoard event files exported from a run record (`seqpar run --plot`-style, after the fact).

The same folders and tags as the live writer (`seqpar.track.tensorboard`): one folder per
method index, `rollout/...`, `train/...`, `eval/...`. `export_run` redoes a method's files
from metrics.jsonl at any time, replacing only its own earlier event files, and adds the
method's final record and the spec as text. Needs the optional `tensorboardX`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from seqpar.records.layout import tensorboard_dir
from seqpar.records.reader import read_metrics, read_summary
from seqpar.records.writer import within_run
from seqpar.track.tensorboard import INSTALL_HINT, available, spec_text, start_epoch, tag

__all__ = ["INSTALL_HINT", "available", "export_run"]


def _add_line(w: Any, line: dict[str, Any], t0: float) -> None:
    wall = t0 + float(line.get("wall_s") or 0.0)
    for key, value in line.items():
        name = tag(key)
        if name is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            w.add_scalar(name, float(value), global_step=int(line["step"]), walltime=wall)


def export_run(run_dir: Path) -> list[Path]:
    """Write one event file per method of `run_dir`; returns their directories. Raises ValueError on a bad record."""
    from tensorboardX import SummaryWriter

    run_dir = Path(run_dir)
    summary = read_summary(run_dir)
    lines = read_metrics(run_dir)
    t0 = start_epoch(summary)
    methods = summary["spec"].get("methods") if isinstance(summary["spec"].get("methods"), list) else []
    labels = [str(m.get("label") or m.get("type")) if isinstance(m, dict) else "" for m in methods]
    out = []
    for rec in summary["runs"]:
        label = rec["label"]
        index = labels.index(label) if label in labels else len(labels) + summary["runs"].index(rec)
        logdir = within_run(run_dir, tensorboard_dir(run_dir, index, label))
        if logdir.is_dir():  # a re-export replaces only this method's earlier event files
            for old in logdir.glob("events.out.tfevents.*"):
                old.unlink()
        with SummaryWriter(logdir=str(logdir)) as w:
            for line in (ln for ln in lines if ln.get("method") == label):
                _add_line(w, line, t0)
            final = {k: v for k, v in rec.items() if k not in ("diagnostics", "traceback")}
            text = f"status: {rec['status']}, memoryless baseline: {rec.get('baseline_loss')}\n\n    " + json.dumps(
                final, indent=2
            ).replace("\n", "\n    ")
            w.add_text("run/summary", text, global_step=0, walltime=t0)
            w.add_text("run/spec", spec_text(summary["spec"]), global_step=0, walltime=t0)
        out.append(logdir)
    return out

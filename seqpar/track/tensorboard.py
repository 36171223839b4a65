"""TensorBoard event files written live as a run goes (`--tracker tensorboard`, or `--tensorboard`).

    RUN_DIR/tensorboard/<method index>-<label>/events.out.tfevents.*

One TensorBoard run per method, so `tensorboard --logdir RUN_DIR` (or a sweep or study
directory: TensorBoard searches recursively) overlays the methods on every chart. The
folder starts with the method's index (`seqpar.records.layout.tensorboard_dir`), so two
labels that sanitise alike (`bptt a`, `bptt_a`) never share or delete each other's files.
Tags: `rollout/loss_test`, `rollout/acc_test`, ... (held-out and training-set
sequential rollout), `train/objective`, ... (the training step's metrics) and
`eval/<name>` for a method's own diagnostics. Wall times are the run's start plus
its training seconds, so TensorBoard's "relative" axis is training time.

`LiveWriter` is a tracker backend (`seqpar.track`): the loop's metric lines go to it as
they are logged and it flushes each, so `tensorboard --logdir` shows curves during the
run and a crash keeps them. A resumed method purges its steps past the checkpoint
(TensorBoard's `purge_step`), as metrics.jsonl cuts them. `seqpar.analysis.tensorboard`
redoes the files from metrics.jsonl at any time. Needs the optional `tensorboardX`
(`pip install 'seqpar[tb]'`).
"""

from __future__ import annotations

import calendar
import json
import math
import os
import secrets
import time
from pathlib import Path
from typing import Any

from seqpar.records.layout import tensorboard_dir
from seqpar.records.writer import within_run

INSTALL_HINT = "--tracker tensorboard needs tensorboardX: pip install 'seqpar[tb]' (or pip install tensorboardX)"


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


def start_epoch(summary: dict[str, Any]) -> float:
    try:
        return float(calendar.timegm(time.strptime(summary["started"], "%Y-%m-%dT%H:%M:%S%z")))
    except (KeyError, TypeError, ValueError):
        return time.time()


def spec_text(spec: dict[str, Any]) -> str:
    return "    " + json.dumps(spec, indent=2).replace("\n", "\n    ")


class LiveWriter:
    """Tracker backend: one event file per method, each line written and flushed before the loop goes on.

    tensorboardX's `SummaryWriter` queues events for a background thread (its `flush` does
    not wait for the queue), so a killed process would lose the newest points: this writes
    the same events synchronously through its `EventsWriter`. `labels` are the spec's method
    labels in order (the folder index); `purge_from[label]` is the first step a resumed
    method logs again: TensorBoard hides the older file's steps from there on."""

    def __init__(self, run_dir: Path, labels: list[str], spec: dict[str, Any], t0: float, purge_from: dict[str, int] | None = None):
        self.run_dir = Path(run_dir)
        self.labels = labels
        self.spec = spec
        self.t0 = t0
        self.purge_from = purge_from or {}
        self._writers: dict[str, Any] = {}

    def _writer(self, label: str) -> Any:
        if label not in self._writers:
            from tensorboardX.event_file_writer import EventsWriter
            from tensorboardX.proto.event_pb2 import Event, SessionLog  # pyright: ignore[reportAttributeAccessIssue] - generated
            from tensorboardX.summary import text

            logdir = within_run(self.run_dir, tensorboard_dir(self.run_dir, self.labels.index(label), label))
            logdir.mkdir(parents=True, exist_ok=True)
            # A unique suffix: file names are only unique to the second per host otherwise.
            w = EventsWriter(str(logdir / "events"), filename_suffix=f".{os.getpid()}.{secrets.token_hex(3)}")
            if label in self.purge_from:
                w.write_event(Event(step=self.purge_from[label], session_log=SessionLog(status=SessionLog.START)))
            else:
                w.write_event(Event(wall_time=self.t0, step=0, summary=text("run/spec", spec_text(self.spec))))
            self._writers[label] = w
        return self._writers[label]

    def write(self, record: dict[str, Any]) -> None:
        from tensorboardX.proto.event_pb2 import Event  # pyright: ignore[reportAttributeAccessIssue] - generated protobuf
        from tensorboardX.summary import scalar

        label = record.get("method")
        if label not in self.labels:
            return
        w = self._writer(label)
        wall, step = self.t0 + float(record.get("wall_s") or 0.0), int(record["step"])
        for key, value in record.items():
            name = tag(key)
            if name is not None and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                w.write_event(Event(wall_time=wall, step=step, summary=scalar(name, float(value))))
        w.flush()  # lines come only at log/eval points: cheap, and a crash keeps every one

    def close(self) -> None:
        for w in self._writers.values():
            w.close()
        self._writers.clear()

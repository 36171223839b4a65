"""Live trackers: where the training loop's metric lines go, behind one small interface.

The loop calls one `write(line)` per log/eval point and nothing else (levanter's tracker
idea); the runner calls `finish(label, status)` when a method ends and `close()` at the
end. Every backend sees the same lines in the same order, so a crash leaves each with the
same points so far. The backends, all opened by `open_trackers`:

- JSON lines: `metrics.jsonl`, always; it is the run record (`seqpar.records.writer.MetricsLog`).
- TensorBoard: event files under `RUN_DIR/tensorboard/` (`seqpar.track.tensorboard`, `--tracker tensorboard`).
- MLflow: one MLflow run per method in any tracking store (`seqpar.track.mlflow`, `--tracker mlflow`).

Callers add their own (a study's pruning callback, `seqpar.tune.study`); tests use `NoOpTracker`.
TensorBoard and MLflow are optional installs, imported only when chosen: nothing here imports JAX.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

LIVE = ("tensorboard", "mlflow")  # the optional live backends; metrics.jsonl is always written


class Tracker(Protocol):
    def write(self, record: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class NoOpTracker:
    def write(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class Trackers:
    """Fan one line out to several backends, in order (the JSON-lines log first: it is the record)."""

    def __init__(self, *backends: Tracker):
        self.backends = list(backends)

    def write(self, record: dict[str, Any]) -> None:
        for b in self.backends:
            b.write(record)

    def finish(self, label: str, status: str) -> None:
        """A method ended with `status`; backends that keep a status (MLflow) record it."""
        for b in self.backends:
            done = getattr(b, "finish", None)
            if done is not None:
                done(label, status)

    def close(self) -> None:
        for b in self.backends:
            b.close()


@dataclass(frozen=True)
class Tracking:
    """Which live backends a run writes to, besides metrics.jsonl.

    `mlflow_uri`: the MLflow tracking URI (a server's http(s) URL, `sqlite:///...`, a
    `file:` store); None: a SQLite store at `RUN_DIR/mlflow.db`."""

    tensorboard: bool = False
    mlflow: bool = False
    mlflow_uri: str | None = None

    @classmethod
    def of(cls, names: Sequence[str], tracking_uri: str | None = None) -> Tracking:
        unknown = [n for n in names if n not in LIVE]
        if unknown:
            raise ValueError(f"--tracker {unknown[0]}: expected one of: {', '.join(LIVE)} (metrics.jsonl is always written)")
        return cls(tensorboard="tensorboard" in names, mlflow="mlflow" in names, mlflow_uri=tracking_uri)

    def check(self) -> None:
        """ValueError (one line) if the MLflow tracking URI cannot be opened; call before anything is written."""
        if self.mlflow and self.mlflow_uri is not None:
            from seqpar.track.mlflow import check_uri

            check_uri(self.mlflow_uri)

    def missing(self) -> str | None:
        """The install hint of a chosen backend that is not installed, else None."""
        from seqpar.track import mlflow, tensorboard

        for on, mod in ((self.tensorboard, tensorboard), (self.mlflow, mlflow)):
            if on and not mod.available():
                return mod.INSTALL_HINT
        return None


def open_trackers(
    tracking: Tracking,
    run_dir: Path,
    labels: list[str],
    summary: dict[str, Any],
    resumed_from: dict[str, int] | None = None,
) -> list[Tracker]:
    """The live backends `tracking` asks for, after metrics.jsonl (which the runner opens: it is
    the record). `resumed_from[label]` is the checkpoint step a resumed method continues from
    (0: restarts); TensorBoard hides the older file's later steps, MLflow starts a new run."""
    from seqpar.track.tensorboard import start_epoch

    out: list[Tracker] = []
    t0 = start_epoch(summary)
    if tracking.tensorboard:
        from seqpar.track.tensorboard import LiveWriter

        purge = {label: (step + 1 if step else 0) for label, step in (resumed_from or {}).items()}
        out.append(LiveWriter(run_dir, labels, summary["spec"], t0, purge))
    if tracking.mlflow:
        from seqpar.track.mlflow import MlflowTracker

        out.append(MlflowTracker(run_dir, labels, summary, t0, tracking.mlflow_uri, resumed_from))
    return out

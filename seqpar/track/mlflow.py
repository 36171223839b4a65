"""MLflow as a live tracker (`--tracker mlflow`): one MLflow run per method, written as the run goes.

    experiment: the spec's name      run: the method's label
    params:     the resolved spec, flattened to dotted keys (`task.length`, `methods.0.optimizer.lr`)
    metrics:    every key of every logged line (`rollout_loss_test`, `train_objective`, `wall_s`, ...) at its step
    tags:       `method` (the label), `method_type`, `status` (seqpar's: completed, diverged, failed,
                interrupted), `seqpar.run_dir`; a resumed method's new run adds `resumed_from_step`

The tracking URI is any MLflow store: a server (`http://host:5000`), a database
(`sqlite:///mlflow.db`) or a file store; the default is the file store `RUN_DIR/mlruns`,
which needs no server and no database (`mlflow ui --backend-store-uri RUN_DIR/mlruns`
shows it). Recent MLflow releases keep the file store only on request, so for a
`file:` store this sets `MLFLOW_ALLOW_FILE_STORE=true` unless the environment says otherwise.

Wall times are the run's start plus its training seconds, as in TensorBoard. MLflow cannot
delete points, so a resumed method logs into a new MLflow run from the step after its
checkpoint. Non-finite values are skipped (metrics.jsonl holds none either). Needs the optional
`mlflow` (`pip install 'seqpar[mlflow]'`), imported only when a run asks for it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from seqpar.records.layout import MLRUNS
from seqpar.records.reader import flatten as dotted

INSTALL_HINT = "--tracker mlflow needs mlflow: pip install 'seqpar[mlflow]' (or pip install mlflow)"
# Per MLflow call: its documented log_batch limits.
_MAX_PARAMS, _MAX_METRICS = 100, 1000
_MAX_PARAM_CHARS = 6000
_RUN_STATUS = {"completed": "FINISHED", "diverged": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}


def available() -> bool:
    try:
        import mlflow  # noqa: F401
    except ImportError:
        return False
    return True


def default_uri(run_dir: Path) -> str:
    """The file store `RUN_DIR/mlruns`, as the `file:` URI MLflow expects."""
    return (Path(run_dir) / MLRUNS).resolve().as_uri()


def ui_command(run_dir: Path, tracking_uri: str | None = None) -> str:
    """The command that shows a run's MLflow runs (for a server URI: open it in a browser)."""
    uri = tracking_uri or default_uri(run_dir)
    if uri.startswith(("http://", "https://")):
        return f"open {uri}"
    store = str(Path(run_dir) / MLRUNS) if tracking_uri is None else uri
    prefix = "MLFLOW_ALLOW_FILE_STORE=true " if tracking_uri is None or uri.startswith("file:") else ""
    return f"{prefix}mlflow ui --backend-store-uri {store}"


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """A spec as MLflow params: the record reader's dotted keys (list items by index), values as text."""
    return {k: (json.dumps(v) if isinstance(v, list) else str(v))[:_MAX_PARAM_CHARS] for k, v in dotted(value, prefix).items()}


class MlflowTracker:
    """Tracker backend: each method's lines go to its own MLflow run, created at its first line."""

    def __init__(
        self,
        run_dir: Path,
        labels: list[str],
        summary: dict[str, Any],
        t0: float,
        tracking_uri: str | None = None,
        resumed_from: dict[str, int] | None = None,
    ):
        self.uri = tracking_uri or default_uri(run_dir)
        if self.uri.startswith("file:") or "://" not in self.uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        self.run_dir, self.labels, self.t0 = Path(run_dir), labels, t0
        self.spec = summary["spec"]
        self.resumed_from = resumed_from or {}
        self.name = str(summary.get("name") or self.spec.get("name"))
        self._experiment: str | None = None
        self.runs: dict[str, str] = {}  # label -> MLflow run id

    def _experiment_id(self) -> str:
        if self._experiment is None:
            found = self.client.get_experiment_by_name(self.name)
            self._experiment = found.experiment_id if found is not None else self.client.create_experiment(self.name)
        return self._experiment

    def _run(self, label: str) -> str:
        if label not in self.runs:
            from mlflow.entities import Param

            methods = self.spec.get("methods") or []
            i = self.labels.index(label)
            spec_method = next((m for m in methods if isinstance(m, dict) and (m.get("label") or m.get("type")) == label), {})
            tags = {"method": label, "method_type": str(spec_method.get("type", label)), "status": "running"}
            tags["seqpar.run_dir"] = str(self.run_dir)
            if label in self.resumed_from:
                tags["resumed_from_step"] = str(self.resumed_from[label])
            run = self.client.create_run(self._experiment_id(), run_name=f"{i}-{label}", tags=tags, start_time=int(1e3 * self.t0))
            params = [Param(k, v) for k, v in flatten(self.spec).items()]
            for j in range(0, len(params), _MAX_PARAMS):
                self.client.log_batch(run.info.run_id, params=params[j : j + _MAX_PARAMS])
            self.runs[label] = run.info.run_id
        return self.runs[label]

    def write(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        label = record.get("method")
        if label not in self.labels:
            return
        step, ms = int(record["step"]), int(1e3 * (self.t0 + float(record.get("wall_s") or 0.0)))
        metrics = [
            Metric(key, float(v), ms, step)
            for key, v in record.items()
            if key not in ("method", "step") and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        ]
        run_id = self._run(label)
        for j in range(0, len(metrics), _MAX_METRICS):
            self.client.log_batch(run_id, metrics=metrics[j : j + _MAX_METRICS])

    def finish(self, label: str, status: str) -> None:
        """The method ended: its MLflow run gets seqpar's status as a tag and MLflow's matching run status."""
        run_id = self.runs.pop(label, None)
        if run_id is None:
            return
        self.client.set_tag(run_id, "status", status)
        self.client.set_terminated(run_id, _RUN_STATUS.get(status, "FAILED"))

    def close(self) -> None:
        for label in list(self.runs):  # the run ended before the method did (a crash, a full disk)
            self.finish(label, "failed")

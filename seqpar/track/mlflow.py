"""MLflow as a live tracker (`--tracker mlflow`): one MLflow run per method, written as the run goes.

    experiment: the spec's name      run: the method's label
    params:     the resolved spec, flattened to dotted keys (`task.length`, `methods.0.optimizer.lr`)
    metrics:    every key of every logged line (`rollout_loss_test`, `train_objective`, `wall_s`, ...) at its step
    tags:       `method` (the label), `method_type`, `status` (seqpar's: completed, diverged, failed,
                interrupted), `seqpar.run_dir`; a resumed method's new run adds `resumed_from_step`

The tracking URI is any MLflow store: a server (`http://host:5000`), a database
(`sqlite:///mlflow.db`) or a file store. The default is what MLflow recommends for local
use, a SQLite database in the run directory, `RUN_DIR/mlflow.db` (its artifact root
`RUN_DIR/mlartifacts`, though seqpar logs no artifacts): no server, nothing outside the
run, and any process reads it back as it is (`mlflow ui --backend-store-uri
sqlite:///RUN_DIR/mlflow.db`). MLflow 3 keeps its file store only on request
(`MLFLOW_ALLOW_FILE_STORE=true`), so for an explicit `file:` store this sets that in its own
process unless the environment says otherwise, and readers must set it too.

`check_uri` refuses, before anything is written, a URI MLflow cannot open (an unknown
scheme) or a server that does not answer. A store that fails later (a server that goes
down mid-run) costs MLflow the rest of the run, not the run: the first failed call (after
MLflow's own retries) is reported once on stderr, MLflow receives nothing more, and
training, metrics.jsonl and the other trackers carry on.

Wall times are the run's start plus its training seconds, as in TensorBoard. MLflow cannot
delete points, so a resumed method logs into a new MLflow run from the step after its
checkpoint. Non-finite values are skipped (metrics.jsonl holds none either). Needs the optional
`mlflow` (`pip install 'seqpar[mlflow]'`), imported only when a run asks for it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from seqpar.records.layout import MLFLOW_ARTIFACTS, MLFLOW_DB
from seqpar.records.reader import flatten as dotted
from seqpar.records.writer import within_run

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
    """The SQLite store `RUN_DIR/mlflow.db`, as the absolute `sqlite:////...` URI MLflow expects."""
    return f"sqlite:///{(Path(run_dir) / MLFLOW_DB).resolve()}"


def is_file_store(uri: str) -> bool:
    """A `file:` URI or a plain path: MLflow's file store (`databricks` has no `://` either, and is not one)."""
    return uri.startswith("file:") or ("://" not in uri and not uri.startswith("databricks"))


def ui_command(run_dir: Path, tracking_uri: str | None = None) -> str:
    """The command that shows a run's MLflow runs (for a server URI: open it in a browser)."""
    if tracking_uri is None:
        return f"mlflow ui --backend-store-uri sqlite:///{Path(run_dir) / MLFLOW_DB}"
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri}"
    prefix = "MLFLOW_ALLOW_FILE_STORE=true " if is_file_store(tracking_uri) else ""
    return f"{prefix}mlflow ui --backend-store-uri {tracking_uri}"


def check_uri(uri: str, timeout_s: float = 5.0) -> None:
    """ValueError (one line naming --tracking-uri) for a URI MLflow cannot open: a scheme it does not
    know, or a server that does not answer. Writes nothing: a database is created by the run itself."""
    try:  # MLflow's own table of store schemes (private: where it moved, the run reports what fails)
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry as registry
    except ImportError:  # pragma: no cover - another MLflow layout
        registry = None
    if registry is not None:
        try:
            registry.get_store_builder(uri)
        except Exception:  # noqa: BLE001 - MLflow's UnsupportedModelRegistryStoreURIException and kin
            raise ValueError(
                f"--tracking-uri {uri}: not a tracking URI MLflow can open; expected a server (http://HOST:PORT), "
                "a database (sqlite:///FILE.db, postgresql://...) or a file store (file:///DIR)"
            ) from None
    if uri.startswith(("http://", "https://")):
        import ssl
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).close()
        except urllib.error.HTTPError:
            pass  # something answered (a login, a proxy): MLflow's own calls will tell
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, ssl.SSLError):
                return  # it answered, with a certificate MLflow may be told to accept (MLFLOW_TRACKING_INSECURE_TLS)
            raise ValueError(
                f"--tracking-uri {uri}: no MLflow server answers there ({reason}); start it, "
                "or leave --tracking-uri out for the run directory's own store"
            ) from None


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """A spec as MLflow params: the record reader's dotted keys (list items by index), values as text."""
    return {k: (json.dumps(v) if isinstance(v, list) else str(v))[:_MAX_PARAM_CHARS] for k, v in dotted(value, prefix).items()}


class MlflowTracker:
    """Tracker backend: each method's lines go to its own MLflow run, created at its first line.

    The first call that fails (a server gone, a database locked) is reported once on stderr;
    from then on this backend ignores the run, which goes on."""

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
        self.own_store = tracking_uri is None
        if is_file_store(self.uri):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        for name in ("mlflow.store.db.utils", "alembic"):  # "Creating initial MLflow database tables..." on every new run
            logging.getLogger(name).setLevel(logging.WARNING)
        self.run_dir, self.labels, self.t0 = Path(run_dir), labels, t0
        self.spec = summary["spec"]
        self.resumed_from = resumed_from or {}
        self.name = str(summary.get("name") or self.spec.get("name"))
        self._experiment: str | None = None
        self.runs: dict[str, str] = {}  # label -> MLflow run id
        self.error: str | None = None  # set by the first failed call: MLflow is left alone from then on
        self.client: Any = None

        def connect() -> None:
            from mlflow.tracking import MlflowClient

            if self.own_store:
                within_run(self.run_dir, self.run_dir / MLFLOW_DB)
            self.client = MlflowClient(tracking_uri=self.uri)
            self._experiment_id()  # creates the database now, not inside the first method's timing

        self._guard(connect)

    def _guard(self, call: Any) -> None:
        if self.error is not None:
            return
        try:
            call()
        except Exception as e:  # noqa: BLE001 - a tracker failing must not fail the run
            self.error = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            sys.stderr.write(
                f"warning: --tracker mlflow: {self.uri}: {type(e).__name__}: {self.error}; "
                "MLflow receives nothing more from this run, which goes on (metrics.jsonl holds every point)\n"
            )
            sys.stderr.flush()

    def _experiment_id(self) -> str:
        if self._experiment is None:
            found = self.client.get_experiment_by_name(self.name)
            if found is not None:
                self._experiment = str(found.experiment_id)
            else:
                where = (self.run_dir / MLFLOW_ARTIFACTS).resolve().as_uri() if self.own_store else None
                self._experiment = str(self.client.create_experiment(self.name, artifact_location=where))
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
        label = record.get("method")
        if label not in self.labels or self.error is not None:
            return

        def log() -> None:
            from mlflow.entities import Metric

            step, ms = int(record["step"]), int(1e3 * (self.t0 + float(record.get("wall_s") or 0.0)))
            metrics = [
                Metric(key, float(v), ms, step)
                for key, v in record.items()
                if key not in ("method", "step") and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            ]
            run_id = self._run(label)
            for j in range(0, len(metrics), _MAX_METRICS):
                self.client.log_batch(run_id, metrics=metrics[j : j + _MAX_METRICS])

        self._guard(log)

    def finish(self, label: str, status: str) -> None:
        """The method ended: its MLflow run gets seqpar's status as a tag and MLflow's matching run status."""
        run_id = self.runs.pop(label, None)
        if run_id is None:
            return

        def end() -> None:
            self.client.set_tag(run_id, "status", status)
            self.client.set_terminated(run_id, _RUN_STATUS.get(status, "FAILED"))

        self._guard(end)

    def close(self) -> None:
        for label in list(self.runs):  # the run ended before the method did (a crash, a full disk)
            self.finish(label, "failed")

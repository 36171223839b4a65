"""Run every method of a spec into one run directory (spec.yaml, metrics.jsonl, summary.json)."""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

from seqpar.results import SCHEMA_VERSION, MetricsLog, atomic_write_json, atomic_write_text, environment
from seqpar.spec import Spec, spec_to_yaml
from seqpar.train import NullProgress, Progress, build_experiment, run_method


def run_experiment(spec: Spec, run_dir: Path, progress: Progress | None = None) -> dict[str, Any]:
    """Train all methods; `summary.json` is rewritten after each, so nothing finished is ever lost."""
    run_dir = Path(run_dir)
    atomic_write_text(run_dir / "spec.yaml", spec_to_yaml(spec))
    summary: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "name": spec.name,
        "seed": spec.seed,
        "status": "running",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "spec": spec.model_dump(mode="json"),
        "env": environment(),
        "runs": [],
    }
    atomic_write_json(run_dir / "summary.json", summary)
    log = MetricsLog(run_dir / "metrics.jsonl")
    try:
        exp = build_experiment(spec)
        summary["task"] = {"baseline_loss": exp.task.baseline_loss, "baseline_formula": exp.task.baseline_formula, "loss": exp.task.loss_name}
        for cfg in spec.methods:
            try:
                record = run_method(exp, cfg, log.write, progress or NullProgress())
            except Exception as e:  # one method's crash must not lose the others
                record = {"method": cfg.type, "label": cfg.display_label, "status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            summary["runs"].append(record)
            atomic_write_json(run_dir / "summary.json", summary)
            if record["status"] == "interrupted":
                break
    finally:
        log.close()
        statuses = {r["status"] for r in summary["runs"]}
        interrupted = "interrupted" in statuses or len(summary["runs"]) < len(spec.methods)
        summary["status"] = "interrupted" if interrupted else "failed" if "failed" in statuses else "completed"
        summary["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        atomic_write_json(run_dir / "summary.json", summary)
    return summary

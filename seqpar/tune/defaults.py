"""Tuning must handicap no method: the untuned default as a reference every tuned setting must beat.

A study can make a method look worse than it is: a pruner that stops a method's good
trials before they learn (in a lag-4 study the median pruner stopped 9 of BPTT's 12
trials, and BPTT's tuned number came out worse than its untuned one), or a search that
never samples near the default. So every study also runs the spec exactly as written
(each method untuned, the spec's seed and budget, never pruned) into `defaults/` of the
study directory, a one-point sweep claimed like any other, and judges it on validation
with the study's objective. `best.yaml` then takes, per method, the better of its best
trial and its default, and `tune.json` says which and by how much (`default`), so a
tuned number worse than the untuned one is reported and never published.

The pruning rule (`seqpar.tune.space.pruner_warmup`): a trial may be pruned only in the
second half of its budget, once it has had half the steps every completed trial gets.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from seqpar.records.layout import DEFAULTS, SUMMARY
from seqpar.records.reader import BadRecord, read_metrics, read_summary
from seqpar.sweep.claim import Owner
from seqpar.sweep.launch import WorkerJob
from seqpar.tune.space import TunePlan

POLL_S = 2.0


def defaults_dir(study_dir: Path) -> Path:
    return Path(study_dir) / DEFAULTS


def run_defaults(plan: TunePlan, study_dir: Path, job: WorkerJob, signals: Callable[[], bool]) -> bool:
    """Run (claim) the untuned spec into `defaults/`; True if stopped. A worker that finds it taken moves on."""
    from seqpar.sweep.execute import prepare_sweep_dir, rebuild_index, work_points
    from seqpar.sweep.plan import expand
    from seqpar.train.runner import run_experiment

    d = defaults_dir(study_dir)
    default_plan = expand(plan.base, source=f"{plan.source} (untuned defaults)")
    prepare_sweep_dir(default_plan, d)

    def run_point(spec, point_dir):
        return run_experiment(spec, point_dir, stop=signals, resume=True, tensorboard=job.tensorboard)  # type: ignore[arg-type]

    stopped = work_points(default_plan, d, run_point, owner=Owner.me(job.session), resume=True, since=job.since, stop=signals)
    rebuild_index(default_plan, d, final=True)
    return stopped


def _summary(study_dir: Path) -> dict[str, Any] | None:
    for path in sorted(defaults_dir(study_dir).glob(f"*/{SUMMARY}")):
        try:
            return read_summary(path.parent)
        except BadRecord:
            return None
    return None


def wait_for_defaults(study_dir: Path, signals: Callable[[], bool], poll_s: float = POLL_S, give_up_s: float | None = None) -> bool:
    """Block until another worker's defaults run has finished (or stopped); True if stopped by a signal."""
    start = time.time()
    while not signals():
        s = _summary(study_dir)
        if s is None or s.get("status") != "running":
            return False
        if give_up_s is not None and time.time() - start > give_up_s:
            return False
        time.sleep(poll_s)
    return True


def default_values(plan: TunePlan, study_dir: Path) -> dict[str, float | None]:
    """Per method label: its untuned validation loss by the study's objective (inf: diverged; None: no value)."""
    s = _summary(study_dir)
    out: dict[str, float | None] = dict.fromkeys(plan.labels)
    if s is None:
        return out
    path = next(iter(sorted(defaults_dir(study_dir).glob(f"*/{SUMMARY}")))).parent
    lines = read_metrics(path)
    for r in s["runs"]:
        label = r["label"]
        if label not in out:
            continue
        if r["status"] == "diverged":
            out[label] = math.inf  # as a diverged trial is told: it loses
        elif r["status"] == "completed":
            out[label] = objective_value(plan, r, [ln for ln in lines if ln.get("method") == label])
    return out


def objective_value(plan: TunePlan, record: dict[str, Any], lines: list[dict[str, Any]]) -> float | None:
    """The study's objective for one run record: its final validation loss, or the best over its evaluations
    (step 0 included, as the trials' tracker counts it)."""
    if plan.tune.objective == "best":
        vals = [v for ln in lines if isinstance(v := ln.get("rollout_loss_val"), (int, float)) and math.isfinite(v)]
        return min(vals) if vals else None
    v = (record.get("final") or {}).get("rollout_loss_val")
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def verdict(best_value: float | None, default_value: float | None) -> str:
    """`tuned` (the best trial is at least as good as the default), `default` (the default is better:
    it is kept), or `unchecked` (the default has no value: not run, failed or interrupted)."""
    if default_value is None:
        return "unchecked"
    if math.isfinite(default_value) and (best_value is None or not math.isfinite(best_value) or best_value > default_value):
        return "default"
    return "tuned"

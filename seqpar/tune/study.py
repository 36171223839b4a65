"""Driving Optuna: one study per method, trials as ordinary run records, the best re-run on test.

A study directory (`seqpar.records.layout`) holds the spec as tuned (`tune.yaml`), the
Optuna storage (`study.journal`, unless `--storage URL`), one run record per trial under
`trials/<index>-<label>/<number>/`, `best.yaml`, the final re-runs under `final/` and the
summary `tune.json`.

Why a journal file by default: Optuna's `JournalFileBackend` appends operations to one
log under a lock that works over NFS (a symlink lock), where SQLite's own file locking is
known to be unreliable; it needs no database server and `optuna-dashboard` opens it.

Every worker (this process, local processes, SLURM array tasks, other hosts) runs
`tune_worker`: it asks each method's study for trials until that method has `trials`
completed or pruned ones, waits for trials other workers run, then takes part in the
final re-runs (claimed like sweep points). Asking happens under a lock file in the study
directory with the budget counted inside it, so workers never overshoot: a trial is
counted once it is running. A trial whose worker died (its claim is stale: see
`seqpar.sweep.claim`) is marked FAIL by the next worker that asks, and another trial
takes its place, so a SIGKILL neither loses a trial nor counts one twice.

The objective is the validation rollout loss (final, or best over evals); the pruner is
fed the validation losses the loop already computes at eval points (a tracker), never an
extra evaluation. The test split is read only from the final re-runs.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import secrets
import shutil
import socket
import statistics
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from seqpar.records.identity import IdentityError, check_data, data_identity
from seqpar.records.layout import (
    BEST_SPEC,
    CHECKPOINTS,
    FINAL,
    STUDY_ID,
    STUDY_JOURNAL,
    STUDY_LOCK,
    SUMMARY,
    TRIALS,
    TUNE_INDEX,
    TUNE_SPEC,
    method_dirname,
)
from seqpar.records.reader import BadRecord, read_summary
from seqpar.records.writer import atomic_write_json, atomic_write_text
from seqpar.spec import SpecError, validate_spec
from seqpar.sweep.claim import Owner, file_lock, is_live, pid_alive, read_claim, try_claim
from seqpar.sweep.launch import WorkerJob
from seqpar.train.runner import StopRequest
from seqpar.tune.defaults import default_values, run_defaults, verdict, wait_for_defaults
from seqpar.tune.space import TunePlan, load_tune, pruner_warmup, spec_yaml

POLL_S = 2.0
LOST = "lost"  # user attribute of a trial marked FAIL because its worker died: replaced, never counted against the space


class StudyDirMismatch(Exception):
    """The directory holds another study; the message is one line (exit 2)."""


class StorageError(Exception):
    """`--storage URL` cannot be opened (unknown scheme, missing directory, no server); one line (exit 2)."""


# ----------------------------------------------------------------------------- storage and studies


def storage_for(study_dir: Path, url: str | None = None, attempts: int = 5) -> Any:
    """`--storage URL` (any Optuna RDB URL: sqlite:///, postgresql://, mysql://), else the journal file in the directory.

    Two commands opening one new database at once race to create its tables (SQLite says
    "UNIQUE constraint failed: alembic_version.version_num"): the loser waits and opens the
    tables the winner made; after `attempts` tries it is a StorageError that says so."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not url:
        return JournalStorage(JournalFileBackend(str(Path(study_dir) / STUDY_JOURNAL)))
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url)
        except Exception as e:  # SQLAlchemy's OperationalError, IntegrityError, NoSuchModuleError, ArgumentError; a missing driver
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            if not _creating_tables(reason):
                raise StorageError(f"--storage {url}: cannot open this Optuna storage ({reason})") from None
            if attempt + 1 == attempts:
                raise StorageError(
                    f"--storage {url}: another process kept creating this storage's tables at the same moment ({reason}); "
                    "run the command again once it has started"
                ) from None
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def _creating_tables(reason: str) -> bool:
    """The error of a database whose schema another process is creating right now."""
    return "alembic_version" in reason or "already exists" in reason or "database is locked" in reason


def study_tag(study_dir: Path, url: str | None) -> str:
    """What makes a directory's study names its own in a shared `--storage URL`: `@<directory>.<id>`,
    the id written once when the directory was created (the same on every host that shares it).
    Empty for the directory's own journal, and for a study directory from before ids existed."""
    if not url:
        return ""
    try:
        ident = (Path(study_dir) / STUDY_ID).read_text().strip()
    except OSError:
        return ""
    return f"@{Path(study_dir).name[:40]}.{ident}" if ident else ""


def study_name(plan: TunePlan, index: int, tag: str = "") -> str:
    return f"{plan.spec.name}.{method_dirname(index, plan.labels[index])}{tag}"


def _sampler(plan: TunePlan, salt: int) -> Any:
    import optuna

    cfg = plan.tune.sampler
    seed = (plan.spec.seed if cfg.seed is None else cfg.seed) + salt
    if cfg.type == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # constant_liar: trials still running elsewhere count as bad guesses, so parallel workers spread out.
    startup = 10 if cfg.startup_trials is None else cfg.startup_trials  # Optuna's default
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, constant_liar=True)


def _pruner(plan: TunePlan) -> Any:
    import optuna

    cfg = plan.tune.pruner
    # Either pruner judges a trial only in the second half of its budget (`pruner_warmup`).
    if cfg.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.startup_trials, n_warmup_steps=pruner_warmup(plan))
    if cfg.type == "hyperband":
        tr = plan.spec.train
        return optuna.pruners.HyperbandPruner(min_resource=max(tr.eval_every, pruner_warmup(plan)), max_resource=tr.steps)
    return optuna.pruners.NopPruner()


def open_studies(plan: TunePlan, study_dir: Path, storage: Any, salt: int = 0, tag: str = "") -> list[Any]:
    """One study per method (created by whichever worker comes first, under the study lock)."""
    import optuna

    with file_lock(Path(study_dir) / STUDY_LOCK):
        studies = []
        for i in range(len(plan.labels)):
            try:  # a continued study draws a fresh stream, not the first trials again
                done = len(storage.get_all_trials(storage.get_study_id_from_name(study_name(plan, i, tag)), deepcopy=False))
            except KeyError:
                done = 0
            study = optuna.create_study(
                study_name=study_name(plan, i, tag),
                storage=storage,
                sampler=_sampler(plan, salt + 7919 * i + 104_729 * done),
                pruner=_pruner(plan),
                direction="minimize",
                load_if_exists=True,
            )
            if not study.user_attrs:
                study.set_user_attr("method", plan.labels[i])
                study.set_user_attr("trials", plan.tune.trials)
                study.set_user_attr("steps", plan.spec.train.steps)
                study.set_user_attr("objective", f"{plan.tune.objective} validation rollout loss")
            studies.append(study)
    return studies


def counts(study: Any) -> dict[str, int]:
    from optuna.trial import TrialState

    out = {"completed": 0, "pruned": 0, "failed": 0, "running": 0, "lost": 0}
    names = {TrialState.COMPLETE: "completed", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed", TrialState.RUNNING: "running"}
    for t in study.get_trials(deepcopy=False):
        if t.state in names:
            out[names[t.state]] += 1
        out["lost"] += t.state == TrialState.FAIL and bool(t.user_attrs.get(LOST))
    return out


def gave_up(c: dict[str, int], trials: int) -> bool:
    """As many trials failed as the budget: the space is broken. Trials lost with their worker do not count."""
    return c["failed"] - c["lost"] >= trials


def fail_dead_trials(study: Any, study_dir: Path) -> list[int]:
    """Mark FAIL (and `lost`) every RUNNING trial whose worker is gone (stale claim); their numbers.

    Call under the study lock: a trial is asked and given its attributes under it, so a
    RUNNING trial seen there without them was asked by a worker killed in between."""
    from optuna.trial import TrialState

    failed = []
    now, here = time.time(), socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        rel = t.user_attrs.get("dir")
        info = read_claim(Path(study_dir) / rel) if rel else None
        if info is not None:
            dead = not is_live(info, now)
        elif "worker" not in t.user_attrs:
            dead = True
        else:  # asked but not yet claimed: judge by the asking process, if it ran here
            host, _, pid = str(t.user_attrs.get("worker", "")).partition(":")
            dead = host == here and pid.isdigit() and not pid_alive(int(pid))
        if dead:
            with contextlib.suppress(Exception):  # another worker marked it first
                study._storage.set_trial_user_attr(t._trial_id, LOST, True)  # Optuna's public API sets attrs only from a live Trial
                study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
                failed.append(t.number)
    return failed


# ----------------------------------------------------------------------------- one trial


class _TrialStop(StopRequest):
    """The stop flag a trial's run polls: the worker's signal handler, or the pruner."""

    def __init__(self, signals: Callable[[], bool]):
        super().__init__()
        self.signals = signals
        self.pruned_at: int | None = None

    def __call__(self) -> bool:
        return self.signals() or self.pruned_at is not None


class _Report:
    """Tracker backend: each eval point's validation rollout loss goes to Optuna (report, should_prune)."""

    def __init__(self, trial: Any, stop: _TrialStop):
        self.trial, self.stop = trial, stop
        self.best = math.inf

    def write(self, record: dict[str, Any]) -> None:
        v = record.get("rollout_loss_val")
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            return
        self.best = min(self.best, v)
        step = int(record["step"])
        if step == 0:
            return  # every trial starts from the same weights: step 0 says nothing about a configuration
        self.trial.report(float(v), step)
        if self.stop.pruned_at is None and self.trial.should_prune():
            self.stop.pruned_at = step

    def close(self) -> None:
        pass


def run_trial(
    plan: TunePlan, index: int, study: Any, trial: Any, study_dir: Path, signals: Callable[[], bool], tensorboard: bool
) -> dict[str, Any]:
    """Sample, train, tell. Returns the trial's outcome (state, value, status, dir)."""
    from optuna.trial import TrialState

    from seqpar.train.runner import run_experiment

    rel = trial.user_attrs["dir"]
    trial_dir = Path(study_dir) / rel
    claim = try_claim(trial_dir, Owner.me(trial.user_attrs["session"]))
    if claim is None:  # cannot happen: the trial number is new
        study.tell(trial, state=TrialState.FAIL)
        return {"state": "failed", "error": "trial directory already claimed"}
    stop = _TrialStop(signals)
    report = _Report(trial, stop)
    outcome: dict[str, Any] = {"dir": rel}
    try:
        values = plan.sample(index, trial)
        spec = validate_spec(plan.trial_raw(index, values), source=f"trial {trial.number}")
        summary = run_experiment(spec, trial_dir, stop=stop, trackers=[report], tensorboard=tensorboard)
        record = summary["runs"][0] if summary.get("runs") else {"status": summary.get("status", "failed"), "error": summary.get("error")}
        status = record["status"]
        if status == "interrupted" and stop.pruned_at is not None and not signals():
            status = _mark_pruned(trial_dir, stop.pruned_at)
        final = (record.get("final") or {}).get("rollout_loss_val")
        value = report.best if plan.tune.objective == "best" else final
        outcome.update(status=status, error=record.get("error"))
        trial.set_user_attr("status", status)
        if status == "pruned":
            study.tell(trial, state=TrialState.PRUNED)
            outcome["state"] = "pruned"
        elif status == "diverged":
            study.tell(trial, math.inf)  # a configuration that diverges loses, whatever it reached before
            outcome.update(state="completed", value=math.inf)
        elif status == "completed" and isinstance(value, (int, float)) and math.isfinite(value):
            study.tell(trial, float(value))
            outcome.update(state="completed", value=float(value))
        else:
            trial.set_user_attr("error", str(record.get("error") or f"status {status}"))
            study.tell(trial, state=TrialState.FAIL)
            outcome["state"] = "failed"
    except SpecError as e:  # a combination inside the space the method refuses
        trial.set_user_attr("error", str(e))
        study.tell(trial, state=TrialState.FAIL)
        outcome.update(state="failed", status="failed", error=str(e))
    except Exception as e:
        trial.set_user_attr("error", f"{type(e).__name__}: {e}")
        study.tell(trial, state=TrialState.FAIL)
        outcome.update(state="failed", status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
    claim.finish(outcome.get("status", "failed"), **{k: v for k, v in outcome.items() if k in ("error", "traceback")})
    return outcome


def _mark_pruned(trial_dir: Path, step: int) -> str:
    """The run stopped because the pruner said so: record it as `pruned`, not `interrupted`."""
    summary = read_summary(trial_dir)
    for r in summary["runs"]:
        if r["status"] == "interrupted":
            r.update(status="pruned", pruned_at_step=step)
    summary["status"] = "pruned"
    atomic_write_json(trial_dir / SUMMARY, summary)
    shutil.rmtree(trial_dir / CHECKPOINTS, ignore_errors=True)  # they only serve resuming, and a pruned trial is final
    return "pruned"


# ----------------------------------------------------------------------------- the worker


def next_trial(plan: TunePlan, index: int, study: Any, study_dir: Path, owner: Owner) -> Any | None:
    """Ask for a trial of method `index` if its budget allows one, under the study lock (never overshoots)."""
    with file_lock(Path(study_dir) / STUDY_LOCK):
        fail_dead_trials(study, study_dir)
        c = counts(study)
        if c["completed"] + c["pruned"] + c["running"] >= plan.tune.trials or gave_up(c, plan.tune.trials):
            return None
        trial = study.ask()
        rel = f"{TRIALS}/{method_dirname(index, plan.labels[index])}/{trial.number:04d}"
        trial.set_user_attr("dir", rel)
        trial.set_user_attr("session", owner.session)
        trial.set_user_attr("worker", f"{owner.host}:{owner.pid}")
        return trial


def search_done(plan: TunePlan, studies: list[Any]) -> bool:
    """Every method has its trials (or has failed as many times), and none is running."""
    for s in studies:
        c = counts(s)
        if c["running"] or (c["completed"] + c["pruned"] < plan.tune.trials and not gave_up(c, plan.tune.trials)):
            return False
    return True


def search(
    plan: TunePlan,
    study_dir: Path,
    studies: list[Any],
    owner: Owner,
    signals: Callable[[], bool],
    on_trial: Callable[[str, Any, dict[str, Any]], None] = lambda label, trial, outcome: None,
    tensorboard: bool = False,
    poll_s: float = POLL_S,
) -> bool:
    """Run trials until every method's budget is met (waiting for other workers' trials); True if stopped."""
    while True:
        for i, study in enumerate(studies):
            while not signals():
                trial = next_trial(plan, i, study, study_dir, owner)
                if trial is None:
                    break
                outcome = run_trial(plan, i, study, trial, study_dir, signals, tensorboard)
                on_trial(plan.labels[i], trial, outcome)
        if signals():
            return True
        with file_lock(Path(study_dir) / STUDY_LOCK):
            for study in studies:
                fail_dead_trials(study, study_dir)
        if search_done(plan, studies):
            return False
        time.sleep(poll_s)  # trials of other workers are still running


def best_trials(plan: TunePlan, studies: list[Any]) -> dict[str, Any]:
    """Per method label: its best completed trial with a finite value (None when it has none)."""
    from optuna.trial import TrialState

    out: dict[str, Any] = {}
    for label, study in zip(plan.labels, studies, strict=True):
        done = [
            t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None and math.isfinite(t.value)
        ]
        out[label] = min(done, key=lambda t: (t.value, t.number)) if done else None
    return out


def best_spec(plan: TunePlan, studies: list[Any], defaults: dict[str, float | None] | None = None) -> tuple[dict[str, Any] | None, str]:
    """`best.yaml`: the base spec with each method's winning values, swept over the tune seeds; and its header.

    `defaults`: each method's untuned validation loss (`seqpar.tune.defaults`); a method whose
    best trial does not beat it keeps its untuned settings, and the header says so."""
    best = best_trials(plan, studies)
    methods, lines = [], []
    for i, label in enumerate(plan.labels):
        t = best[label]
        d = (defaults or {}).get(label)
        if verdict(None if t is None else t.value, d) == "default":
            methods.append(copy.deepcopy(plan.base["methods"][i]))
            beaten = "no completed trial" if t is None else f"best trial {t.number}: {t.value:.4g}"
            lines.append(f"#   {label}: untuned default kept: validation rollout loss {d:.4g} ({beaten})")
            continue
        if t is None:
            lines.append(f"#   {label}: no completed trial (left out)")
            continue
        methods.append(plan.trial_raw(i, _values(plan, i, t))["methods"][0])
        ref = "" if d is None else f" (untuned default {d:.4g})"
        lines.append(f"#   {label}: trial {t.number}, validation rollout loss {t.value:.4g}{ref}, {_params(t.params)}")
    if not methods:
        return None, ""
    raw = {k: v for k, v in plan.base.items() if k != "methods"}
    raw["methods"] = methods
    raw["sweep"] = {"seed": list(plan.tune.seeds)}
    header = [
        f"# The winners of the study in this directory ({plan.tune.trials} trials per method, "
        f"{plan.spec.train.steps} steps each, {plan.tune.objective} validation rollout loss):",
        *lines,
        "# Re-run on the test split with the study's seeds:",
        "#   seqpar run best.yaml",
    ]
    return raw, "\n".join(header) + "\n"


def _values(plan: TunePlan, index: int, trial: Any) -> dict[str, Any]:
    """A finished trial's values as the spec takes them (choices mapped back from their labels)."""
    from seqpar.tune.space import sample

    class Replay:
        def suggest_float(self, name, low, high, *, step=None, log=False):
            return trial.params[name]

        def suggest_int(self, name, low, high, *, step=1, log=False):
            return trial.params[name]

        def suggest_categorical(self, name, choices):
            return trial.params[name]

    return sample(plan.tune.space[plan.labels[index]], Replay())


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={format(v, '.4g') if isinstance(v, float) else v}" for k, v in params.items())


def final_runs(plan: TunePlan, study_dir: Path, studies: list[Any], job: WorkerJob, signals: Callable[[], bool]) -> bool:
    """Write best.yaml and run (claim) its points into final/; True if stopped."""
    from seqpar.sweep.execute import prepare_sweep_dir, rebuild_index, work_points
    from seqpar.sweep.plan import expand
    from seqpar.train.runner import run_experiment

    if wait_for_defaults(study_dir, signals):  # another worker may still be running them
        return True
    raw, header = best_spec(plan, studies, default_values(plan, study_dir))
    if raw is None:
        return False
    best_path = Path(study_dir) / BEST_SPEC
    text = header + spec_yaml(raw)
    with file_lock(Path(study_dir) / STUDY_LOCK):
        if not best_path.exists() or best_path.read_text() != text:
            atomic_write_text(best_path, text)
        final_plan = expand(raw, source=str(best_path))
        prepare_sweep_dir(final_plan, Path(study_dir) / FINAL)
    owner = Owner.me(job.session)

    def run_point(spec, d):
        # resume: a point taken over from a dead worker continues its checkpoints; a fresh one simply starts.
        return run_experiment(spec, d, stop=signals, resume=True, tensorboard=job.tensorboard)  # type: ignore[arg-type]

    # A re-run of the command retakes points a dead worker left (resume), never a completed one.
    stopped = work_points(final_plan, Path(study_dir) / FINAL, run_point, owner=owner, resume=True, since=job.since, stop=signals)
    rebuild_index(final_plan, Path(study_dir) / FINAL, final=True)
    return stopped


TUNE_WORKER = f"{__name__}:tune_worker"  # the entry point a launched study worker runs


def tune_worker(job: WorkerJob, on_trial: Callable[[str, Any, dict[str, Any]], None] | None = None) -> int:
    """One worker's whole life: search, wait for the other workers' trials, take part in the final re-runs."""
    from seqpar.train.runner import stop_on_signals

    study_dir = Path(job.directory)
    plan = load_tune(study_dir / TUNE_SPEC, max_trials=None)  # its size was accepted when it started
    storage = storage_for(study_dir, job.options.get("storage"))
    owner = Owner.me(job.session)
    salt = 1000 * job.worker  # workers draw different trials; one worker on a fresh study is reproducible

    def say(label: str, trial: Any, outcome: dict[str, Any]) -> None:
        print(f"{label} trial {trial.number}: {outcome.get('state')} {outcome.get('value', '')} {_params(trial.params)}", flush=True)

    with stop_on_signals() as stop:
        studies = open_studies(plan, study_dir, storage, salt, study_tag(study_dir, job.options.get("storage")))
        if run_defaults(plan, study_dir, job, stop):  # the untuned reference, once per study (claimed)
            return 130
        if search(plan, study_dir, studies, owner, stop, on_trial or say, job.tensorboard):
            return 130
        if final_runs(plan, study_dir, studies, job, stop):
            return 130
    return 0


# ----------------------------------------------------------------------------- the report


class TrialPrinter:
    """For the launching process: report each trial the workers finish, once, by polling the storage."""

    def __init__(self, plan: TunePlan, storage: Any, say: Callable[[str, Any, dict[str, Any]], None], tag: str = ""):
        self.plan, self.storage, self.say, self.tag = plan, storage, say, tag
        self.seen: set[tuple[int, int]] = set()

    def poll(self) -> None:
        import optuna
        from optuna.trial import TrialState

        states = {TrialState.COMPLETE: "completed", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}
        for i, label in enumerate(self.plan.labels):
            try:
                study = optuna.load_study(study_name=study_name(self.plan, i, self.tag), storage=self.storage)
            except KeyError:  # not created yet
                continue
            for t in study.get_trials(deepcopy=False):
                if t.state in states and (i, t.number) not in self.seen:
                    self.seen.add((i, t.number))
                    outcome = {"state": states[t.state], "status": t.user_attrs.get("status", states[t.state])}
                    if t.state == TrialState.COMPLETE:
                        outcome["value"] = t.value
                    self.say(label, t, outcome)


def report(plan: TunePlan, study_dir: Path, storage: Any, tag: str = "") -> dict[str, Any]:
    """The study's summary (`tune.json`): per method its trials, best, and test loss over the final seeds."""
    import optuna

    studies = [optuna.load_study(study_name=study_name(plan, i, tag), storage=storage) for i in range(len(plan.labels))]
    best = best_trials(plan, studies)
    defaults = default_values(plan, study_dir)
    finals = _final_results(Path(study_dir) / FINAL)
    methods = []
    for i, (label, study) in enumerate(zip(plan.labels, studies, strict=True)):
        trials = study.get_trials(deepcopy=False)
        spent = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials if t.datetime_complete and t.datetime_start)
        t = best[label]
        runs = finals.get(label, [])
        test = [r["rollout_loss_test"] for r in runs if r.get("rollout_loss_test") is not None]
        baseline = next((r["baseline_loss"] for r in runs if r.get("baseline_loss") is not None), None)
        methods.append(
            {
                "method": label,
                "study": study_name(plan, i, tag),
                "trials": counts(study),
                "time_s": spent,
                "best": None if t is None else {"trial": t.number, "value": t.value, "params": t.params, "dir": t.user_attrs.get("dir")},
                # The untuned spec's validation loss and which of the two best.yaml took (tuned, default, unchecked).
                "default": {"value": defaults[label], "chosen": verdict(None if t is None else t.value, defaults[label])},
                "final": runs,
                "test_mean": statistics.fmean(test) if test else None,
                "test_std": statistics.stdev(test) if len(test) > 1 else (0.0 if test else None),
                "baseline_loss": baseline,
                "worse_than_baseline": bool(test and baseline is not None and statistics.fmean(test) >= baseline),
            }
        )
    index = {
        "kind": "study",
        "name": plan.spec.name,
        "trials_per_method": plan.tune.trials,
        "steps_per_trial": plan.spec.train.steps,
        "objective": f"{plan.tune.objective} validation rollout loss",
        "seeds": list(plan.tune.seeds),
        "sampler": plan.tune.sampler.type,
        "pruner": plan.tune.pruner.type,
        "methods": methods,
    }
    atomic_write_json(Path(study_dir) / TUNE_INDEX, index)
    return index


def _final_results(final_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Per method label, one entry per final seed (from the run records, in seed order)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for summary_path in sorted(final_dir.glob(f"*/{SUMMARY}")):
        try:
            s = read_summary(summary_path.parent)
        except BadRecord:
            continue
        for r in s["runs"]:
            f = r.get("final") or {}
            out.setdefault(r["label"], []).append(
                {
                    "seed": s.get("seed"),
                    "status": r["status"],
                    "rollout_loss_test": f.get("rollout_loss_test"),
                    "rollout_loss_val": f.get("rollout_loss_val"),
                    "baseline_loss": r.get("baseline_loss"),
                    "dir": summary_path.parent.name,
                }
            )
    return out


def check_study_dir(plan: TunePlan, study_dir: Path) -> bool:
    """Whether `study_dir` continues this study (True) or is free for a new one (False); writes nothing.

    StudyDirMismatch (one line) for a directory holding another study, a study whose data
    changed since it started (`seqpar.records.identity`), or files that are no study."""
    study_dir = Path(study_dir)
    path = study_dir / TUNE_SPEC
    if path.exists():
        if yaml.safe_load(path.read_text()) != yaml.safe_load(spec_yaml(plan.raw)):
            raise StudyDirMismatch(f"{study_dir}: holds another study (its {TUNE_SPEC} differs from this spec); give another --out")
        _check_study_data(plan, study_dir)
        return True
    # Its id alone: another host is creating this study right now (prepare_study_dir writes the id first).
    if study_dir.exists() and any(p.name != STUDY_ID and not p.name.startswith(f".{STUDY_ID}.") for p in study_dir.iterdir()):
        raise StudyDirMismatch(f"--out {study_dir}: directory exists, is not empty and holds no study; studies are never mixed")
    return False


def _check_study_data(plan: TunePlan, study_dir: Path) -> None:
    """Every trial trains on the same data: a study continued on changed files is refused (one record is read)."""
    for found in study_dir.glob(f"{TRIALS}/*/*/{SUMMARY}"):
        try:
            recorded = (read_summary(found.parent).get("task") or {}).get("data")
        except BadRecord:
            continue
        if recorded:
            try:
                now = data_identity({f"task.{k}": p for k, p in plan.spec.task.data_files().items()})
                check_data(recorded, now, str(study_dir), "the study")
            except IdentityError as e:
                raise StudyDirMismatch(str(e)) from None
            return


def prepare_study_dir(plan: TunePlan, study_dir: Path) -> bool:
    """Write tune.yaml and the directory's id (`study_tag`), or check the ones there; True when continuing a study."""
    study_dir = Path(study_dir)
    if check_study_dir(plan, study_dir):
        return True
    study_dir.mkdir(parents=True, exist_ok=True)
    _publish_once(study_dir / STUDY_ID, secrets.token_hex(4) + "\n")
    atomic_write_text(study_dir / TUNE_SPEC, spec_yaml(plan.raw))
    return False


def _publish_once(path: Path, text: str) -> None:
    """Write `path` whole unless it exists: of several hosts creating one study directory at once, one id wins."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    atomic_write_text(tmp, text)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)

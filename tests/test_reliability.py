"""Divergence, failure, interruption, checkpoint/resume, and files that are never left half-written."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import seqpar.records.writer as results_mod
import seqpar.train.checkpoint as ckpt_mod
from seqpar.cli import app
from seqpar.records.reader import read_metrics
from seqpar.records.writer import MetricsLog, atomic_write_json, lock_run_dir
from seqpar.spec import validate_spec
from seqpar.train.checkpoint import KEEP, CheckpointError, MethodCheckpoints, prng_fingerprint
from seqpar.train.loop import NullProgress, build_experiment
from seqpar.train.runner import run_experiment

runner = CliRunner()

# Long enough to interrupt, short enough to compile and run in seconds.
RESUMABLE = {
    "train": {"steps": 600, "batch_size": 8, "eval_every": 50, "log_every": 10, "checkpoint_every": 100, "target_loss": 1.3},
}
COMPARED = ("status", "steps_done", "final", "diagnostics", "steps_to_target", "error")


def _resumable(tiny_spec: dict) -> dict:
    spec = copy.deepcopy(tiny_spec)
    spec.update(copy.deepcopy(RESUMABLE))
    return spec


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _lines(run_dir: Path) -> list[dict]:
    """Metrics lines without their timing (the only thing a resumed run may change)."""
    return [{k: v for k, v in rec.items() if k != "wall_s"} for rec in read_metrics(run_dir)]


def _assert_same_results(resumed: Path, reference: Path) -> None:
    a, b = _summary(resumed), _summary(reference)
    assert a["status"] == b["status"] == "completed"
    for ra, rb in zip(a["runs"], b["runs"], strict=True):
        for key in COMPARED:
            assert ra[key] == rb[key], (ra["label"], key, ra[key], rb[key])
    assert _lines(resumed) == _lines(reference)
    assert not (resumed / "checkpoints").exists()  # finished methods drop theirs


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run of the resumable spec, shared by the resume tests."""
    from conftest import TINY

    out = tmp_path_factory.mktemp("reference")
    summary = run_experiment(validate_spec(_resumable(TINY)), out)
    assert summary["status"] == "completed"
    return out


# ----------------------------------------------------------------------------- divergence and failure


def test_divergence_is_recorded_and_the_other_method_completes(tiny_spec, write_spec, tmp_path):
    tiny_spec["train"].update(steps=12, eval_every=4)
    tiny_spec["methods"][0]["optimizer"]["lr"] = 1e38  # float32 overflows within a few steps
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", str(write_spec(tiny_spec)), "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output  # divergence is a result
    summary = _summary(out)
    bptt, parallel = summary["runs"]
    assert summary["status"] == "completed"
    assert bptt["status"] == "diverged" and 1 <= bptt["diverged_at_step"] <= bptt["steps_done"] < 12
    assert f"step {bptt['diverged_at_step']}" in bptt["error"]
    assert parallel["status"] == "completed" and parallel["steps_done"] == 12
    steps = [rec["step"] for rec in read_metrics(out) if rec["method"] == "bptt"]
    assert steps[0] == 0 and steps[-1] == bptt["steps_done"]  # every metric up to the divergence is saved
    assert "diverged bptt" in res.output


def test_a_failing_method_is_recorded_and_the_rest_go_on(tiny_spec, write_spec, tmp_path, monkeypatch):
    from seqpar.methods.bptt import BPTT

    def boom(self, state, train, batch, step, key):
        raise RuntimeError("boom")

    # In the step, not in `init`: the memory estimate runs `init` (abstractly) before anything is
    # written, and a spec whose estimate cannot be made is refused there (exit 2).
    monkeypatch.setattr(BPTT, "train_step", boom)
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", str(write_spec(tiny_spec)), "--out", str(out), "--quiet"])
    assert res.exit_code == 1, res.output
    summary = _summary(out)
    assert summary["status"] == "failed"
    assert summary["runs"][0]["status"] == "failed" and summary["runs"][0]["error"] == "RuntimeError: boom"
    assert "Traceback" in summary["runs"][0]["traceback"]
    assert summary["runs"][1]["status"] == "completed"
    assert "failed bptt: RuntimeError: boom" in res.output and "Traceback" not in res.output

    tiny_spec["methods"] = tiny_spec["methods"][:1]
    res = runner.invoke(app, ["run", str(write_spec(tiny_spec)), "--out", str(tmp_path / "debug"), "--quiet", "--debug"])
    assert res.exit_code == 1 and "Traceback" in res.output


def test_unexpected_error_is_one_line_unless_debug(tiny_spec, write_spec, tmp_path, monkeypatch):
    import seqpar.train.runner

    def broken():
        raise RuntimeError("no environment today")

    monkeypatch.setattr(seqpar.train.runner, "environment", broken)
    spec = write_spec(tiny_spec)
    res = runner.invoke(app, ["run", str(spec), "--out", str(tmp_path / "a"), "--quiet"])
    assert res.exit_code == 1
    assert (
        res.output.strip().splitlines()[-1] == "error: unexpected RuntimeError: no environment today (rerun with --debug for the traceback)"
    )
    res = runner.invoke(app, ["run", str(spec), "--out", str(tmp_path / "b"), "--quiet", "--debug"])
    assert isinstance(res.exception, RuntimeError)  # propagated: Typer prints the full traceback


def test_memory_estimate_refuses_unless_forced(tiny_spec, write_spec, tmp_path, monkeypatch):
    import seqpar.train.memory

    monkeypatch.setattr(seqpar.train.memory, "available", lambda: (2**20, "test limit"))
    tiny_spec["methods"] = tiny_spec["methods"][:1]
    tiny_spec["train"]["steps"] = 2
    spec = write_spec(tiny_spec)
    res = runner.invoke(app, ["run", str(spec), "--out", str(tmp_path / "no"), "--quiet"])
    assert res.exit_code == 2 and "exceeds the 1.0 MiB test limit" in res.output and "--force" in res.output
    assert not (tmp_path / "no").exists()
    res = runner.invoke(app, ["run", str(spec), "--out", str(tmp_path / "yes"), "--quiet", "--force"])
    assert res.exit_code == 0, res.output
    assert _summary(tmp_path / "yes")["status"] == "completed"


# ----------------------------------------------------------------------------- interruption and resume

_SLOW_CHILD = textwrap.dedent(
    """
    import sys, time
    import seqpar.train.runner as runner
    # Slow every step down (the loop polls should_stop once per step) so the parent can
    # signal mid-training; the numbers do not depend on it.
    run_method = runner.run_method
    def slow(*args, should_stop, **kwargs):
        def poll():
            time.sleep(0.003)
            return should_stop()
        return run_method(*args, should_stop=poll, **kwargs)
    runner.run_method = slow
    from seqpar.cli import main
    sys.argv = ["seqpar", "run", *sys.argv[1:]]
    main()
    """
)


def _wait_for_line(run_dir: Path, pred, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(pred(rec) for rec in read_metrics(run_dir)):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError(f"no such metrics line in {run_dir} after {timeout} s")


@pytest.mark.slow
def test_sigint_mid_training_leaves_a_valid_summary_and_resume_matches(tiny_spec, write_spec, tmp_path, reference):
    spec, out = write_spec(_resumable(tiny_spec)), tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_CHILD, str(spec), "--out", str(out), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for_line(out, lambda r: r["step"] >= 150, proc)  # mid-bptt, or mid-parallel on a busy machine
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output
    assert "seqpar run --resume" in output
    summary = _summary(out)
    assert summary["status"] == "interrupted"
    stopped = summary["runs"][-1]
    assert stopped["status"] == "interrupted" and 150 <= stopped["steps_done"] < 600
    # The finished step was checkpointed, so nothing is redone; only the newest few are kept.
    ckpts = sorted((out / "checkpoints").glob("*/ckpt-*.npz"))
    assert int(ckpts[-1].stem.split("-")[1]) == stopped["steps_done"] and len(ckpts) <= KEEP

    res = runner.invoke(app, ["run", "--resume", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    _assert_same_results(out, reference)
    assert _summary(out)["resumes"][0]["from_step"][stopped["label"]] == stopped["steps_done"]


class _Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing records it as a failure."""


class _CrashAt(NullProgress):
    def __init__(self, label: str, step: int):
        self.label, self.step = label, step

    def update(self, label, step, record):
        if (label, step) == (self.label, self.step):
            raise _Crash


def test_crash_resumes_from_the_periodic_checkpoint(tiny_spec, tmp_path, reference):
    spec, out = validate_spec(_resumable(tiny_spec)), tmp_path / "run"
    with pytest.raises(_Crash):
        run_experiment(spec, out, _CrashAt("parallel", 250))
    # Lines past the last checkpoint (200) exist, and a line torn by the kill ends the file.
    assert max(r["step"] for r in read_metrics(out) if r["method"] == "parallel") == 250
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"method": "parallel", "step": 2')
    summary = run_experiment(spec, out, resume=True)
    assert summary["resumes"][0]["from_step"] == {"parallel": 200}
    _assert_same_results(out, reference)


def test_resume_retries_failed_methods_and_never_drops_finished_ones(tiny_spec, tmp_path, monkeypatch):
    from seqpar.methods.bptt import BPTT
    from seqpar.train.runner import StopRequest

    spec, out = validate_spec(tiny_spec), tmp_path / "run"
    real_init = BPTT.init

    def flaky(self, key, params, train):
        raise RuntimeError("flaky")

    monkeypatch.setattr(BPTT, "init", flaky)
    first = run_experiment(spec, out)
    assert [r["status"] for r in first["runs"]] == ["failed", "completed"]
    monkeypatch.setattr(BPTT, "init", real_init)
    stop = StopRequest()
    stop.request()  # Ctrl-C before the retried method starts
    stopped = run_experiment(spec, out, resume=True, stop=stop)
    assert stopped["status"] == "interrupted" and [r["label"] for r in stopped["runs"]] == ["parallel"]
    done = run_experiment(spec, out, resume=True)
    assert done["status"] == "completed" and [r["status"] for r in done["runs"]] == ["completed", "completed"]
    assert done["runs"][1] == results_mod.to_jsonable(first["runs"][1])  # kept as it was, not re-run


def test_resuming_a_finished_run_changes_nothing(reference):
    before = {p.name: p.read_bytes() for p in reference.iterdir()}
    res = runner.invoke(app, ["run", "--resume", str(reference), "--quiet"])
    assert res.exit_code == 0, res.output
    assert {p.name: p.read_bytes() for p in reference.iterdir()} == before


def test_resume_refuses_a_run_directory_in_use(tiny_spec, tmp_path):
    tiny_spec["methods"] = tiny_spec["methods"][:1]
    spec = validate_spec(tiny_spec)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    with lock_run_dir(tmp_path):
        res = runner.invoke(app, ["run", "--resume", str(tmp_path), "--quiet"])
    assert res.exit_code == 2 and "another seqpar process" in res.output


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_restores_the_state_exactly_against_a_fresh_template(tiny_spec, tmp_path):
    spec = validate_spec(tiny_spec)
    exp = build_experiment(spec)
    method = spec.methods[1].build(exp.model, exp.task)  # parallel: params, table, optax states
    fresh = lambda: method.init(jax.random.key(0), exp.init_params, exp.train)  # noqa: E731
    state = jax.tree.map(lambda x: x + jnp.asarray(0.5, x.dtype), fresh())  # anything but the initial values
    identity = {"spec_sha256": "abc", "prng": prng_fingerprint(exp.train_key), "method": "parallel"}
    ckpts = MethodCheckpoints(tmp_path / "m", identity)
    for step in (10, 20, 30):
        ckpts.save(step, state, {"steps_done": step, "acc": float("nan")})
    assert [s for s, _ in ckpts.paths()] == [20, 30][-KEEP:]
    latest = ckpts.latest()
    assert latest is not None
    assert latest.step == 30 and latest.loop["steps_done"] == 30 and np.isnan(latest.loop["acc"])
    restored = ckpts.restore(latest, template=fresh())
    assert jax.tree.structure(restored) == jax.tree.structure(state)  # optax namedtuples come back as such
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(CheckpointError, match="spec_sha256"):
        MethodCheckpoints(tmp_path / "m", {**identity, "spec_sha256": "other"}).latest()
    smaller = spec.methods[1].build(exp.model, exp.task).init(jax.random.key(0), exp.init_params, exp.train._replace(x=exp.train.x[:8]))
    with pytest.raises(CheckpointError, match="does not match"):
        ckpts.restore(latest, template=smaller)


def test_the_step_is_the_whole_prng_state(tiny_spec):
    """Keys come from fold_in(step): a step computed after a restart equals the one computed in a run."""
    from seqpar.train.loop import make_train_step

    spec = validate_spec(tiny_spec)
    a, b = build_experiment(spec), build_experiment(spec)
    assert prng_fingerprint(a.train_key) == prng_fingerprint(b.train_key)
    method = spec.methods[0].build(a.model, a.task)
    step = jax.jit(make_train_step(method, a.train_key, 16, 8))
    s = method.init(jax.random.key(0), a.init_params, a.train)
    _, m1 = step(s, a.train, jnp.int32(5))
    _, m2 = step(s, b.train, jnp.int32(5))
    assert float(m1["objective"]) == float(m2["objective"])


# ----------------------------------------------------------------------------- never half-written


class _Torn:
    """A file whose write puts half the data on disk and then fails, like a kill mid-write."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        self._f.write(data[: len(data) // 2])
        self._f.flush()
        raise OSError("simulated kill during write")

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def test_summary_is_never_left_truncated(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    atomic_write_json(path, {"status": "running", "runs": [1, 2, 3]})
    real_fdopen = os.fdopen
    monkeypatch.setattr(results_mod.os, "fdopen", lambda *a, **k: _Torn(real_fdopen(*a, **k)))
    with pytest.raises(OSError, match="simulated"):
        atomic_write_json(path, {"status": "completed", "runs": list(range(1000))})
    assert json.loads(path.read_text()) == {"status": "running", "runs": [1, 2, 3]}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temp file left behind


def test_metrics_line_is_whole_or_absent(tmp_path, monkeypatch):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.write({"step": 0, "loss": 1.0})
    real_write = os.write

    def torn(fd, data):
        real_write(fd, data[: len(data) // 2])
        raise OSError("simulated kill during write")

    monkeypatch.setattr(results_mod.os, "write", torn)
    with pytest.raises(OSError, match="simulated"):
        log.write({"step": 1, "loss": 0.5, "pad": "x" * 10_000})
    monkeypatch.setattr(results_mod.os, "write", real_write)
    log.write({"step": 2, "loss": 0.25})
    log.close()
    text = (tmp_path / "metrics.jsonl").read_text()
    assert [json.loads(line)["step"] for line in text.splitlines()] == [0, 2]


def test_checkpoint_is_never_left_truncated(tmp_path, monkeypatch):
    state = {"w": jnp.arange(1000.0)}
    ckpts = MethodCheckpoints(tmp_path, {"id": 1})
    ckpts.save(1, state, {})
    real_savez = np.savez

    def torn_savez(f, **arrays):
        real_savez(f, **arrays)
        f.truncate(f.tell() // 2)
        raise OSError("simulated kill during write")

    monkeypatch.setattr(ckpt_mod.np, "savez", torn_savez)
    with pytest.raises(OSError, match="simulated"):
        ckpts.save(2, {"w": state["w"] + 1}, {})
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-000000001.npz"]
    latest = ckpts.latest()
    assert latest is not None
    assert np.array_equal(ckpts.restore(latest, state)["w"], state["w"])


# ----------------------------------------------------------------------------- never through a symlink out of the run


def _crashed_parallel_run(tiny_spec: dict, out: Path, steps: int = 8, crash_at: int = 5) -> tuple[dict, Path]:
    """A parallel-only run killed at `crash_at` with checkpoints every 2 steps; (the spec dict, its checkpoint folder)."""
    tiny_spec["methods"] = tiny_spec["methods"][1:]
    tiny_spec["train"].update(steps=steps, eval_every=4, log_every=1, checkpoint_every=2)
    with pytest.raises(_Crash):
        run_experiment(validate_spec(tiny_spec), out, _CrashAt("parallel", crash_at))
    return tiny_spec, out / "checkpoints" / "0-parallel"


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file() and not p.is_symlink()}


def test_resume_refuses_a_checkpoint_folder_that_a_symlink_leads_out_of_the_run(tiny_spec, tmp_path):
    _, folder = _crashed_parallel_run(tiny_spec, tmp_path / "run")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    import shutil

    shutil.rmtree(folder)
    folder.symlink_to(victim)
    before = _tree(tmp_path / "run")
    res = runner.invoke(app, ["run", "--resume", str(tmp_path / "run"), "--quiet"])
    assert res.exit_code == 2, res.output
    (line,) = res.output.strip().splitlines()[-1:]
    assert line.startswith("error: ") and str(folder) in line and "outside the run directory" in " ".join(res.output.split())
    assert [p.name for p in victim.iterdir()] == ["precious.txt"]  # nothing deleted or written there
    assert _tree(tmp_path / "run") == before  # and nothing in the run either


def test_checkpoints_never_write_or_delete_through_a_symlink_out_of_the_run(tmp_path):
    run_dir, victim = tmp_path / "run", tmp_path / "victim"
    (run_dir / "checkpoints").mkdir(parents=True)
    victim.mkdir()
    (victim / "ckpt-000000002.npz").write_text("not seqpar's")
    (run_dir / "checkpoints" / "0-m").symlink_to(victim)
    ckpts = MethodCheckpoints(run_dir / "checkpoints" / "0-m", {"id": 1})  # by default, the folder above it is the limit
    for act in (lambda: ckpts.save(4, {"w": jnp.zeros(3)}, {"steps_done": 4}), ckpts.prune, ckpts.clear):
        with pytest.raises(OSError, match="outside the run directory"):  # seqpar.records.writer.OutsideRunDir
            act()
    assert sorted(p.name for p in victim.iterdir()) == ["ckpt-000000002.npz"]

    # A link that stays inside the run is followed; clearing removes checkpoints only, and leaves the link.
    inside = run_dir / "elsewhere"
    inside.mkdir()
    (inside / "notes.txt").write_text("mine")
    (run_dir / "checkpoints" / "1-m").symlink_to(inside)
    ckpts = MethodCheckpoints(run_dir / "checkpoints" / "1-m", {"id": 1}, run_dir=run_dir)
    ckpts.save(2, {"w": jnp.zeros(3)}, {"steps_done": 2})
    assert (inside / "ckpt-000000002.npz").exists()
    ckpts.clear()
    assert sorted(p.name for p in inside.iterdir()) == ["notes.txt"] and (run_dir / "checkpoints" / "1-m").is_symlink()


# ----------------------------------------------------------------------------- a resume killed at any moment


def test_a_resume_killed_mid_method_keeps_the_finished_methods_in_the_summary(tiny_spec, tmp_path):
    tiny_spec.update(copy.deepcopy({"train": {"steps": 8, "batch_size": 8, "eval_every": 4, "log_every": 1, "checkpoint_every": 2}}))
    spec, out = validate_spec(tiny_spec), tmp_path / "run"
    with pytest.raises(_Crash):
        run_experiment(spec, out, _CrashAt("parallel", 3))  # bptt finished (its checkpoints cleared), parallel has step 2
    bptt = _summary(out)["runs"][0]
    assert bptt["status"] == "completed" and not (out / "checkpoints" / "0-bptt").exists()

    on_disk: list[str] = []

    class KillAt(NullProgress):
        """SIGKILL mid-method, the second time round: what is on disk then is all a next resume has."""

        def update(self, label, step, record):
            if (label, step) == ("parallel", 3):
                on_disk.append((out / "summary.json").read_text())
                raise _Crash

    with pytest.raises(_Crash):
        run_experiment(spec, out, KillAt(), resume=True)
    (out / "summary.json").write_text(on_disk[0])  # a SIGKILL skips the crash's own summary write
    assert [r["label"] for r in _summary(out)["runs"]] == ["bptt"]

    done = run_experiment(spec, out, resume=True)
    assert done["status"] == "completed" and done["runs"][0] == bptt  # kept as it was, not trained again
    assert "bptt" not in done["resumes"][-1]["from_step"]
    steps = [(r["method"], r["step"]) for r in read_metrics(out)]
    assert len(steps) == len(set(steps))


# ----------------------------------------------------------------------------- checkpoints read as what they hold


def test_a_checkpoint_renamed_to_another_step_is_read_as_the_step_it_records(tiny_spec, tmp_path):
    _, folder = _crashed_parallel_run(tiny_spec, tmp_path / "run", crash_at=5)  # checkpoints at 2 and 4
    (folder / "ckpt-000000002.npz").unlink()
    (folder / "ckpt-000000004.npz").rename(folder / "ckpt-000000007.npz")
    summary = run_experiment(validate_spec(tiny_spec), tmp_path / "run", resume=True)
    assert summary["status"] == "completed" and summary["resumes"][0]["from_step"] == {"parallel": 4}
    assert "its name says step 7, it holds step 4" in summary["resumes"][0]["warnings"][0]
    steps = [r["step"] for r in read_metrics(tmp_path / "run")]
    assert steps == list(range(9))  # every step logged once: none past the checkpoint kept, none twice


def test_a_checkpoint_that_verifies_but_does_not_fit_the_state_falls_back_to_the_older_one(tiny_spec, tmp_path):
    _, folder = _crashed_parallel_run(tiny_spec, tmp_path / "run", crash_at=5)
    newest = folder / "ckpt-000000004.npz"
    identity = ckpt_mod.verify(newest)["identity"]
    newest.unlink()
    # Whole and self-consistent (CRCs, headers, metadata agree), same run, but not this method's state.
    MethodCheckpoints(folder, identity).save(4, {"w": jnp.zeros(3)}, {"steps_done": 4})
    assert ckpt_mod.verify(newest)["step"] == 4
    res = runner.invoke(app, ["run", "--resume", str(tmp_path / "run"), "--quiet"])
    assert res.exit_code == 0, res.output
    summary = _summary(tmp_path / "run")
    assert summary["status"] == "completed" and summary["runs"][0]["steps_done"] == 8
    assert summary["resumes"][0]["from_step"] == {"parallel": 2}
    assert f"skipped checkpoint {newest}: holds 1 arrays" in summary["resumes"][0]["warnings"][0]

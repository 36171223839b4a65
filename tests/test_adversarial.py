"""What a hostile user tried (issue 15), pinned: each test is one reproduction, kept tiny.

Nothing here fills memory or disk for real: memory bombs run in a subprocess under a low
`RLIMIT_AS` with a timeout (a regression dies there, not on the machine), a full disk is
an `ENOSPC` injected at the run-record writer's system calls, a read-only filesystem an
`EROFS` from `mkdir`.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError
from typer.testing import CliRunner

import seqpar.records.writer as writer_mod
from seqpar.cli import app
from seqpar.config.base import Config
from seqpar.spec import SpecError, validate_spec

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def _one_line_exit_2(res, *expect: str, stderr_only: bool = False) -> str:
    """Exit 2 and one line naming what was expected (on stderr; `stderr_only` when a run had
    already announced itself on stdout before it was refused)."""
    assert res.exit_code == 2, res.output
    msg = (res.stderr if stderr_only else res.output).strip()
    assert len(msg.splitlines()) == 1, msg
    assert msg.startswith("error: "), msg
    for s in expect:
        assert s in msg, (s, msg)
    return msg


_CLI_CALLS = """
import json, sys
from typer.testing import CliRunner
from seqpar.cli import app
for args in json.loads(sys.argv[1]):
    res = CliRunner().invoke(app, args)
    print(json.dumps({"code": res.exit_code, "output": res.output}))
"""


def _limited(calls: list[list[str]], cwd: Path, mem_gib: int = 3, timeout: float = 120) -> list[dict]:
    """Run `seqpar` commands in one fresh interpreter with at most `mem_gib` GiB of address space:
    a memory bomb that is not refused dies of MemoryError there instead of taking the machine."""

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (mem_gib << 30, mem_gib << 30))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("XLA_FLAGS", None)  # one CPU device, as a user's shell has
    proc = subprocess.run(
        [sys.executable, "-c", _CLI_CALLS, json.dumps(calls)],
        cwd=cwd,
        env=env,
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


def _config_classes() -> list[type[Config]]:
    """Every config class (methods, tasks, cells, optimizers, schedules, the spec blocks): drawn
    from the class tree, so a config added later is checked here without touching this file."""
    import seqpar.spec  # noqa: F401 - imports every registry

    out, todo = [], [Config]
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        out.append(cls)
    return [c for c in out if c.model_fields]


def _numeric_fields() -> list[tuple[type[Config], str, set[type]]]:
    from seqpar.config.base import _numeric_fields as fields

    return [(cls, name, set(kinds)) for cls in _config_classes() for name, kinds, _ in fields(cls) if kinds & {int, float}]


# ----------------------------------------------------------------------------- 1. YAML alias bomb

BOMB = "bomb:\n  a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10)
)


def test_yaml_alias_bomb_is_refused_at_once(tiny_spec, tmp_path):
    spec = tmp_path / "bomb.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec, sort_keys=False) + BOMB)
    for res in _limited([["validate", str(spec)], ["run", str(spec), "--out", str(tmp_path / "out"), "--quiet"]], tmp_path):
        assert res["code"] == 2, res["output"]
        assert res["output"].startswith(f"error: {spec}: YAML aliases expand this document to more than 100000 values")
        assert len(res["output"].strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    from seqpar.spec import load_yaml

    t0 = time.perf_counter()
    with pytest.raises(SpecError, match="more than 100000 values"):
        load_yaml(BOMB, "bomb.yaml")
    assert time.perf_counter() - t0 < 0.5


@pytest.mark.parametrize(
    "text, expect",
    [
        ("a: &a [*a]", "recursive structure"),
        ("a: " + "[" * 100_000 + "]" * 100_000, "nested more than 64 levels"),
        ("a:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 200)), "nested more than 64 levels"),
    ],
    ids=["self-reference", "deep flow", "deep block"],
)
def test_recursive_or_deep_yaml_is_refused(text, expect):
    from seqpar.spec import load_yaml

    t0 = time.perf_counter()
    with pytest.raises(SpecError, match=expect):
        load_yaml(text, "x.yaml")
    assert time.perf_counter() - t0 < 0.5


def test_a_bomb_in_a_set_value_is_refused(tiny_spec, write_spec):
    bomb = "[" + ", ".join(["&a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]) + "]"
    res = runner.invoke(app, ["validate", str(write_spec(tiny_spec)), "--set", f"methods={bomb}"])
    _one_line_exit_2(res, "--set methods=", "more than 100000 values")


def test_a_spec_file_that_never_ends_is_refused(tmp_path):
    res = runner.invoke(app, ["validate", "/dev/zero"])
    _one_line_exit_2(res, "/dev/zero: larger than 1 MiB")


# ----------------------------------------------------------------------------- 2. bench memory


def test_bench_points_pass_the_memory_check(tmp_path):
    out = tmp_path / "bench"
    res = runner.invoke(app, ["bench", "--lengths", "100000000", "--batch", "1000", "--out", str(out), "--overhead-steps", "0"])
    _one_line_exit_2(res, "bench point (cell=gru, length=100000000, batch=1000)", "estimated memory", "--force")
    assert not out.exists()


def test_bench_force_turns_the_refusal_into_a_warning(monkeypatch):
    import seqpar.train.memory
    from seqpar.bench import grid as B

    monkeypatch.setattr(seqpar.train.memory, "available", lambda: (2**20, "test limit"))
    spec, grid = B.load_bench_spec(None), B.Grid(lengths=(8,), batches=(1,))
    with pytest.raises(
        B.BenchError, match=r"bench point \(cell=gru, length=8, batch=1\): estimated memory .* exceeds the 1.0 MiB test limit"
    ):
        B.check_points(spec, grid)
    notes = B.check_points(spec, grid, force=True)
    assert len(notes) == 1 and "over the limit: --force" in notes[0]


# ----------------------------------------------------------------------------- 3. sweep size

HUGE_SWEEP = ["--set", f"sweep.seed={list(range(1000))}", "--set", f"sweep.methods.0.optimizer.lr={[1e-3 * (i + 1) for i in range(1000)]}"]


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_million_point_sweep_is_refused_at_once(tiny_spec, write_spec, tmp_path, command):
    out = ["--out", str(tmp_path / "out"), "--quiet"] if command == "run" else []
    t0 = time.perf_counter()
    res = runner.invoke(app, [command, str(write_spec(tiny_spec)), *HUGE_SWEEP, *out])
    assert time.perf_counter() - t0 < 5
    _one_line_exit_2(res, "sweep: 1000000 points (1000 seed x 1000 methods.0.optimizer.lr)", "limit of 10000", "--max-points 1000000")
    assert not (tmp_path / "out").exists()


def test_max_points_raises_the_cap(tiny_spec, write_spec):
    tiny_spec["sweep"] = {"seed": [0, 1, 2], "task.lag": [1, 2]}
    spec = str(write_spec(tiny_spec))
    _one_line_exit_2(runner.invoke(app, ["validate", spec, "--max-points", "5"]), "6 points (3 seed x 2 task.lag)", "--max-points 6")
    res = runner.invoke(app, ["validate", spec, "--max-points", "6"])
    assert res.exit_code == 0 and "sweep of 6 point(s)" in res.output, res.output


def test_points_differing_in_floats_and_seed_share_one_memory_estimate(tiny_spec):
    from seqpar.train.memory import shape_key

    a = validate_spec(tiny_spec)
    tiny_spec["seed"] = 7
    tiny_spec["methods"][0]["optimizer"]["lr"] = 0.5
    tiny_spec["methods"][1]["consistency_weight"] = 3.0
    assert shape_key(validate_spec(tiny_spec)) == shape_key(a)
    tiny_spec["model"]["hidden"] = 9
    assert shape_key(validate_spec(tiny_spec)) != shape_key(a)


# ----------------------------------------------------------------------------- 4. char_lm path


def _char_lm(tiny_spec: dict, path: str) -> dict:
    tiny_spec["task"] = {"type": "char_lm", "path": path, "length": 8, "train_sequences": 16, "test_sequences": 16}
    return tiny_spec


def test_char_lm_refuses_devices_pipes_directories_and_huge_files(tiny_spec, tmp_path):
    from seqpar.tasks.char_lm import MAX_TEXT_BYTES

    fifo, big = tmp_path / "fifo", tmp_path / "big.txt"
    os.mkfifo(fifo)
    with open(big, "wb") as f:
        f.truncate(MAX_TEXT_BYTES + 1)  # sparse: no disk used, and never read
    cases = {
        "/dev/zero": "not a regular file",
        str(fifo): "not a regular file",  # reading it would block forever
        str(tmp_path): "is a directory",
        str(big): "larger than the 16 MiB",
    }
    for path, expect in cases.items():
        t0 = time.perf_counter()
        with pytest.raises(SpecError, match=f"task.path: .*{expect}"):
            validate_spec(_char_lm(copy.deepcopy(tiny_spec), path))
        assert time.perf_counter() - t0 < 1


# ----------------------------------------------------------------------------- 5, 6. coercions and non-finite values


@pytest.mark.parametrize(
    "key, value, expect",
    [
        ("train.steps", True, "train.steps: expected a number, got the boolean true"),
        ("methods.0.optimizer.lr", True, "methods.0.optimizer.lr: expected a number, got the boolean true"),
        ("seed", True, "seed: expected a number, got the boolean true"),
        ("train.devices", True, "train.devices: expected a number"),
        ("methods.1.consistency_weight", False, "methods.1.consistency_weight: expected a number, got the boolean false"),
        ("methods.0.optimizer", {"type": "sgd", "lr": 0.1, "nesterov": 1}, "methods.0.optimizer.nesterov: expected true or false"),
    ],
)
def test_booleans_and_numbers_are_not_swapped(tiny_spec, write_spec, key, value, expect):
    from seqpar.spec import set_dotted

    set_dotted(tiny_spec, key, value, source="test")
    with pytest.raises(SpecError, match=expect):
        validate_spec(tiny_spec)


def test_set_true_for_steps_is_refused_by_validate(tiny_spec, write_spec):
    res = runner.invoke(app, ["validate", str(write_spec(tiny_spec)), "--set", "train.steps=true"])
    _one_line_exit_2(res, "train.steps: expected a number, got the boolean true")


def test_every_numeric_field_of_every_config_refuses_a_boolean():
    fields = _numeric_fields()
    assert {("TrainConfig", "steps"), ("AdamConfig", "lr"), ("Spec", "seed")} <= {(c.__name__, n) for c, n, _ in fields}
    for cls, name, _ in fields:
        with pytest.raises(ValidationError, match=f"{name}: expected a number, got the boolean true"):
            cls.model_validate({name: True})


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_every_float_field_of_every_config_refuses_non_finite_values(value):
    floats = [(c, n) for c, n, kinds in _numeric_fields() if float in kinds]
    assert {("AdamConfig", "eps"), ("AdamWConfig", "weight_decay"), ("SGDConfig", "clip_norm")} <= {(c.__name__, n) for c, n in floats}
    for cls, name in floats:
        with pytest.raises(ValidationError) as info:
            cls.model_validate({name: value})
        assert any(name in e["loc"] and "finite" in e["msg"] for e in info.value.errors()), (cls.__name__, name)


@pytest.mark.parametrize("field", ["eps", "weight_decay", "clip_norm"])
def test_infinite_optimizer_settings_are_refused(tiny_spec, write_spec, field):
    tiny_spec["methods"][0]["optimizer"] = {"type": "adamw", "lr": 0.01, field: "INFINITY"}
    text = yaml.safe_dump(tiny_spec, sort_keys=False).replace("INFINITY", ".inf")
    res = runner.invoke(app, ["validate", str(write_spec(text))])
    _one_line_exit_2(res, f"methods.0.optimizer.{field}: Input should be a finite number")


def test_numbers_written_as_strings_are_read_as_the_number(tiny_spec):
    tiny_spec["methods"][0]["optimizer"]["lr"] = "3e-3"  # what YAML 1.1 makes of a bare 3e-3
    tiny_spec["train"]["steps"] = "12"
    spec = validate_spec(tiny_spec)
    assert spec.methods[0].optimizer.lr == 0.003 and spec.train.steps == 12
    assert validate_spec(yaml.safe_load(yaml.safe_dump(spec.model_dump(mode="json")))) == spec  # recorded as numbers


# ----------------------------------------------------------------------------- 7. caught at validation


def test_seeds_must_fit_64_bits(tiny_spec):
    tiny_spec["seed"] = 2**63 - 1
    validate_spec(tiny_spec)  # JAX takes it
    tiny_spec["seed"] = 2**63
    with pytest.raises(SpecError, match=r"seed: 9223372036854775808 is too large: integers must fit in 64 bits"):
        validate_spec(tiny_spec)


def test_more_devices_than_visible_is_refused_by_validate_and_run(tiny_spec, write_spec, tmp_path):
    import jax

    n = jax.device_count()
    tiny_spec["task"].update(train_sequences=16 * n, test_sequences=16 * n)
    tiny_spec["train"].update(devices=2 * n, batch_size=2 * n)
    spec = write_spec(tiny_spec)
    line = next(i for i, text in enumerate(spec.read_text().splitlines(), 1) if text.strip().startswith("devices:"))
    expect = (f"line {line}: train.devices: {2 * n} requested, but only {n} device(s) are visible",)
    _one_line_exit_2(runner.invoke(app, ["validate", str(spec)]), *expect)
    _one_line_exit_2(runner.invoke(app, ["run", str(spec), "--out", str(tmp_path / "out"), "--quiet"]), *expect)
    assert not (tmp_path / "out").exists()


def test_validate_under_a_multiprocess_launch_leaves_the_device_count_to_run(tiny_spec, write_spec, monkeypatch):
    """Inside `salloc -n 4` the other processes' devices count, and `validate` joins no cluster to check a file."""
    import jax

    n = jax.device_count()
    tiny_spec["task"].update(train_sequences=16 * n, test_sequences=16 * n)
    tiny_spec["train"].update(devices=2 * n, batch_size=2 * n)
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: pytest.fail("validate must not join a cluster"))
    res = runner.invoke(app, ["validate", str(write_spec(tiny_spec))])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize(
    "edit, expect",
    [
        ({"model": {"hidden": 10**30}}, "model.hidden: 1000000000000000000000000000000 is too large"),
        ({"model": {"hidden": 2**40}}, "memory"),
        ({"task": {"length": 2**40, "train_sequences": 2**40}}, "memory"),
    ],
    ids=["hidden beyond int64", "hidden 2^40", "length and sequences 2^40"],
)
def test_sizes_no_run_could_allocate_are_refused_by_validate(tiny_spec, write_spec, tmp_path, edit, expect):
    for block, values in edit.items():
        tiny_spec[block].update(values)
    spec = write_spec(tiny_spec)
    _one_line_exit_2(runner.invoke(app, ["validate", str(spec)]), expect)
    _one_line_exit_2(runner.invoke(app, ["run", str(spec), "--out", str(tmp_path / "out"), "--quiet"]), expect)
    assert not (tmp_path / "out").exists()


def test_a_memory_estimate_that_cannot_be_made_refuses_the_spec(tiny_spec, monkeypatch):
    import seqpar.train.memory as memory

    def broken(spec):
        raise TypeError("cannot shape this")

    monkeypatch.setattr(memory, "estimate", broken)
    spec = validate_spec(tiny_spec)
    with pytest.raises(memory.MemoryLimitError, match=r"cannot estimate the memory of this spec \(TypeError: cannot shape this\)"):
        memory.check(spec)
    assert "(--force)" in memory.check(spec, force=True)


# ----------------------------------------------------------------------------- 8. checkpoint fallback


def _corrupt(kind: str, path: Path) -> None:
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "bit-flipped":  # one bit in the middle of the largest array's data
        import zipfile

        with zipfile.ZipFile(path) as z:
            info = max(z.infolist(), key=lambda i: i.file_size)
        at = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size // 2
        path.write_bytes(data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :])
    else:
        path.write_bytes(b"junk" * 100)


@pytest.mark.parametrize("kind", ["truncated", "empty", "bit-flipped", "junk"])
def test_a_corrupt_newest_checkpoint_falls_back_to_the_intact_one(tmp_path, kind):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from seqpar.train.checkpoint import MethodCheckpoints

    state = {"w": jnp.arange(4096.0), "key": jax.random.key(0), "empty": ()}
    ckpts = MethodCheckpoints(tmp_path, {"id": 1})
    ckpts.save(10, state, {"steps_done": 10})
    ckpts.save(20, {**state, "w": state["w"] + 1}, {"steps_done": 20})
    _corrupt(kind, tmp_path / "ckpt-000000020.npz")
    fresh = MethodCheckpoints(tmp_path, {"id": 1})
    latest = fresh.latest()
    assert latest is not None and latest.step == 10
    why = {"truncated": "unreadable", "empty": "empty", "bit-flipped": "fails its CRC check", "junk": "unreadable"}[kind]
    assert len(fresh.skipped) == 1 and fresh.skipped[0].startswith(f"skipped checkpoint {tmp_path / 'ckpt-000000020.npz'}: ")
    assert why in fresh.skipped[0]
    assert np.array_equal(fresh.restore(latest, state)["w"], state["w"])


def test_resume_skips_a_corrupt_checkpoint_and_says_so(tiny_spec, write_spec, tmp_path):
    from test_reliability import _Crash, _CrashAt

    from seqpar.train.runner import run_experiment

    tiny_spec["methods"] = tiny_spec["methods"][1:]  # parallel: the state with a table
    tiny_spec["train"].update(steps=6, eval_every=3, checkpoint_every=2)
    spec, out = validate_spec(tiny_spec), tmp_path / "run"
    with pytest.raises(_Crash):
        run_experiment(spec, out, _CrashAt("parallel", 6))  # checkpoints at 2 and 4, then the process "dies"
    newest = sorted((out / "checkpoints").glob("*/ckpt-*.npz"))[-1]
    assert newest.name == "ckpt-000000004.npz"
    _corrupt("bit-flipped", newest)
    res = runner.invoke(app, ["run", "--resume", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert f"skipped checkpoint {newest}: " in res.output and "CRC" in res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["runs"][0]["steps_done"] == 6
    assert summary["resumes"][0]["from_step"] == {"parallel": 2} and "CRC" in summary["resumes"][0]["warnings"][0]


# ----------------------------------------------------------------------------- 9. --out and racing runs


def test_out_on_a_read_only_filesystem_is_a_user_error(tiny_spec, write_spec, tmp_path, monkeypatch):
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self.name == "ro":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    res = runner.invoke(app, ["run", str(write_spec(tiny_spec)), "--out", str(tmp_path / "ro"), "--quiet"])
    _one_line_exit_2(res, f"--out {tmp_path / 'ro'}: cannot create the run directory (Read-only file system)")


def test_an_existing_empty_directory_that_is_not_writable_is_a_user_error(tiny_spec, write_spec, tmp_path, monkeypatch):
    (tmp_path / "ro").mkdir()
    real_access = os.access

    def access(path, mode, *args, **kwargs):  # root may write anywhere: say "not writable" for this one
        return False if mode & os.W_OK and Path(path).name == "ro" else real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(writer_mod.os, "access", access)
    res = runner.invoke(app, ["run", str(write_spec(tiny_spec)), "--out", str(tmp_path / "ro"), "--quiet"])
    _one_line_exit_2(res, "--out", "the directory is not writable")


def test_out_with_a_name_too_long_is_a_user_error(tiny_spec, write_spec, tmp_path):
    out = tmp_path / ("x" * 300)
    res = runner.invoke(app, ["run", str(write_spec(tiny_spec)), "--out", str(out), "--quiet"])
    _one_line_exit_2(res, f"--out {out}", "File name too long")


def test_a_run_that_loses_the_race_for_out_is_a_user_error(tiny_spec, write_spec, tmp_path, monkeypatch):
    import seqpar.records.writer
    from seqpar.records.writer import lock_run_dir

    tiny_spec["methods"] = tiny_spec["methods"][:1]
    spec, out = write_spec(tiny_spec), tmp_path / "out"
    # The winner still writing: it holds the lock.
    out.mkdir()
    with lock_run_dir(out):
        res = runner.invoke(app, ["run", str(spec), "--out", str(out), "--quiet"])
    _one_line_exit_2(res, f"{out}: another seqpar process is writing this run directory", stderr_only=True)
    # The winner already done, between the loser's emptiness check and its lock.
    real_new_run_dir = seqpar.records.writer.new_run_dir

    def winner_writes_first(*args, **kwargs):
        d = real_new_run_dir(*args, **kwargs)
        (d / "spec.yaml").write_text("the winner's spec\n")
        return d

    monkeypatch.setattr(seqpar.records.writer, "new_run_dir", winner_writes_first)
    res = runner.invoke(app, ["run", str(spec), "--out", str(tmp_path / "out2"), "--quiet"])
    _one_line_exit_2(res, "another seqpar run has started in this directory", stderr_only=True)
    assert (tmp_path / "out2" / "spec.yaml").read_text() == "the winner's spec\n"


# ----------------------------------------------------------------------------- 10. corrupt records in plot and compare


def _record(root: Path, name: str, spec_extra: dict | None = None, steps: tuple | list = (0, 5), summary: str | None = None) -> Path:
    d = root / name
    d.mkdir(parents=True)
    spec = {"name": "x", "seed": 0, "task": {"type": "delayed_recall", "length": 8}, "methods": [{"type": "bptt"}], **(spec_extra or {})}
    s = {
        "seed": 0,
        "spec": spec,
        "status": "completed",
        "task": {"loss": "cross-entropy"},
        "runs": [{"label": "bptt", "method": "bptt", "status": "completed", "final": {"rollout_loss_test": 1.0}, "baseline_loss": 1.4}],
    }
    (d / "summary.json").write_text(summary if summary is not None else json.dumps(s))
    lines = [{"method": "bptt", "step": st, "wall_s": 0.1 * i, "rollout_loss_test": 1.0 - 0.1 * i} for i, st in enumerate(steps)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return d


def test_plot_skips_metrics_lines_whose_step_is_not_an_integer(tmp_path):
    good = _record(tmp_path, "good", steps=[0, 5])
    bad = _record(tmp_path, "bad", {"model": {"hidden": 4}}, steps=["0", [5], True, 10])
    res = runner.invoke(app, ["plot", str(good), str(bad), "--out", str(tmp_path / "plots")])
    assert res.exit_code == 0, res.output
    assert f"{bad / 'metrics.jsonl'}: skipped 3 corrupt line(s)" in " ".join(res.output.split())
    assert (tmp_path / "plots" / "rollout_vs_steps.png").exists()


def test_plot_and_compare_take_list_valued_settings(tmp_path):
    a = _record(tmp_path, "a", {"extra": [1, 2]})
    b = _record(tmp_path, "b", {"extra": [3]})
    res = runner.invoke(app, ["plot", str(a), str(b), "--out", str(tmp_path / "plots")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "plots" / "final_vs_extra.png").exists()
    res = runner.invoke(app, ["compare", str(a), str(b), "--format", "json"])
    assert res.exit_code == 0, res.output
    assert [r["settings"]["extra"] for r in json.loads(res.output)] == [[1, 2], [3]]


def test_plot_out_below_a_file_is_a_user_error(tmp_path):
    a = _record(tmp_path, "a")
    (tmp_path / "file").write_text("x")
    _one_line_exit_2(runner.invoke(app, ["plot", str(a), "--out", str(tmp_path / "file" / "sub")]), "cannot create the directory")
    _one_line_exit_2(runner.invoke(app, ["plot", str(a), "--out", str(tmp_path / "file")]), "is a file, expected a directory")


@pytest.mark.parametrize("depth", [100, 100_000])
def test_compare_skips_a_summary_nested_absurdly_deep(tmp_path, depth):
    good = _record(tmp_path, "good")
    deep = _record(tmp_path, "deep", summary='{"spec": {}, "runs": [], "x": ' + "[" * depth + "]" * depth + "}")
    res = runner.invoke(app, ["compare", str(good), str(deep)])
    assert res.exit_code == 0, res.output
    assert f"skipping {deep}: summary.json nests" in " ".join(res.output.split())


# ----------------------------------------------------------------------------- 11. full disk


def _disk_full_after(monkeypatch, below: Path, nbytes: int, *, atomic_too: bool) -> None:
    """Metrics lines written below `below` fail with ENOSPC once `nbytes` have gone in; with
    `atomic_too`, from then on whole files (the summary) fail too, at their fsync."""
    written, full = [0], [False]
    real_write, real_fsync = os.write, os.fsync

    def ours(fd: int) -> bool:
        try:
            return os.readlink(f"/proc/self/fd/{fd}").startswith(str(below))
        except OSError:
            return False

    def write(fd, data):
        if ours(fd):
            if full[0] or written[0] + len(data) > nbytes:
                full[0] = True
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written[0] += len(data)
        return real_write(fd, data)

    def fsync(fd):
        if full[0] and ours(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(writer_mod.os, "write", write)
    if atomic_too:
        monkeypatch.setattr(writer_mod.os, "fsync", fsync)


def test_a_full_disk_names_the_file_and_the_run_is_recorded_failed(tiny_spec, write_spec, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _disk_full_after(monkeypatch, out, 0, atomic_too=False)  # not even the first metrics line fits
    res = runner.invoke(app, ["run", str(write_spec(tiny_spec)), "--out", str(out), "--quiet"])
    assert res.exit_code == 1, res.output
    last = res.output.strip().splitlines()[-1]
    assert last == f"error: cannot write {out / 'metrics.jsonl'}: No space left on device; the disk is full", res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == last.removeprefix("error: ")
    assert summary["runs"][0]["status"] == "failed" and len(summary["runs"]) == 1  # the next method was not started
    assert not list(out.glob(".*.tmp"))


def test_a_disk_too_full_for_the_summary_still_names_the_file(tiny_spec, write_spec, tmp_path, monkeypatch):
    tiny_spec["methods"] = tiny_spec["methods"][:1]
    out = tmp_path / "run"
    _disk_full_after(monkeypatch, out, 0, atomic_too=True)
    res = runner.invoke(app, ["run", str(write_spec(tiny_spec)), "--out", str(out), "--quiet"])
    assert res.exit_code == 1, res.output
    assert res.output.strip().splitlines()[-1] == f"error: cannot write {out / 'metrics.jsonl'}: No space left on device; the disk is full"
    assert json.loads((out / "summary.json").read_text())["status"] == "running"  # the last summary the disk took, whole
    assert not list(out.glob(".*.tmp"))


# ----------------------------------------------------------------------------- 12. labels


@pytest.mark.parametrize("label", ["..", ".", "a/b", "a\\b", "   ", " bptt", "a\nb", "x" * 101])
def test_labels_unusable_as_names_are_refused(tiny_spec, label):
    tiny_spec["methods"][0]["label"] = label
    with pytest.raises(SpecError, match="methods.0.label"):
        validate_spec(tiny_spec)


def test_labels_with_inner_spaces_and_punctuation_are_fine(tiny_spec):
    tiny_spec["methods"][0]["label"] = "bptt a (k=8)"
    assert validate_spec(tiny_spec).methods[0].display_label == "bptt a (k=8)"


# ----------------------------------------------------------------------------- 14. help text and README


def test_help_and_errors_print_brackets_as_written(tiny_spec, write_spec, tmp_path, monkeypatch):
    res = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200"})  # Rich sizes help by COLUMNS: one line per option
    assert "(needs seqpar[mlflow])" in res.output and "needs seqpar[tb])" in res.output  # as written, not eaten as Rich markup
    import seqpar.track.tensorboard as tb

    monkeypatch.setattr(tb, "available", lambda: False)
    res = runner.invoke(app, ["run", str(write_spec(tiny_spec)), "--out", str(tmp_path / "o"), "--tensorboard"])
    _one_line_exit_2(res, "pip install 'seqpar[tb]'")


def test_docs_say_which_parallel_evals_log_jacobi_rollout_dist():
    text = " ".join((REPO / "docs" / "guide" / "methods.md").read_text().split())
    at = text.index("(`jacobi_rollout_dist`")
    assert "`refresh: jacobi`" in text[at - 200 : at], text[at - 200 : at + 50]


def test_a_plain_parallel_eval_has_no_jacobi_distance(tiny_spec):
    import jax

    from seqpar.model.rollout import rollout_states
    from seqpar.train.loop import build_experiment

    tiny_spec["methods"] = tiny_spec["methods"][1:]
    spec = validate_spec(tiny_spec)
    exp = build_experiment(spec)
    method = spec.methods[0].build(exp.model, exp.task)
    state = method.init(jax.random.key(0), exp.init_params, exp.train)
    states = rollout_states(exp.model, method.params(state), exp.train.x)
    metrics = method.eval_metrics(state, exp.train, states, 0.0)
    assert "table_rollout_dist" in metrics and not any(k.startswith("jacobi_rollout_dist") for k in metrics)


def test_config_classes_are_found():
    names = {c.__name__ for c in _config_classes()}
    assert {"Spec", "TrainConfig", "ModelConfig", "AdamConfig", "ParallelConfig", "CharLMConfig", "LinearSchedule"} <= names
    assert all(issubclass(c, BaseModel) for c in _config_classes())


# ----------------------------------------------------------------------------- 11. round four


def test_plot_of_a_setting_key_with_a_slash_writes_inside_out_with_no_traceback(tmp_path):
    a = _record(tmp_path, "a", {"a/b": [1, 2], "../../escape": 1})
    b = _record(tmp_path, "b", {"a/b": [3], "../../escape": 2})
    res = runner.invoke(app, ["plot", str(a), str(b), "--out", str(tmp_path / "plots")])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    written = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert "final_vs_a-b.png" in written and "final_vs_..-..-escape.png" in written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "plots"]  # nothing beside --out


def test_plot_and_compare_turn_an_unexpected_error_into_one_line(tmp_path, monkeypatch):
    import seqpar.analysis.plots as plots

    a = _record(tmp_path, "a")

    def broken(*args, **kwargs):
        raise RuntimeError("no figure today")

    monkeypatch.setattr(plots, "plot_records", broken)
    res = runner.invoke(app, ["plot", str(a), "--out", str(tmp_path / "plots")])
    assert res.exit_code == 1
    assert res.output.strip() == "error: unexpected RuntimeError: no figure today (rerun with --debug for the traceback)"


@pytest.mark.parametrize("var, value", [("SLURM_NTASKS", "abc"), ("SUBMITIT_LOCAL_NTASKS", "two")])
def test_a_launcher_variable_that_is_not_a_number_is_one_line_naming_it(tiny_spec, write_spec, tmp_path, monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    spec = str(write_spec(tiny_spec))
    for args in (["run", spec, "--out", str(tmp_path / "out"), "--quiet"], ["validate", spec]):
        _one_line_exit_2(runner.invoke(app, args), f"environment variable {var}={value!r}: expected a whole number")
    assert not (tmp_path / "out").exists()

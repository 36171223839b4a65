"""User code is first-class: a researcher's cell, task, method and data through every path, no fork.

A cell as two plain functions beside a spec (`type: function`), a spec's `plugins:`, an
installed plugin package (entry points), `seqpar.register_*` from Python in any order, arrays
in memory, paths resolved against the spec's directory; and every mistake a researcher makes
there is one line, exit 2, nothing written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import seqpar
from seqpar import testing as checks
from seqpar.cli import app
from seqpar.methods.bptt import BPTTConfig
from seqpar.model.cells import CELLS
from seqpar.model.cells.checks import CellCheckError
from seqpar.spec import SpecError, validate_spec

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
runner = CliRunner()

# Tiny everywhere: seconds per method.
SMALL = ["train.steps=6", "train.eval_every=3", "train.batch_size=8", "task.length=8", "task.train_sequences=16"]
SMALL += ["task.val_sequences=16", "task.test_sequences=16", "model.hidden=8", "train.lle_sequences=0"]


def _module(tmp_path: Path, body: str) -> str:
    """A module of a unique name in tmp_path (imports are cached per process: names never repeat)."""
    name = f"usercell_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    return name


CELL_SOURCE = (EXAMPLES / "function_cell" / "mycell.py").read_text()


def _beside_a_spec_run_from_elsewhere(tmp_path, monkeypatch):
    """The user's cell module in the spec's directory, the working directory elsewhere (where it does not import)."""
    specdir = tmp_path / "specdir"
    specdir.mkdir()
    module = _module(specdir, CELL_SOURCE)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return specdir, module, elsewhere


def _function_spec(tmp_path: Path, module: str, step: str = "step", structure: str = "full", **extra) -> Path:
    raw = yaml.safe_load((EXAMPLES / "function_cell" / "spec.yaml").read_text())
    raw["model"]["cell"] = {"type": "function", "init": f"{module}:init", "step": f"{module}:{step}", "structure": structure}
    raw.update(extra)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _one_line(res) -> str:
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    return lines[0]


# ----------------------------------------------------------------------------- registration


def test_registration_order_never_matters(tiny_spec):
    """`seqpar.spec` was imported and specs validated long before this registration; the union is
    read when a spec is validated, so the new name is valid at once (and listed when misspelt)."""
    validate_spec(tiny_spec)  # the registries were read already
    name = f"late_{uuid.uuid4().hex[:6]}"
    with pytest.raises(SpecError, match="unknown type"):
        validate_spec({**tiny_spec, "model": {"cell": name, "hidden": 8}})
    seqpar.register_cell(name, init=lambda key, i, h: {"w": jnp.zeros((i, h))}, step=lambda p, h, x: jnp.tanh(x @ p["w"] + h))
    try:
        spec = validate_spec({**tiny_spec, "model": {"cell": name, "hidden": 8}})
        assert spec.model_dump(mode="json")["model"]["cell"] == name  # recorded as the bare name, like a built-in
        with pytest.raises(SpecError) as e:
            validate_spec({**tiny_spec, "model": {"cell": name + "x", "hidden": 8}})
        assert f"did you mean {name!r}" in str(e.value)
    finally:
        CELLS.remove(name)


def test_a_name_registered_twice_is_one_line_naming_both():
    with pytest.raises(ValueError, match=r"cell 'gru' is registered twice \(by seqpar.model.cells.gru and by "):
        seqpar.register_cell("gru", init=lambda k, i, h: {}, step=lambda p, h, x: h)


def test_register_cell_refuses_a_wrong_signature_in_one_line():
    with pytest.raises(ValueError, match=r"step .*must take \(params, h, x\)"):
        seqpar.register_cell("never", init=lambda k, i, h: {}, step=lambda p, h: h)  # type: ignore[arg-type]
    assert "never" not in CELLS


def test_a_registered_method_and_task_class_train_like_built_ins(tiny_spec, tmp_path):
    """The class protocol: a `MethodConfig` / `TaskConfig` subclass with its own `type:` literal."""
    from seqpar.tasks.delayed_recall import DelayedRecallConfig

    class EchoBPTT(BPTTConfig):
        """BPTT under another name: a user's method that reuses a built-in's runtime."""

        type: Literal["echo_bptt"] = "echo_bptt"  # type: ignore[assignment]

    class Recall3(DelayedRecallConfig):
        """Delayed recall under another name."""

        type: Literal["recall3"] = "recall3"  # type: ignore[assignment]

    seqpar.register_method("echo_bptt", EchoBPTT)
    seqpar.register_task("recall3", Recall3)
    try:
        with pytest.raises(ValueError, match="must declare `type: Literal"):
            seqpar.register_method("other_name", EchoBPTT)
        raw = {**tiny_spec, "task": {**tiny_spec["task"], "type": "recall3"}, "methods": [{**tiny_spec["methods"][0], "type": "echo_bptt"}]}
        record = seqpar.run(raw, out=tmp_path / "run")
        assert record.methods[0].status == "completed" and record.methods[0].method == "echo_bptt"
        loss = record.methods[0].rollout_loss_test
        assert loss is not None and np.isfinite(loss)
    finally:
        from seqpar.methods import METHODS
        from seqpar.tasks import TASKS

        METHODS.remove("echo_bptt")
        TASKS.remove("recall3")


# ----------------------------------------------------------------------------- a function pair beside the spec


def test_a_function_cell_beside_the_spec_trains_every_method_from_any_directory(tmp_path, monkeypatch):
    """BPTT and quasi-DEER with the exact adjoint take the same gradient, so they end at the same
    test loss; the table trains too; the run records where the module was found and that the
    Jacobian came from autodiff; a resume in a fresh process, elsewhere, finds the module."""
    specdir, module, elsewhere = _beside_a_spec_run_from_elsewhere(tmp_path, monkeypatch)
    spec = _function_spec(specdir, module)
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", str(spec), "--out", str(out), "--quiet", *[a for s in SMALL for a in ("--set", s)]])
    assert res.exit_code == 0, res.output
    assert res.output.count("no analytic Jacobian") == 1  # said once
    summary = json.loads((out / "summary.json").read_text())
    loss = {r["label"]: r["final"]["rollout_loss_test"] for r in summary["runs"]}
    assert {r["status"] for r in summary["runs"]} == {"completed"}
    assert abs(loss["bptt"] - loss["quasi-deer"]) <= 1e-4 * max(1.0, loss["bptt"]), loss
    assert np.isfinite(loss["parallel"])
    assert summary["model"]["jacobian"] == "autodiff"
    recorded = yaml.safe_load((out / "spec.yaml").read_text())
    assert recorded["spec_dir"] == str(specdir.resolve())
    assert recorded["model"]["cell"]["init"] == f"{module}:init"
    # What --resume, a worker or a SLURM job does first: read the recorded spec and build its model, in a
    # fresh process, from a directory where the module is not importable.
    probe = "from seqpar.train.runner import load_run_spec; from seqpar.train.loop import build_experiment; import sys; "
    probe += "print(build_experiment(load_run_spec(__import__('pathlib').Path(sys.argv[1]))).model.cell_jacobian_kind)"
    done = subprocess.run([sys.executable, "-c", probe, str(out)], cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "autodiff", done.stderr


def test_a_function_cell_is_tuned_and_its_best_spec_reruns_from_elsewhere(tmp_path, monkeypatch):
    """`seqpar tune` on a spec whose cell is a user's module beside it: every trial builds the cell,
    and best.yaml (which carries the spec's directory) reproduces the tuned test loss when run
    from a directory where the module is not importable."""
    pytest.importorskip("optuna")
    specdir, module, _ = _beside_a_spec_run_from_elsewhere(tmp_path, monkeypatch)
    raw = yaml.safe_load(_function_spec(specdir, module).read_text())
    raw["methods"] = [m for m in raw["methods"] if m["type"] == "bptt"]
    raw["tune"] = {"trials": 2, "seeds": [0], "space": {"bptt": {"optimizer.lr": {"log": [1e-3, 1e-1]}}}}
    spec = specdir / "tune.yaml"
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = tmp_path / "study"
    res = runner.invoke(app, ["tune", str(spec), "--out", str(out), "--quiet", *[a for s in SMALL for a in ("--set", s)]])
    assert res.exit_code == 0, res.output
    (method,) = json.loads((out / "tune.json").read_text())["methods"]
    assert method["trials"]["completed"] + method["trials"]["pruned"] == 2 and method["trials"]["failed"] == 0
    res = runner.invoke(app, ["run", str(out / "best.yaml"), "--out", str(tmp_path / "again"), "--quiet"])
    assert res.exit_code == 0, res.output
    (record,) = (tmp_path / "again").glob("**/summary.json")
    (again,) = [r["final"]["rollout_loss_test"] for r in json.loads(record.read_text())["runs"]]
    assert again == pytest.approx(method["final"][0]["rollout_loss_test"], abs=1e-6)


BROKEN = {
    "a module that does not import": ("nosuchmodule_x", "step", "module 'nosuchmodule_x' not found (looked in"),
    "a name the module lacks": (None, "stepp", "has no 'stepp'; it defines: init, liar, np_step, short, step, wrong_shape"),
    "a step with the wrong signature": (None, "short", "must take (params, h, x), got short(params, h)"),
    "a step of the wrong shape": (None, "wrong_shape", "its step returned (16,) float32, expected (8,) float32"),
    "a NumPy step": (None, "np_step", "its step is not traceable by JAX (TracerArrayConversionError)"),
    "a cell declared diagonal that is not": (None, "liar", "declared diagonal, but d step / d h has entries outside that structure"),
}
BROKEN_SOURCE = (
    CELL_SOURCE
    + """

import numpy as np


def short(params, h):
    return h


def wrong_shape(params, h, x):
    return jnp.concatenate([h, h])


def np_step(params, h, x):
    return np.tanh(h)


def liar(params, h, x):
    return step(params, h, x) + 0.1 * jnp.roll(h, 1)
"""
)


@pytest.mark.parametrize("case", list(BROKEN), ids=list(BROKEN))
def test_a_researchers_mistake_is_one_line_exit_2_and_nothing_written(tmp_path, case):
    module, step, expected = BROKEN[case]
    module = module or _module(tmp_path, BROKEN_SOURCE)
    structure = "diagonal" if step == "liar" else "full"
    spec = _function_spec(tmp_path, module, step, structure)
    out = tmp_path / "out"
    res = runner.invoke(app, ["run", str(spec), "--out", str(out), "--quiet", *[a for s in SMALL for a in ("--set", s)]])
    line = _one_line(res)
    assert res.exit_code == 2 and line.startswith("error: ") and expected in line, line
    assert not out.exists()


def test_a_plugin_that_fails_to_import_is_one_line_naming_it(tmp_path, tiny_spec, write_spec):
    bad = _module(tmp_path, "import jax\nraise RuntimeError('no GPU here')\n")
    res = runner.invoke(app, ["validate", str(write_spec({**tiny_spec, "plugins": [bad]}))])
    assert res.exit_code == 2
    assert (
        _one_line(res)
        == f"error: {tmp_path / 'spec.yaml'}: line 29: plugins.0: module {bad!r} failed to import: RuntimeError: no GPU here ({bad}.py:2)"
    )


# ----------------------------------------------------------------------------- plugins: in every process


def test_a_specs_plugins_are_imported_by_every_worker_of_a_sweep(tmp_path, tiny_spec, write_spec):
    """`plugins:` registers a diagonal cell by name; the sweep's worker processes import it too."""
    plugin = _module(
        tmp_path,
        """
        import jax
        import jax.numpy as jnp

        import seqpar


        def init(key, input_size, hidden_size):
            kx, ka = jax.random.split(key)
            a = jax.random.uniform(ka, (hidden_size,), minval=-1, maxval=1)
            return {"wx": jax.random.normal(kx, (input_size, hidden_size)), "a": a}


        def step(params, h, x):
            return jnp.tanh(x @ params["wx"] + params["a"] * h)


        seqpar.register_cell("plugged", init=init, step=step, structure="diagonal")
        """,
    )
    raw = {**tiny_spec, "plugins": [plugin], "model": {"cell": "plugged", "hidden": 8}, "sweep": {"seed": [0, 1]}}
    raw["methods"] = [{"type": "deer", "optimizer": {"type": "adam", "lr": 1e-2}}]
    out = tmp_path / "sweep"
    res = runner.invoke(app, ["run", str(write_spec(raw)), "--out", str(out), "--workers", "2", "--quiet"])
    assert res.exit_code == 0, res.output
    index = json.loads((out / "sweep.json").read_text())
    assert [p["status"] for p in index["points"]] == ["completed", "completed"]
    point = yaml.safe_load(next(out.glob("000_*/spec.yaml")).read_text())
    assert point["plugins"] == [plugin] and point["spec_dir"] == str(tmp_path.resolve())
    summary = json.loads(next(out.glob("000_*/summary.json")).read_text())
    assert summary["model"] == {"jacobian": "autodiff", "jacobian_structure": "diagonal"}


def _install(package: Path, target: Path) -> None:
    """pip install a copy of a plugin package into `target` (not into this environment)."""
    src = target.parent / f"src-{package.name}"
    shutil.copytree(package, src)
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target), str(src)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)


def test_an_installed_plugin_package_is_found_by_its_entry_point(tmp_path):
    """examples/softgru, installed: its cells and task by name, with no plugins: line (the CLI, in
    a fresh process, imports the entry point); a broken one is one line naming it."""
    target = tmp_path / "site"
    _install(EXAMPLES / "softgru", target)
    env = {**os.environ, "PYTHONPATH": str(target)}
    small = [a for s in SMALL if not s.startswith("task.length") for a in ("--set", s)]
    cmd = [sys.executable, "-m", "seqpar", "run", str(EXAMPLES / "softgru.yaml"), "--out", str(tmp_path / "run"), "--quiet", *small]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    loss = {r["label"]: r["final"]["rollout_loss_test"] for r in summary["runs"]}
    assert abs(loss["bptt"] - loss["newton"]) <= 1e-4, loss  # exact Newton on a diagonal cell: BPTT's gradient
    assert summary["task"]["baseline_formula"].startswith("mean over t of min(t, k - 1) / k^2")

    broken = tmp_path / "broken"
    (broken / "brokenplug").mkdir(parents=True)
    (broken / "brokenplug" / "__init__.py").write_text("raise ImportError('needs a GPU build')\n")
    (broken / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "brokenplug"\nversion = "0"\n[project.entry-points."seqpar.plugins"]\nbrokenplug = "brokenplug"\n'
        '[tool.setuptools]\npackages = ["brokenplug"]\n'
    )
    _install(broken, target)
    done = subprocess.run(
        [sys.executable, "-m", "seqpar", "validate", str(EXAMPLES / "softgru.yaml")], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: plugin entry point 'brokenplug' of brokenplug (seqpar.plugins) failed to import 'brokenplug': "
        "ImportError: needs a GPU build (__init__.py:1)"
    )


# ----------------------------------------------------------------------------- a diagonal function pair


def test_a_diagonal_function_cell_is_solved_exactly_by_elementwise_newton():
    """Declared diagonal, its Jacobian's diagonal is one jvp: Newton on it is exact (states and
    gradient); the same functions declared diagonal with a coupling are refused."""
    name = f"diag_{uuid.uuid4().hex[:6]}"

    def init(key, i, h):
        kx, ka = jax.random.split(key)
        return {"wx": jax.random.normal(kx, (i, h)), "a": jax.random.uniform(ka, (h,), minval=-1, maxval=1)}

    def step(p, h, x):
        return jnp.tanh(x @ p["wx"] + p["a"] * h)

    seqpar.register_cell(name, init=init, step=step, structure="diagonal")
    try:
        for check in (
            checks.declares_the_truth,
            checks.jacobian_is_jacfwd,
            checks.newton_solves_the_rollout,
            checks.adjoint_is_the_bptt_gradient,
        ):
            check(name)
        model, _ = checks.model_of(name)
        assert model.jacobian_structure == "diagonal" and model.cell_jacobian_kind == "autodiff"
    finally:
        CELLS.remove(name)
    liar = f"liar_{uuid.uuid4().hex[:6]}"
    seqpar.register_cell(liar, init=init, step=lambda p, h, x: step(p, h, x) + 0.5 * jnp.roll(h, 1), structure="diagonal")
    try:
        with pytest.raises(CellCheckError, match=r"declared diagonal, but .* the largest is J\[\d+, \d+\]"):
            checks.declares_the_truth(liar)
    finally:
        CELLS.remove(liar)


def test_a_flax_module_is_taken_as_it_is():
    """A researcher's own `nnx.Module` (no seqpar class): registered with `module=`, it passes the
    registry's checks and Newton solves it exactly."""
    from flax import nnx

    class TanhRNN(nnx.Module):
        def __init__(self, input_size, hidden_size, *, rngs):
            self.w = nnx.Linear(input_size, hidden_size, rngs=rngs)
            self.u = nnx.Linear(hidden_size, hidden_size, use_bias=False, rngs=rngs)

        def __call__(self, h, x):
            return jnp.tanh(self.w(x) + self.u(h))

    name = f"module_{uuid.uuid4().hex[:6]}"
    seqpar.register_cell(name, module=TanhRNN)
    try:
        for check in (checks.declares_the_truth, checks.scan_is_a_python_loop, checks.newton_solves_the_rollout):
            check(name)
        checks.adjoint_is_the_bptt_gradient(name)
        checks.trains_with(name, "parallel")
        model, params = checks.model_of(name)
        assert "u" in params["cell"]["inner"] and model.cell_jacobian_kind == "autodiff"
    finally:
        CELLS.remove(name)
    with pytest.raises(ValueError, match="give one of init= and step=, config= or module="):
        seqpar.register_cell("both", module=TanhRNN, config=BPTTConfig)  # type: ignore[arg-type]


def test_a_user_cell_trains_on_a_sharded_mesh(tiny_spec, tmp_path):
    """Sharding: the user cell of conftest on 2 of the 4 virtual devices, every row state split."""
    from conftest import USER_CELL

    raw = {**tiny_spec, "model": {"cell": USER_CELL, "hidden": 8}, "train": {**tiny_spec["train"], "devices": 2}}
    with pytest.warns(UserWarning, match="no analytic Jacobian"):
        record = seqpar.run(raw, out=tmp_path / "run")
    assert [m.status for m in record.methods] == ["completed", "completed"]


# ----------------------------------------------------------------------------- data in memory, paths beside the spec


def _arrays(seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, (60, 6))
    return {"x": x, "y": x[:, 1]}  # the label is the second token: needs memory at the last step


DATA_SPEC = {
    "name": "mem",
    "task": {"type": "dataset"},
    "model": {"cell": "gru", "hidden": 8},
    "train": {"steps": 4, "batch_size": 8, "eval_every": 2, "lle_sequences": 0},
    "methods": [{"type": "bptt", "optimizer": {"type": "adam", "lr": 1e-2}}],
}


def test_arrays_in_memory_train_as_the_same_file_does_and_are_kept_for_a_resume(tmp_path):
    arrays = _arrays()
    np.savez(tmp_path / "d.npz", **arrays)
    from_memory = seqpar.run(DATA_SPEC, out=tmp_path / "mem", data=arrays)
    from_file = seqpar.run({**DATA_SPEC, "task": {"type": "dataset", "path": str(tmp_path / "d.npz")}}, out=tmp_path / "file")
    assert from_memory.methods[0].rollout_loss_test == from_file.methods[0].rollout_loss_test
    kept = tmp_path / "mem" / "data.npz"
    assert from_memory.spec["task"]["path"] == str(kept.resolve())
    with np.load(kept) as f:
        assert sorted(f.files) == ["x", "y"] and np.array_equal(f["x"], arrays["x"])


@pytest.mark.parametrize(
    "data, spec, expected",
    [
        ({"x": np.zeros((60, 6), int), "y": np.zeros(59, int)}, None, "array 'y': expected (N,) = (60,) one target per sequence"),
        ({"x": np.zeros((60, 6), int), "y": np.zeros(60, int), "z": np.zeros(3)}, None, "unknown array 'z'"),
        (_arrays(), {**DATA_SPEC, "task": {"type": "delayed_recall"}}, "task must be {type: dataset} with no path"),
        (None, DATA_SPEC, "task.path: required: an .npz file (or pass the arrays in memory"),
    ],
    ids=["bad shape", "unknown key", "not a dataset task", "no data at all"],
)
def test_bad_arrays_in_memory_are_one_line_and_nothing_is_written(tmp_path, data, spec, expected):
    with pytest.raises(SpecError) as e:
        seqpar.run(spec or DATA_SPEC, out=tmp_path / "out", data=data)
    assert expected in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_a_relative_data_path_is_the_spec_directorys_whatever_the_working_directory(tmp_path, monkeypatch):
    specdir, elsewhere = tmp_path / "exp", tmp_path / "cwd"
    specdir.mkdir()
    elsewhere.mkdir()
    np.savez(specdir / "d.npz", **_arrays())
    (specdir / "spec.yaml").write_text(yaml.safe_dump({**DATA_SPEC, "task": {"type": "dataset", "path": "d.npz"}}))
    monkeypatch.chdir(elsewhere)
    res = runner.invoke(app, ["run", str(specdir / "spec.yaml"), "--out", "run", "--quiet"])
    assert res.exit_code == 0, res.output
    recorded = yaml.safe_load((elsewhere / "run" / "spec.yaml").read_text())
    assert recorded["task"]["path"] == str((specdir / "d.npz").resolve())
    # A `--set` value lands in the spec, so it resolves against the spec's directory too.
    res = runner.invoke(app, ["validate", str(specdir / "spec.yaml"), "--set", "task.path=missing.npz"])
    assert res.exit_code == 2 and f"file not found: {str(specdir / 'missing.npz')!r}" in _one_line(res)


# ----------------------------------------------------------------------------- the page


def test_the_extending_page_runs_as_a_notebook(tmp_path, monkeypatch):
    """Every python block of docs/guide/extending.md, in order: the registrations and the run with
    arrays in memory work as printed (the registrations are undone afterwards)."""
    import re

    page = ROOT / "docs" / "guide" / "extending.md"
    blocks = re.findall(r"^```python\n(.*?)^```$", page.read_text(), flags=re.S | re.M)
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    before = set(CELLS.names())
    ns: dict = {"__name__": "extending_page"}
    try:
        for block in blocks:
            # dont_inherit: the page's code runs as a reader's file would, without this module's `from __future__` flags.
            exec(compile(block, str(page), "exec", dont_inherit=True), ns)  # noqa: S102 - the page's own examples
        assert {"diag_tanh", "leaky_diag"} <= set(CELLS.names())
        checks.declares_the_truth("leaky_diag")  # its written-out Jacobian is jax.jacfwd's
        record = ns["record"]
        assert record.methods[0].status == "completed"
        assert (tmp_path / "results" / "my-data" / "data.npz").is_file()
    finally:
        for name in set(CELLS.names()) - before:
            CELLS.remove(name)

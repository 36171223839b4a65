"""The one-line errors a newcomer meets first: misspelt types, misspelt `--set` keys, `--set KEY VALUE`, huge values.

Each test asserts the whole line the user reads, so a regression in wording shows as a diff."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from seqpar.cli import app
from seqpar.config.registry import Registry
from seqpar.methods import METHODS as METHOD_REGISTRY
from seqpar.model.cells import CELLS
from seqpar.optim import OPTIMIZERS
from seqpar.tasks import TASKS

runner = CliRunner()


def _error_line(res) -> str:
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1, res.output
    return lines[0]


def _known(registry: Registry) -> str:
    """The registry's names as the error lists them: a new method, cell or task joins the expected line."""
    return ", ".join(sorted(registry.names()))


METHODS = _known(METHOD_REGISTRY)


@pytest.mark.parametrize(
    "where, typo, line",
    [
        (
            ("methods", 0, "type"),
            "dear",
            f"line 19: methods.0.type: unknown type 'dear' (did you mean 'deer'?); expected one of: {METHODS}",
        ),
        (
            ("methods", 1, "type"),
            "paralel",
            f"line 23: methods.1.type: unknown type 'paralel' (did you mean 'parallel'?); expected one of: {METHODS}",
        ),
        (
            ("model", "cell"),
            "gur",
            f"line 11: model.cell.type: unknown type 'gur' (did you mean 'gru'?); expected one of: {_known(CELLS)}",
        ),
        (
            ("task", "type"),
            "delayed_recal",
            f"line 4: task.type: unknown type 'delayed_recal' (did you mean 'delayed_recall'?); expected one of: {_known(TASKS)}",
        ),
        (
            ("methods", 0, "optimizer", "type"),
            "adamm",
            f"line 21: methods.0.optimizer.type: unknown type 'adamm' (did you mean 'adam'?); expected one of: {_known(OPTIMIZERS)}",
        ),
        (
            ("methods", 1, "consistency_schedule"),
            {"type": "cosin"},
            "line 29: methods.1.consistency_schedule.type: unknown type 'cosin' (did you mean 'cosine'?); "
            "expected one of: constant, cosine, linear",
        ),
    ],
)
def test_misspelt_type_suggests_the_nearest(tiny_spec, write_spec, where, typo, line):
    node = tiny_spec
    for k in where[:-1]:
        node = node[k]
    node[where[-1]] = typo
    path = write_spec(tiny_spec)
    assert _error_line(runner.invoke(app, ["validate", str(path)])) == f"error: {path}: {line}"


def test_misspelt_set_key_blames_the_set_not_the_file(tiny_spec, write_spec):
    res = runner.invoke(app, ["validate", str(write_spec(tiny_spec)), "--set", "trian.steps=50"])
    assert _error_line(res) == (
        "error: --set trian.steps=50: trian: unknown key; did you mean 'train'? "
        "(valid keys: name, seed, plugins, spec_dir, task, model, train, methods, sweep, tune)"
    )


def test_bad_set_value_blames_the_set(tiny_spec, write_spec):
    res = runner.invoke(app, ["validate", str(write_spec(tiny_spec)), "--set", "methods.0.type=dear"])
    assert _error_line(res) == (
        "error: --set methods.0.type=dear: methods.0.type: unknown type 'dear' (did you mean 'deer'?); "
        "expected one of: bptt, deer, memoryless, parallel, truncated_bptt"
    )


def test_misspelt_top_level_key_in_the_file_lists_sweep_and_tune(tiny_spec, write_spec):
    tiny_spec["swep"] = {"seed": [0, 1]}
    path = write_spec(tiny_spec)
    assert _error_line(runner.invoke(app, ["validate", str(path)])) == (
        f"error: {path}: line 28: swep: unknown key; did you mean 'sweep'? "
        "(valid keys: name, seed, plugins, spec_dir, task, model, train, methods, sweep, tune)"
    )


@pytest.mark.parametrize("command", ["validate", "run"])
def test_set_with_a_space_instead_of_equals_gets_a_hint(tiny_spec, write_spec, tmp_path, command):
    args = [command, str(write_spec(tiny_spec)), "--set", "train.steps", "50"]
    res = runner.invoke(app, args + (["--out", str(tmp_path / "never")] if command == "run" else []))
    assert _error_line(res) == "error: --set train.steps: expected KEY=VALUE with no space around '=' (write --set train.steps=VALUE)"
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("field", ["name", "label"])
def test_a_huge_rejected_value_is_cut_to_a_readable_length(tiny_spec, write_spec, field):
    if field == "name":
        tiny_spec["name"] = "a" * 100_000
        key = "name"
    else:
        tiny_spec["methods"][0]["label"] = "b" * 100_000
        key = "methods.0.label"
    path = write_spec(tiny_spec)
    line = _error_line(runner.invoke(app, ["validate", str(path)]))
    assert len(line) < 300, len(line)
    char = "a" if field == "name" else "b"
    assert line.endswith(f"{key}: String should have at most 100 characters (got '{char * 58}… (100000 characters))")


def test_a_validator_that_quotes_the_value_is_cut_too(tiny_spec, write_spec):
    tiny_spec["methods"][0]["label"] = " " + "c" * 90  # under the length limit, refused for its leading space
    line = _error_line(runner.invoke(app, ["validate", str(write_spec(tiny_spec))]))
    assert line.endswith(f"methods.0.label: must not begin or end with whitespace (got ' {'c' * 57}… (91 characters))")


def test_registry_lookup_suggests_too():
    reg: Registry[int] = Registry("widget")
    reg.register("spanner")(1)
    reg.register("hammer")(2)
    with pytest.raises(KeyError, match=r"unknown widget 'spaner' \(did you mean 'spanner'\?\); expected one of: hammer, spanner"):
        reg.get("spaner")

"""Bad input through the real CLI: every mistake is one line naming the file, the key (and its
YAML line where the key is in the file), exit code 2, and no run directory."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from seqpar.cli import app

runner = CliRunner()

# Written out (not dumped from a dict) so each case can assert the line the message names.
BASE = """\
name: tiny
seed: 0
task:
  type: delayed_recall
  length: 8
  lag: 2
  vocab: 4
  train_sequences: 16
  test_sequences: 16
model:
  cell: gru
  hidden: 8
train:
  steps: 6
  batch_size: 8
  eval_every: 3
methods:
  - type: bptt
    optimizer: {type: adam, lr: 1.0e-2}
  - type: parallel
    optimizer: {type: adam, lr: 1.0e-2}
"""
BPTT_OPT = "  - type: bptt\n    optimizer: {type: adam, lr: 1.0e-2}\n"
PAR = "  - type: parallel\n"


def edit(old: str, new: str) -> str:
    assert BASE.count(old) == 1, old
    return BASE.replace(old, new)


# (id, spec text, strings the one-line message must contain: the dotted key first)
CASES = [
    ("non-positive steps", edit("steps: 6", "steps: 0"), ["train.steps", "line 14", "greater than 0"]),
    ("misspelt key", edit("steps: 6", "stpes: 6"), ["train.stpes", "line 14", "did you mean 'steps'"]),
    ("misspelt nested key", edit(BPTT_OPT, BPTT_OPT + "    unrol: 2\n"), ["methods.0.unrol", "line 20", "did you mean 'unroll'"]),
    ("lag not below length", edit("lag: 2", "lag: 8"), ["task.lag", "must be smaller than length=8"]),
    ("unknown task type", edit("type: delayed_recall", "type: delayed_recal"), ["task.type", "line 4", "delayed_recall"]),
    ("unknown cell", edit("cell: gru", "cell: transformer"), ["model.cell", "line 11", "gru", "lstm"]),
    ("unknown optimizer", edit(BPTT_OPT, BPTT_OPT.replace("adam", "rmsprop")), ["methods.0.optimizer.type", "line 19", "adam", "sgd"]),
    ("negative lr", edit(BPTT_OPT, BPTT_OPT.replace("1.0e-2", "-0.1")), ["methods.0.optimizer.lr", "line 19", "positive finite"]),
    ("nan lr", edit(BPTT_OPT, BPTT_OPT.replace("1.0e-2", ".nan")), ["methods.0.optimizer.lr", "line 19", "finite number"]),
    ("infinite weight", edit(PAR, PAR + "    consistency_weight: .inf\n"), ["methods.1.consistency_weight", "line 21", "finite"]),
    ("duplicate labels", edit(PAR, PAR.replace("- type", "- label: bptt\n    type")), ["methods.1.label", "duplicate method label"]),
    ("batch above train set", edit("batch_size: 8", "batch_size: 32"), ["train.batch_size", "line 15", "train_sequences=16"]),
    ("wrong type: string for int", edit("steps: 6", "steps: ten"), ["train.steps", "line 14", "integer"]),
    ("wrong type: fraction for int", edit("hidden: 8", "hidden: 2.5"), ["model.hidden", "line 12", "integer"]),
    ("wrong type: scalar for block", edit("model:\n  cell: gru\n  hidden: 8\n", "model: 3\n"), ["model", "line 10", "dictionary"]),
    ("name not directory-safe", edit("name: tiny", "name: a/b"), ["name", "line 1", "pattern"]),
    ("negative seed", edit("seed: 0", "seed: -1"), ["seed", "line 2"]),
    ("vocab below 2", edit("vocab: 4", "vocab: 1"), ["task.vocab", "line 7"]),
    (
        "non-positive checkpoint interval",
        edit("eval_every: 3", "eval_every: 3\n  checkpoint_every: 0"),
        ["train.checkpoint_every", "line 17"],
    ),
    ("non-positive target", edit("eval_every: 3", "eval_every: 3\n  target_loss: -1"), ["train.target_loss", "line 17"]),
    ("no methods", BASE.split("methods:")[0] + "methods: []\n", ["methods", "at least 1"]),
    ("missing block", BASE.replace("train:\n  steps: 6\n  batch_size: 8\n  eval_every: 3\n", ""), ["train", "required key is missing"]),
    ("duplicate YAML key", edit("steps: 6", "steps: 6\n  steps: 7"), ["train.steps", "line 15", "duplicate key", "line 14"]),
    ("malformed YAML", edit("cell: gru", "cell: [gru"), ["invalid YAML", "line"]),
    ("top level not a mapping", "- just\n- a list\n", ["top level must be a mapping"]),
    (
        "exceeds memory",
        edit("train_sequences: 16", "train_sequences: 10000000").replace("length: 8", "length: 100000"),
        ["task.train_sequences", "estimated memory", "--force"],
    ),
]


@pytest.mark.parametrize("text, expect", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_spec_is_one_line_exit_2_and_writes_nothing(tmp_path, text, expect):
    spec = tmp_path / "bad.yaml"
    spec.write_text(text)
    out, root = tmp_path / "out", tmp_path / "results"
    res = runner.invoke(app, ["run", str(spec), "--out", str(out), "--results-root", str(root), "--quiet"])
    assert res.exit_code == 2, res.output
    msg = res.output.strip()
    assert len(msg.splitlines()) == 1, msg
    assert msg.startswith(f"error: {spec}"), msg
    for s in expect:
        assert s in msg, (s, msg)
    assert not out.exists() and not root.exists()


def test_set_override_is_blamed_without_a_file_line(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(BASE)
    res = runner.invoke(app, ["run", str(spec), "--out", str(tmp_path / "out"), "--set", "train.steps=-3"])
    assert res.exit_code == 2 and "train.steps" in res.output and "line 14" not in res.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "make, expect",
    [
        (lambda d: d / "missing.yaml", "file not found"),
        (lambda d: d, "is a directory"),
        (lambda d: (d / "latin1.yaml").write_bytes(b"name: caf\xe9\n") and d / "latin1.yaml", "cannot read"),
    ],
    ids=["missing", "directory", "not utf-8"],
)
def test_unreadable_spec_file(tmp_path, make, expect):
    path = make(tmp_path)
    res = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and expect in res.output and str(path) in res.output, res.output
    assert not (tmp_path / "out").exists()


def test_output_path_that_is_a_file(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(BASE)
    taken = tmp_path / "taken"
    taken.write_text("mine")
    res = runner.invoke(app, ["run", str(spec), "--out", str(taken)])
    assert res.exit_code == 2 and "--out" in res.output and "is a file" in res.output
    assert taken.read_text() == "mine"
    res = runner.invoke(app, ["run", str(spec), "--out", str(taken / "sub")])
    assert res.exit_code == 2 and str(taken) in res.output


@pytest.mark.parametrize(
    "args, expect",
    [
        (["--resume", "{d}/nope"], "no such run directory"),
        (["--resume", "{d}/file"], "is a file"),
        (["--resume", "{d}"], "not a seqpar run directory"),
        (["{d}/s.yaml", "--resume", "{d}"], "give no SPEC"),
        ([], "missing SPEC"),
    ],
)
def test_bad_resume_arguments(tmp_path, args, expect):
    (tmp_path / "file").write_text("x")
    (tmp_path / "s.yaml").write_text(BASE)
    res = runner.invoke(app, ["run", *[a.format(d=tmp_path) for a in args]])
    assert res.exit_code == 2 and expect in res.output, res.output

"""The training clock: what it counts, `train.max_seconds`, and each method's sequential depth.

A fake clock makes time exact: it advances one second per training step (the loop polls
its stop flag once per step), 1000 s for each evaluation-and-log point and 500 s for each
reading taken while compiling. A clock that counted anything but training steps would
show it at once.
"""

from __future__ import annotations

import copy
import json
import math

import pytest

from seqpar.methods.base import METHODS, scan_depth
from seqpar.spec import validate_spec
from seqpar.train import loop
from seqpar.train.budget import SYNC_EVERY_S, Budget


class FakeClock:
    def __init__(self, lines: list):
        self.now, self.steps, self.lines = 0.0, 0, lines

    def __call__(self) -> float:
        if self.steps == 0:  # still compiling
            self.now += 500.0
        return self.now

    def tick(self) -> bool:  # the loop's stop-flag poll: once per step (and once before the first)
        self.steps += 1
        self.now += 1.0 if self.steps > 1 else 0.0
        return False

    def evaluation(self, line) -> None:  # the log callback runs at each evaluation point
        self.now += 1000.0
        self.lines.append(line)


def run_fake(monkeypatch, raw, methods=1):
    raw = {**raw, "methods": raw["methods"][:methods]}  # BPTT alone unless asked: compiling is the cost here
    exp = loop.build_experiment(validate_spec(raw))
    records, lines = [], []
    for m in exp.spec.methods:  # a fresh clock per method: each starts by compiling
        fake = FakeClock(lines)
        monkeypatch.setattr(loop, "clock", fake)
        records.append(loop.run_method(exp, m, fake.evaluation, should_stop=fake.tick))
    return records, lines


def test_clock_counts_training_steps_only(monkeypatch, tiny_spec):
    records, lines = run_fake(monkeypatch, tiny_spec, methods=2)
    for r in records:
        assert r["compile_s"] >= 500 and r["eval_compile_s"] >= 500  # compiling took fake time...
        assert r["wall_s"] == r["steps_done"] == 6  # ...which, like every evaluation, is not training time
        assert r["seconds_to_target"] == r["steps_to_target"]  # both None when not reached
        assert r["stop_reason"] == "steps"
    assert lines and all(line["wall_s"] == line["step"] for line in lines)
    assert [r["sequential_depth"] for r in records] == [2 * 8, 2]  # bptt, parallel at length 8
    horizons = [ln["agreement_horizon"] for ln in lines if ln["method"] == "parallel" and "rollout_loss_test" in ln]
    assert len(horizons) == 3 and all(0 <= h <= 8 for h in horizons)  # at every evaluation of the parallel method


def test_eval_interval_changes_nothing_but_the_grid(monkeypatch, tiny_spec):
    tiny_spec["train"].update(steps=12, eval_every=2, target_loss=1.5)
    coarse = copy.deepcopy(tiny_spec)
    coarse["train"]["eval_every"] = 6
    fine_records, fine_lines = run_fake(monkeypatch, tiny_spec)
    coarse_records, coarse_lines = run_fake(monkeypatch, coarse)
    by_step = {(ln["method"], ln["step"]): ln for ln in fine_lines}
    for ln in coarse_lines:  # every coarse evaluation is a fine one: same clock, same losses
        twin = by_step[(ln["method"], ln["step"])]
        assert ln["wall_s"] == twin["wall_s"] == ln["step"]
        assert ln["rollout_loss_val"] == pytest.approx(twin["rollout_loss_val"], rel=1e-6)
    for f, c in zip(fine_records, coarse_records, strict=True):
        assert f["wall_s"] == c["wall_s"] == 12
        if c["steps_to_target"] is not None:  # the coarse grid can only find it later, at its next point
            assert f["steps_to_target"] <= c["steps_to_target"] < f["steps_to_target"] + 6
            assert c["seconds_to_target"] == c["steps_to_target"]


def test_max_seconds_stops_before_the_budget_is_passed(monkeypatch, tiny_spec):
    tiny_spec["train"].update(steps=20, eval_every=4, max_seconds=5.5)
    records, lines = run_fake(monkeypatch, tiny_spec)
    for r in records:
        # 1 s per step: 5 steps fit, a 6th would pass 5.5 s; evaluations (1000 s each) do not count.
        assert (r["status"], r["stop_reason"], r["steps_done"], r["wall_s"]) == ("completed", "max_seconds", 5, 5.0)
        last = [ln for ln in lines if ln["method"] == r["label"]][-1]
        assert last["step"] == 5 and "rollout_loss_test" in last  # the stop ends with an evaluation
        assert r["final"]["rollout_loss_test"] == last["rollout_loss_test"]


def test_budget_predicts_its_sync_points():
    b = Budget(1.0)
    b.start(0)
    assert b.due(1) and not b.due(0)
    assert not b.spent(1, 0.05, 0.05) and b.check_at == 1 + 9  # 19 more steps of 0.05 s fit in 0.95 s: look again after 9
    assert not b.spent(10, 0.7, 0.06) and b.check_at == 12  # slower now: 5 fit, look again after 2
    assert not b.spent(12, 0.9, 0.05) and b.check_at == 13  # 2 fit: look after 1
    assert b.spent(13, 0.96, 0.05)  # 0.04 s left: not one more step
    # A fast first step plans no more than SYNC_EVERY_S ahead: a step that then grows tenfold
    # (a Newton method whose iterations grow) passes the budget by about a second, not by 2.5x.
    fast = Budget(12.0)
    fast.start(0)
    assert not fast.spent(1, 0.03, 0.03) and fast.check_at == 1 + int(SYNC_EVERY_S / 0.03)

    def next_check() -> int:
        assert fast.check_at is not None
        return fast.check_at

    done = next_check()
    wall = 0.03 + (done - 1) * 0.3  # every step after the first took 0.3 s
    while not fast.spent(done, wall, 0.3):
        steps = next_check() - done
        done, wall = next_check(), wall + steps * 0.3
    assert wall <= 12.0 + SYNC_EVERY_S / 0.03 * 0.3 and wall < 12.0 + 0.3 * 2  # the last plan saw 0.3 s steps
    none = Budget(None)
    none.start(0)
    assert not none.due(10**6) and not none.spent(5, 1e9, 1.0)


def test_a_real_budget_is_recorded(tmp_path, tiny_spec, write_spec):
    from typer.testing import CliRunner

    from seqpar.cli import app

    tiny_spec["train"].update(steps=10_000, max_seconds=1e-3)
    tiny_spec["methods"] = tiny_spec["methods"][:1]
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", str(write_spec(tiny_spec)), "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    (r,) = json.loads((out / "summary.json").read_text())["runs"]
    assert r["stop_reason"] == "max_seconds" and r["status"] == "completed"
    assert 1 <= r["steps_done"] < 10_000


# ----------------------------------------------------------------------------- sequential depth


def _method(raw_method, length=8):
    raw = copy.deepcopy(
        {
            "name": "d",
            "task": {"type": "delayed_recall", "length": length, "lag": 2, "vocab": 4, "train_sequences": 8, "test_sequences": 8},
            "model": {"cell": "gru", "hidden": 4},
            "train": {"steps": 1, "batch_size": 8},
            "methods": [{"optimizer": {"type": "adam", "lr": 1e-2}, **raw_method}],
        }
    )
    spec = validate_spec(raw)
    exp = loop.build_experiment(spec)
    return spec.methods[0].build(exp.model, exp.task)


@pytest.mark.parametrize(
    ("raw", "metrics", "expected"),
    [
        ({"type": "bptt"}, {}, 2 * 8),
        ({"type": "truncated_bptt", "window": 2}, {}, 2 * 8),
        ({"type": "memoryless"}, {}, 2),
        ({"type": "parallel"}, {}, 2),
        ({"type": "parallel", "refresh": "jacobi", "refresh_every": 4, "sweeps": 3}, {}, 2 + 3 / 4),
        ({"type": "parallel", "refresh": "rollout", "refresh_every": 2}, {}, 2 + 8 / 2),
        ({"type": "parallel", "refresh": "newton", "refresh_every": 5, "iterations": 2}, {}, 2 + 2 * (6 + 1) / 5),
        # Newton: iterations of (linearise, scan of 2 ceil(log2 8) = 6 levels), then the adjoint the run used: on a CPU the
        # sequential one (a reverse scan of T = 8 steps, then one VJP pass), else the same scan backwards.
        ({"type": "deer"}, {"newton_iters_max": 3.0}, 3 * (6 + 1) + 8 + 1),
        ({"type": "deer", "adjoint": "parallel"}, {"newton_iters_max": 3.0}, 3 * (6 + 1) + 6 + 1),
        ({"type": "deer", "jacobian": "diagonal", "gradient": "diagonal"}, {"newton_iters_max": 3.0}, 3 * (6 + 1) + 6 + 1),
        ({"type": "deer", "max_iters": 7}, {}, 7 * (6 + 1) + 8 + 1),  # no count logged: the cap
        ({"type": "deer", "jacobian": "none"}, {"newton_iters_max": 5.0}, 5 * 1 + 8 + 1),  # Picard: one pass per iteration
        ({"type": "parallel", "segment": 4}, {}, 2 * 4),  # multiple shooting: each segment's K steps, both ways
        ({"type": "parallel", "segment": 64}, {}, 2 * 8),  # one segment: BPTT's
    ],
)
def test_sequential_depth_formulas(raw, metrics, expected):
    assert _method(raw).sequential_depth(8, metrics) == pytest.approx(expected)


def test_scan_depth():
    assert [scan_depth(t) for t in (1, 2, 3, 4, 8, 9, 1024)] == [0, 2, 4, 4, 6, 8, 20]


def test_every_method_states_its_depth_and_only_sequential_ones_grow_with_length():
    minimal = {"truncated_bptt": {"window": 2}}
    for name in METHODS.names():
        m8 = _method({"type": name, **minimal.get(name, {})}, 8)
        d8, d64 = m8.sequential_depth(8, {}), m8.sequential_depth(64, {})
        assert math.isfinite(d8) and 0 < d8 <= d64, name
        if name in ("parallel", "memoryless"):
            assert d8 == d64 == 2

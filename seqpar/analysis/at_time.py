"""`seqpar compare --at-seconds S` / `--at-step N`: every run read at the same training budget.

Equal steps are not equal cost: a parallel step and a BPTT step take different times. So
`compare` can read each run at its last evaluation within S seconds of *training* time
(the `wall_s` of its metrics lines: the loop's clock, compile, evaluation and checkpoints
excluded, the clock `seconds to target` uses) or within N optimizer steps, instead of at
its end. Each result becomes a copy whose `final` (and `diagnostics`) are that
evaluation's line, and whose steps/seconds to target count only if reached within the
budget; the grouping and the aggregation over seeds are then exactly `compare`'s. A run
whose clock never reached S (it ended sooner, or stopped at its own `train.max_seconds`
below S) is read at its last evaluation and counted as short in the `evaluated at` column,
never dropped. A run stopped by a `train.max_seconds` of at least S spent that budget (its
next step would have passed it, so its clock ends a fraction of a step short of it) and
counts as having reached S.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from typing import Any

from seqpar.records.reader import Result, number, read_metrics

FINAL_KEYS = ("rollout_loss_test", "rollout_loss_val", "rollout_loss_train", "rollout_acc_test", "rollout_acc_val", "objective")


@dataclass(frozen=True)
class At:
    """A training budget: `seconds` of the training clock or `step` optimizer steps (one of them)."""

    seconds: float | None = None
    step: int | None = None

    @property
    def field(self) -> str:
        return "wall_s" if self.seconds is not None else "step"

    @property
    def record_field(self) -> str:
        """How far the whole run got, in the budget's unit."""
        return "wall_s" if self.seconds is not None else "steps_done"

    @property
    def limit(self) -> float:
        return float(self.seconds if self.seconds is not None else self.step)  # type: ignore[arg-type]

    def describe(self) -> str:
        return f"{self.seconds:g} s of training" if self.seconds is not None else f"step {self.step}"


def evaluations(lines: list[dict[str, Any]], label: str) -> list[dict[str, Any]]:
    """The evaluation lines of one method (those with a held-out rollout loss), by step."""
    evals = [ln for ln in lines if ln.get("method") == label and "rollout_loss_test" in ln]
    return sorted(evals, key=lambda ln: ln["step"])


def last_within(evals: list[dict[str, Any]], at: At) -> dict[str, Any] | None:
    """The last evaluation whose training clock (or step) is at most the budget."""
    inside = [ln for ln in evals if (v := number(ln.get(at.field))) is not None and v <= at.limit]
    return inside[-1] if inside else None


def _spent_budget(r: Result, at: At) -> bool:
    """Stopped by its own `train.max_seconds`, which is at least the seconds asked for."""
    budget = number(r.settings.get("train.max_seconds"))
    return at.seconds is not None and r.record.get("stop_reason") == "max_seconds" and budget is not None and budget >= at.seconds


def result_at(r: Result, at: At, lines: list[dict[str, Any]] | None = None) -> Result:
    """`r` read at its last evaluation within `at`; `record["at"]` says where and whether it got there."""
    evals = evaluations(read_metrics(r.run_dir) if lines is None else lines, r.label)
    line = last_within(evals, at)
    reached = (number(r.record.get(at.record_field)) or 0.0) >= at.limit or _spent_budget(r, at)
    record = dict(r.record)
    record["final"] = {k: (line or {}).get(k) for k in FINAL_KEYS}
    record["diagnostics"] = dict(line or {})
    hit = number(r.record.get("seconds_to_target" if at.seconds is not None else "steps_to_target"))
    if hit is None or hit > at.limit:  # the target was not reached within the budget
        record["steps_to_target"] = record["seconds_to_target"] = None
    record["at"] = {
        "step": None if line is None else line["step"],
        "wall_s": None if line is None else number(line.get("wall_s")),
        "reached": reached,
    }
    return replace(r, record=record)


def results_at(rs: list[Result], at: At) -> list[Result]:
    cache: dict[Any, list[dict[str, Any]]] = {}
    out = []
    for r in rs:
        if r.run_dir not in cache:
            cache[r.run_dir] = read_metrics(r.run_dir)
        out.append(result_at(r, at, cache[r.run_dir]))
    return out


def annotate(rows: list[dict[str, Any]], rs: list[Result], at: At) -> None:
    """Add `row["at"]`: the budget, and per group the median step and clock of the evaluations
    read, how many runs reached the budget, and the last clock of those that did not."""
    for row in rows:
        dirs = set(row["run_dirs"])
        members = [r for r in rs if r.label == row["method"] and str(r.run_dir) in dirs]
        info = [r.record["at"] for r in members]
        short = [number(r.record.get(at.record_field)) for r in members if not r.record["at"]["reached"]]
        row["at"] = {
            "seconds": at.seconds,
            "step": at.step,
            "eval_step": _median([i["step"] for i in info]),
            "eval_wall_s": _median([i["wall_s"] for i in info]),
            "reached": sum(1 for i in info if i["reached"]),
            "runs": len(info),
            "short_last": [v for v in short if v is not None],  # their last clock (or step)
        }


def _median(vals: list[Any]) -> float | None:
    present = [v for v in vals if v is not None]
    return statistics.median(present) if present else None


def cell(row: dict[str, Any]) -> str:
    """The `evaluated at` column: the evaluation read, and the runs short of the budget with their last time."""
    a = row["at"]
    if a["eval_step"] is None:
        return "no evaluation"
    where = f"step {a['eval_step']:g}, {a['eval_wall_s']:.1f} s" if a["eval_wall_s"] is not None else f"step {a['eval_step']:g}"
    if a["reached"] == a["runs"]:
        return f"{where} (all {a['runs']} reached)"
    unit = " s" if a["seconds"] is not None else ""
    last = ", ".join(f"{v:.1f}{unit}" if a["seconds"] is not None else f"{v:g}" for v in sorted(a["short_last"]))
    rest = "none reached it; they ended at" if a["reached"] == 0 else "the rest ended at"
    return f"{where} ({a['reached']}/{a['runs']} reached; {rest} {last})"


def add_column(rows: list[dict[str, Any]], header: list[str], body: list[list[str]]) -> tuple[list[str], list[list[str]]]:
    """`text_rows`' table with the `evaluated at` column before `status`, when rows were read at a budget."""
    if not rows or "at" not in rows[0]:
        return header, body
    a = rows[0]["at"]
    title = f"evaluated at ≤ {a['seconds']:g} s" if a["seconds"] is not None else f"evaluated at ≤ step {a['step']}"
    i = len(header) - 1  # status is last
    return header[:i] + [title] + header[i:], [b[:i] + [cell(r)] + b[i:] for r, b in zip(rows, body, strict=True)]


def flat(row: dict[str, Any]) -> dict[str, Any]:
    """CSV columns of a row read at a budget (empty for other rows)."""
    a = row.get("at")
    if not a:
        return {}
    return {
        "at_seconds": a["seconds"],
        "at_step": a["step"],
        "eval_step": a["eval_step"],
        "eval_wall_s": a["eval_wall_s"],
        "reached_budget": a["reached"],
    }

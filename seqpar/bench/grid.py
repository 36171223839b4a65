"""The bench grid: which points to measure (cell x length x batch x method) and their specs.

Pure and checked up front: every point's spec is validated before anything is measured
or written, so a bad grid fails with the one-line error and exit 2.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seqpar.methods import METHODS
from seqpar.spec import Spec, SpecError, parse_override, read_yaml, set_dotted, validate_spec

SCHEMA = "seqpar-bench/1"

# Used when no SPEC is given: the quickstart's task and methods, on the default grid.
DEFAULT_SPEC: dict[str, Any] = {
    "name": "bench",
    "seed": 0,
    "task": {"type": "delayed_recall", "length": 256, "lag": 2, "vocab": 8, "train_sequences": 1, "val_sequences": 1, "test_sequences": 1},
    "model": {"cell": "gru", "hidden": 64},
    "train": {"steps": 1, "batch_size": 1},
    "methods": [
        {"type": "bptt", "optimizer": {"type": "adam", "lr": 1e-3}},
        {"type": "parallel", "optimizer": {"type": "adam", "lr": 1e-3}},
    ],
}


class BenchError(Exception):
    """Bad bench arguments; the message is one line (the CLI exits 2)."""


@dataclass(frozen=True)
class Grid:
    lengths: tuple[int, ...] = (256, 1024, 4096)
    batches: tuple[int, ...] = (1, 8, 64)
    hidden: int = 64
    cells: tuple[str, ...] | None = None  # None: the spec's cell
    unrolls: tuple[int, ...] = (1, 2, 4, 8, 16)  # candidates for methods with an `unroll` field
    sequences: int | None = None  # training-set size; None: equal to the batch (full-batch steps)
    warmup: int = 3  # untimed steps after compilation
    min_repeats: int = 10  # timed steps: at least this many ...
    max_repeats: int = 200  # ... and at most this many,
    min_time_s: float = 1.0  # ... running until this much time has been spent
    profile: bool = False  # also time the embedding-parallel step in stages (`seqpar.bench.profile`)
    peer: str | None = None  # also time the step a user would otherwise run (`seqpar.bench.peer`: torch)

    def __post_init__(self):
        for name, option in (("lengths", "--lengths"), ("batches", "--batch"), ("unrolls", "--unrolls")):
            vals = getattr(self, name)
            if not vals or any(v <= 0 for v in vals):
                raise BenchError(f"{option}: expected positive integers (got {list(vals)})")
        if self.sequences is not None and self.sequences < max(self.batches):
            raise BenchError(f"--sequences {self.sequences}: must be at least the largest batch ({max(self.batches)})")
        if self.hidden <= 0 or self.min_repeats < 1 or self.max_repeats < self.min_repeats or self.warmup < 1:
            raise BenchError("need --hidden > 0, warm-up >= 1 and 1 <= min repeats <= max repeats")


def check_overhead_args(steps: int, rounds: int) -> None:
    if steps < 0 or rounds < 1:
        raise BenchError(f"--overhead-steps {steps} --overhead-rounds {rounds}: need steps >= 0 (0 skips the check) and rounds >= 1")


def parse_ints(text: str, option: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise BenchError(f"{option} {text}: expected comma-separated integers, e.g. 256,1024,4096") from None
    if not vals or any(v <= 0 for v in vals):
        raise BenchError(f"{option} {text}: expected positive integers")
    return vals


def parse_floats(text: str, option: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise BenchError(f"{option} {text}: expected comma-separated numbers, e.g. 0.5,1,1.5") from None
    if not vals or any(not (v > 0 and v < float("inf")) for v in vals):
        raise BenchError(f"{option} {text}: expected positive finite numbers")
    return vals


def load_bench_spec(path: Path | None, overrides: list[str] | None = None) -> Spec:
    raw = read_yaml(Path(path)) if path is not None else copy.deepcopy(DEFAULT_SPEC)
    for item in overrides or []:
        key, value = parse_override(item)
        set_dotted(raw, key, value, source=f"--set {item}")
    spec = validate_spec(raw, source=str(path) if path else "default bench spec")
    if "length" not in type(spec.task).model_fields:
        raise SpecError(f"task {spec.task.type!r} has no `length` field; bench varies task.length")
    return spec


def with_baseline(spec: Spec) -> list[Any]:
    """The spec's methods, plus a plain `bptt` (first method's optimizer) if it has none."""
    methods = list(spec.methods)
    if not any(m.type == "bptt" for m in methods):
        label = None if all(m.display_label != "bptt" for m in methods) else "bptt-baseline"
        optimizer = methods[0].optimizer.model_dump(mode="json", exclude_unset=True) | {"type": methods[0].optimizer.type}
        methods.insert(0, METHODS.get("bptt").model_validate({"type": "bptt", "optimizer": optimizer, "label": label}))
    return methods


def spec_dict(spec: Spec) -> dict[str, Any]:
    # Only the keys the user set: re-validating defaults would trip "only meaningful with" checks.
    return spec.model_dump(mode="json", exclude_unset=True)


def point_spec(spec: Spec, cell: str, length: int, batch: int, hidden: int, sequences: int) -> Spec:
    raw = spec_dict(spec)
    raw["task"].update(length=length, train_sequences=sequences, val_sequences=1, test_sequences=1)
    raw.setdefault("model", {}).update(cell=cell, hidden=hidden)
    raw["train"].update(batch_size=batch)
    try:
        return validate_spec(raw, source=f"bench point (cell={cell}, length={length}, batch={batch})")
    except SpecError as e:
        raise BenchError(str(e)) from None


def check_points(spec: Spec, grid: Grid, force: bool = False) -> list[str]:
    """Validate every point's spec up front and check it against the machine's memory as `seqpar run`
    does (the baseline method included), so a bad grid fails before anything is written or allocated.

    Returns warnings (points over the limit with `force`); raises `BenchError` naming the point."""
    from seqpar.train.memory import MemoryLimitError, check

    notes = []
    for cell in grid.cells or (spec.model.model_dump()["cell"],):
        for length in grid.lengths:
            for batch in grid.batches:
                pspec = point_spec(spec, cell, length, batch, grid.hidden, grid.sequences or batch)
                where = f"bench point (cell={cell}, length={length}, batch={batch})"
                try:
                    note = check(pspec.model_copy(update={"methods": with_baseline(pspec)}), force)
                except MemoryLimitError as e:
                    raise BenchError(f"{where}: {e}") from None
                if "--force" in note:
                    notes.append(f"{where}: {note}")
    return notes


def parse_cells(text: str) -> tuple[str, ...]:
    from seqpar.model.cells import CELLS

    cells = tuple(c.strip() for c in text.split(",") if c.strip())
    unknown = [c for c in cells if c not in CELLS]
    if not cells or unknown:
        given = ", ".join(unknown) or "(none given)"
        raise BenchError(f"--cells {text}: unknown cell(s) {given}; expected some of: {', '.join(CELLS.names())}")
    return cells

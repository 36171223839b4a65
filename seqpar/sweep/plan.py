"""Sweep planning, pure and testable: a `sweep:` block expands into a grid of validated specs.

    sweep:
      task.length: [64, 256, 1024]
      seed: [0, 1, 2]
      methods.1.consistency_weight: [0.1, 1, 10]

Order of operations: read the YAML, apply `--set` (to the base spec or, as
`--set sweep.KEY=[...]`, to the sweep itself), take `sweep:` out, then expand the
grid (`itertools.product`, the last key varying fastest) and validate *every*
point before anything is written, so a bad sweep exits 2 with nothing on disk.
A `--set` of a key that is also swept pins it: that axis is dropped (the command
line is the most specific word), and the dry run says so.

Executing a plan (in this process, or elsewhere) is `seqpar.sweep.execute`'s job.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from seqpar.spec import Spec, SpecError, blame_overrides, parse_override, read_yaml, set_dotted, validate_spec, with_spec_dir
from seqpar.sweep import MAX_POINTS

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.([A-Za-z_][A-Za-z0-9_]*|[0-9]+))*$")


@dataclass(frozen=True)
class Point:
    """One grid point: its position, the swept values that define it, and its validated spec."""

    index: int
    values: dict[str, Any]
    spec: Spec

    @property
    def dirname(self) -> str:
        """`003_task.length=256_seed=1`: sortable, readable, directory-safe."""
        parts = [f"{k}={short_value(v)}" for k, v in self.values.items()]
        name = "_".join([f"{self.index:03d}", *parts])
        name = re.sub(r"[^A-Za-z0-9._=+-]", "-", name)
        return name[:120]

    @property
    def describe(self) -> str:
        return ", ".join(f"{k}={short_value(v)}" for k, v in self.values.items()) or "(base spec)"


@dataclass(frozen=True)
class Plan:
    """What `seqpar run` will do: one point for a plain spec, the whole grid for a sweep."""

    source: str
    raw: dict[str, Any]  # the spec after --set, `sweep:` included
    axes: dict[str, list[Any]]  # swept key -> values, in grid order (pinned keys removed)
    pinned: dict[str, Any] = field(default_factory=dict)  # swept keys fixed by --set
    points: list[Point] = field(default_factory=list)

    @property
    def is_sweep(self) -> bool:
        return "sweep" in self.raw

    @property
    def name(self) -> str:
        return self.points[0].spec.name

    def as_run(self) -> dict[str, Any]:
        """The spec that reproduces exactly these points: base after --set, `sweep:` as the flat axes."""
        return {**{k: v for k, v in self.raw.items() if k != "sweep"}, "sweep": self.axes}


def short_value(v: Any) -> str:
    if isinstance(v, float):
        return format(v, "g")
    if isinstance(v, (dict, list)):
        return yaml.safe_dump(v, default_flow_style=True, width=10_000).strip()
    return str(v)


# ----------------------------------------------------------------------------- loading and expansion


def load_plan(path: str | Path, overrides: list[str] | tuple[str, ...] = (), max_points: int | None = MAX_POINTS) -> Plan:
    """Read a spec (with or without `sweep:`), apply `--set`, expand and validate every point.

    A grid of more than `max_points` points is a `SpecError` before any point is built (None: no cap)."""
    path = Path(path)
    raw = with_spec_dir(read_yaml(path), path)
    pinned: dict[str, Any] = {}
    for item in overrides:
        key, value = parse_override(item)
        if key.startswith("sweep."):
            # Sweep keys are dotted themselves: `--set sweep.task.length=[8,16]` sets the axis `task.length`.
            sweep = raw.get("sweep")
            if sweep is None:
                raw["sweep"] = sweep = {}
            if not isinstance(sweep, dict):
                raise SpecError(f"{path}: sweep: must map dotted keys to lists of values (got {type(sweep).__name__})")
            sweep[key.removeprefix("sweep.")] = value
        else:
            set_dotted(raw, key, value, source=f"--set {item}")
            pinned[key] = value
    try:
        return expand(raw, source=str(path), pinned=pinned, max_points=max_points)
    except SpecError as e:
        raise blame_overrides(e, overrides) from None


def expand(raw: dict[str, Any], source: str = "spec", pinned: dict[str, Any] | None = None, max_points: int | None = MAX_POINTS) -> Plan:
    """Pure: the grid of `raw["sweep"]` over the rest of `raw`, every point validated (at most `max_points`)."""
    base = {k: v for k, v in raw.items() if k != "sweep"}
    axes = sweep_axes(raw.get("sweep"), source) if "sweep" in raw else {}
    pinned_axes = {k: v for k, v in (pinned or {}).items() if k in axes}
    axes = {k: v for k, v in axes.items() if k not in pinned_axes}
    count = math.prod(len(v) for v in axes.values())
    if max_points is not None and count > max_points:
        sizes = " x ".join(f"{len(v)} {k}" for k, v in axes.items())
        raise SpecError(
            f"{source}: sweep: {count} points ({sizes}) exceed the limit of {max_points}; "
            f"sweep fewer values, or pass --max-points {count} to run them all",
            key="sweep",
            source=source,
        )
    points = []
    for index, combo in enumerate(itertools.product(*axes.values())):
        values = dict(zip(axes, combo, strict=True))
        point_raw = copy.deepcopy(base)
        where = f"{source} (sweep point {index}: {', '.join(f'{k}={short_value(v)}' for k, v in values.items())})" if values else source
        for key, value in values.items():
            set_dotted(point_raw, key, copy.deepcopy(value), source=f"{source}: sweep: {key}")
        try:
            spec = validate_spec(point_raw, source=where)
        except SpecError as e:
            # Blame the sweep when the bad key is a swept one: "x.yaml: sweep: task.lag: must be ... (at point 3: ...)".
            msg = str(e).removeprefix(f"{where}: ")
            hit = next((k for k in values if msg.startswith((k + ":", k + "."))), None)
            if hit is not None:
                at = ", ".join(f"{k}={short_value(v)}" for k, v in values.items())
                raise SpecError(f"{source}: sweep: {msg} (at point {index}: {at})", key=f"sweep.{hit}", source=source) from None
            raise
        points.append(Point(index, values, spec))
    return Plan(source, raw, axes, pinned_axes, points)


def sweep_axes(sweep: Any, source: str) -> dict[str, list[Any]]:
    """Check the `sweep:` block and flatten nested mappings (`task: {length: [..]}` == `task.length: [..]`)."""
    if not isinstance(sweep, dict):
        raise SpecError(
            f"{source}: sweep: must be a mapping of dotted keys to lists of values (got {type(sweep).__name__})", key="sweep", source=source
        )
    axes: dict[str, list[Any]] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(v, key + ".")
                continue
            if not isinstance(k, (str, int)) or not _KEY.match(key):
                raise SpecError(f"{source}: sweep: {key!r} is not a dotted key (like task.length or methods.1.consistency_weight)")
            if key == "sweep" or key.startswith("sweep."):
                raise SpecError(f"{source}: sweep: {key}: a sweep cannot sweep itself")
            if key in ("name",):
                raise SpecError(f"{source}: sweep: {key}: every point shares the experiment name; sweep another key")
            if not isinstance(v, list) or not v:
                raise SpecError(f"{source}: sweep: {key}: expected a non-empty list of values (got {v!r})")
            if key in axes:
                raise SpecError(f"{source}: sweep: {key}: given twice")
            overlap = [a for a in axes if a.startswith(key + ".") or key.startswith(a + ".")]
            if overlap:
                raise SpecError(f"{source}: sweep: {key}: overlaps the swept key {overlap[0]}; sweep one or the other")
            axes[key] = v

    walk(sweep, "")
    return axes

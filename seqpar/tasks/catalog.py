"""What `seqpar tasks` shows: every registered task, its parameters, loss and baseline.

`task_rows()` is plain data (tests read it); `tasks_table()` renders it with Rich.
Each row builds the task at its defaults, so the baseline value shown is the one a
spec that sets nothing but `type:` would be judged against.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pydantic import ValidationError
from pydantic_core import PydanticUndefined
from rich.markup import escape
from rich.table import Table

from seqpar.tasks.base import Task, TaskConfig
from seqpar.tasks.registry import TASKS

# Shared by every task; listed once under the table instead of in every row.
COMMON_FIELDS = tuple(TaskConfig.model_fields)


class Param(NamedTuple):
    name: str
    default: Any
    description: str


class TaskRow(NamedTuple):
    name: str
    summary: str
    params: list[Param]
    loss: str
    baseline_formula: str
    baseline_at_defaults: float | None  # None: no formula, or the task needs an input file


def _params(cls: type[TaskConfig], names) -> list[Param]:
    return [Param(n, cls.model_fields[n].default, cls.model_fields[n].description or "") for n in names]


def task_rows() -> list[TaskRow]:
    rows = []
    for name, cls in TASKS.items():
        own = [n for n in cls.model_fields if n != "type" and n not in COMMON_FIELDS]
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        task = _with_defaults(cls)
        if task is not None:
            rows.append(TaskRow(name, summary, _params(cls, own), task.loss_name, task.baseline_formula, task.baseline_loss))
        else:  # a task that needs an input (a file, arrays) is described by its config class
            loss, baseline = getattr(cls, "loss_doc", "see its docs"), getattr(cls, "baseline_doc", "see its docs")
            rows.append(TaskRow(name, summary, _params(cls, own), loss, baseline, None))
    return rows


def common_params() -> list[Param]:
    return _params(TaskConfig, COMMON_FIELDS)


def _show(default: Any) -> str:
    return "required" if default is PydanticUndefined else "—" if default is None else str(default)


def _value(baseline: float | None) -> str:
    return "—" if baseline is None else f"{baseline:.4f}"


def tasks_table() -> Table:
    t = Table(title="Tasks (task.type in a spec)", show_lines=True)
    t.add_column("task", style="bold", max_width=26)
    t.add_column("parameters (defaults)", ratio=3)
    t.add_column("loss", no_wrap=True)
    t.add_column("memoryless baseline", ratio=2)
    t.add_column("at defaults", justify="right", no_wrap=True)
    for r in task_rows():
        params = "\n".join(f"{p.name} = {escape(_show(p.default))}  [dim]{escape(p.description)}[/]" for p in r.params)
        t.add_row(f"{r.name}\n[dim]{escape(r.summary)}[/]", params, r.loss, escape(r.baseline_formula), _value(r.baseline_at_defaults))
    common = ", ".join(f"{p.name} = {_show(p.default)}" for p in common_params())
    t.caption = f"every task also takes {common}"
    return t


def _with_defaults(cls: type) -> Task | None:
    """The task built from its defaults, or None when it needs an input no default gives (a data file)."""
    if any(f.default is PydanticUndefined and f.default_factory is None for f in cls.model_fields.values()):
        return None
    try:
        return cls().build()
    except ValidationError:
        return None

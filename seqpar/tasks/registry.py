"""The task registry (`task.type` in a spec), and `register_task` for a user's own task."""

from __future__ import annotations

from seqpar.config.registry import Registry
from seqpar.tasks.base import TaskConfig

TASKS: Registry[type] = Registry("task")


def register_task(name: str, config: type[TaskConfig]) -> type[TaskConfig]:
    """Make `task: {type: NAME}` valid in every spec: `config` is a `TaskConfig` subclass declaring
    `type: Literal[NAME] = NAME`, whose `build()` returns a `Task` (data, per-step loss, and the
    memoryless baseline's loss or None for "trained"; see docs/guide/extending.md). Call it from a
    plugin module so every process of a run registers it too."""
    return TASKS.register_class(name, config, TaskConfig)

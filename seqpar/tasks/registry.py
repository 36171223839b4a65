"""The task registry (`task.type` in a spec)."""

from seqpar.config.registry import Registry

TASKS: Registry[type] = Registry("task")

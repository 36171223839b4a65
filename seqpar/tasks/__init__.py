"""Tasks, one module each, registered by `type:`; importing this package registers them all."""

from seqpar.config.registry import discover
from seqpar.tasks.base import Dataset, Task, TaskConfig, masked_mean
from seqpar.tasks.registry import TASKS

discover(__name__)

__all__ = ["TASKS", "Dataset", "Task", "TaskConfig", "masked_mean"]

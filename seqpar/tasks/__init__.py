"""Tasks, one module each, registered by `type:`. Importing this package registers them all."""

from seqpar.tasks import adding, char_lm, copy_memory, delayed_recall, dynamics, parity  # noqa: F401  (registers)
from seqpar.tasks.base import Dataset, Task, TaskConfig, masked_mean
from seqpar.tasks.registry import TASKS

__all__ = ["TASKS", "Dataset", "Task", "TaskConfig", "masked_mean"]

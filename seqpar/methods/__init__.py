"""Training methods, registered by `type:`. Importing this package registers them all."""

from seqpar.methods import bptt, parallel, tbptt  # noqa: F401  (registers)
from seqpar.methods.base import METHODS, Batch, Method, MethodConfig

__all__ = ["METHODS", "Batch", "Method", "MethodConfig"]

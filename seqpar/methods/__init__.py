"""Training methods, one module each, registered by `type:`; importing this package registers them all."""

from seqpar.config.registry import discover
from seqpar.methods.base import METHODS, Batch, Method, MethodConfig

discover(__name__)

__all__ = ["METHODS", "Batch", "Method", "MethodConfig"]

"""Recurrent cells, one module each, registered by `type:`; importing this package registers them all."""

from seqpar.config.registry import discover
from seqpar.model.cells.base import CELLS, Cell, CellConfig

discover(__name__)

__all__ = ["CELLS", "Cell", "CellConfig"]

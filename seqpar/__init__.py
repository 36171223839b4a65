"""seqpar: can a recurrent net be trained in parallel over time, and what does it cost?

The Python API (`seqpar.api`): `seqpar.run(spec, out=..., overrides=..., data=...)`,
`seqpar.compare(paths, by=...)`, `seqpar.load(run_dir)`; and user code, registered under a
`type:` name every spec can use: `seqpar.register_cell(name, init=..., step=...)` (or
`config=` a cell class), `seqpar.register_task(name, config)`, `seqpar.register_method(name,
config)` (docs/guide/extending.md). They are imported on first use, so `import seqpar` stays
cheap (no JAX until a cell, a method or a run needs it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["compare", "load", "register_cell", "register_method", "register_task", "run"]

if TYPE_CHECKING:
    from seqpar.api import compare, load, run
    from seqpar.methods.base import register_method
    from seqpar.model.cells.function import register_cell
    from seqpar.tasks.registry import register_task

_HOME = {
    "compare": "seqpar.api",
    "load": "seqpar.api",
    "run": "seqpar.api",
    "register_cell": "seqpar.model.cells.function",
    "register_task": "seqpar.tasks.registry",
    "register_method": "seqpar.methods.base",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        import importlib

        # Importing the module imports its package first, which registers every built-in of its kind.
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'seqpar' has no attribute {name!r}")

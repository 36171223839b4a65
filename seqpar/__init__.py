"""seqpar: can a recurrent net be trained in parallel over time, and what does it cost?

The Python API (`seqpar.api`): `seqpar.run(spec, out=..., overrides=...)`, `seqpar.compare(paths, by=...)`,
`seqpar.load(run_dir)`. They are imported on first use, so `import seqpar` stays cheap (no JAX).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["compare", "load", "run"]

if TYPE_CHECKING:
    from seqpar.api import compare, load, run


def __getattr__(name: str) -> Any:
    if name in __all__:
        from seqpar import api

        return getattr(api, name)
    raise AttributeError(f"module 'seqpar' has no attribute {name!r}")

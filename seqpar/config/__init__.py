"""Generic spec machinery: `type:` registries, the frozen config base, and keyed errors.

Nothing here knows a task, method or cell; the experiment schema that composes them is
`seqpar.spec`.
"""

from seqpar.config.base import Config, KeyedError
from seqpar.config.registry import Registry, tagged_union

__all__ = ["Config", "KeyedError", "Registry", "tagged_union"]

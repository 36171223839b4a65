"""Tiny name -> class registries: every `type:` key in a spec is looked up here.

Tasks, methods, optimizers and cells each have one registry. A spec's union of
config classes is built from the registry (see `seqpar.spec`), so registering a
new config class is all it takes to make a new `type:` valid in YAML.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable
from typing import Annotated, Any, Generic, TypeVar, Union

from pydantic import Field

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a `type:` name to a registered object, with helpful errors."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, self.names(), n=1) if isinstance(name, str) else []
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise KeyError(f"unknown {self.kind} {name!r}{hint}; expected one of: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items


def tagged_union(registry: Registry) -> Any:
    """`Annotated[Union[...], Field(discriminator="type")]` over every registered config class.

    Call it after the registry is filled (i.e. after importing the modules that register).
    """
    members = tuple(cls for _, cls in registry.items())
    if len(members) == 1:
        return members[0]
    return Annotated[Union[members], Field(discriminator="type")]  # noqa: UP007 - a runtime union of classes


def discover(package: str) -> list[str]:
    """Import every module of `package` (not subpackages), so that each registers itself.

    A new method, task or cell is one file in its package: no import line to add anywhere.
    Returns the module names imported, sorted (import order never depends on the filesystem).
    """
    pkg = importlib.import_module(package)
    names = sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.ispkg and not m.name.startswith("_"))
    for name in names:
        importlib.import_module(f"{package}.{name}")
    return names

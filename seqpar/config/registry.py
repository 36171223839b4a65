"""Tiny name -> class registries: every `type:` key in a spec is looked up here.

Tasks, methods, optimizers, cells and consistency schedules each have one registry. A
config field that chooses among a registry's classes is annotated `tagged_union(REGISTRY)`:
the choice is read from the registry *when a spec is validated*, never frozen at import,
so a class registered at any time (by a plugin, by user code after `seqpar.spec` was
imported) is a valid `type:` from then on. Levanter and draccus resolve their choices by
name at parse time in the same way.

Built-ins register through the same `register` call a user's package uses (`seqpar.register_cell`,
`register_task`, `register_method` wrap it); nothing built in is special. Installed plugins
(entry-point group `seqpar.plugins`) are imported before a spec is validated, and before a
registry is asked for a name it does not hold or for all its names.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar, cast

from pydantic import BaseModel
from pydantic_core import PydanticCustomError, core_schema

from seqpar.config.plugins import load_entry_points

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a `type:` name to a registered object, with helpful errors."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if not isinstance(name, str) or not name:
                raise ValueError(f"{self.kind} names are non-empty strings (got {name!r})")
            if name in self._items:
                first = getattr(self._items[name], "__module__", "?")
                again = getattr(obj, "__module__", "?")
                raise ValueError(f"{self.kind} {name!r} is registered twice (by {first} and by {again}); give one of them another name")
            self._items[name] = obj
            return obj

        return deco

    def register_class(self, name: str, cls: Any, base: type) -> Any:
        """Register a config class a user wrote (`seqpar.register_task`, ...), checked first: a
        subclass of `base` whose `type:` literal is `name` (the key a spec chooses it by)."""
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise ValueError(f"{self.kind} {name!r}: expected a subclass of {base.__module__}.{base.__name__}, got {cls!r}")
        field = cls.model_fields.get("type") if issubclass(cls, BaseModel) else None
        if field is None or field.default != name:
            got = None if field is None else field.default
            raise ValueError(
                f"{self.kind} {name!r}: {cls.__name__} must declare `type: Literal[{name!r}] = {name!r}` "
                f"(the key a spec chooses it by; got {got!r})"
            )
        return self.register(name)(cast(T, cls))

    def remove(self, name: str) -> None:
        """Forget `name` (tests that register a class for a while)."""
        self._items.pop(name, None)

    def get(self, name: str) -> T:
        if isinstance(name, str) and name in self._items:  # a known name never waits for plugins
            return self._items[name]
        load_entry_points()
        try:
            return self._items[name]
        except (KeyError, TypeError):
            close = difflib.get_close_matches(name, self.names(), n=1) if isinstance(name, str) else []
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise KeyError(f"unknown {self.kind} {name!r}{hint}; expected one of: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        load_entry_points()
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        load_entry_points()
        return sorted(self._items.items())

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        if name not in self._items:
            load_entry_points()
        return name in self._items


@dataclass(frozen=True)
class Choice:
    """Pydantic metadata: the annotated value is a config of whichever class `registry` holds
    under its `type:`, looked up when the value is validated (see the module doc)."""

    registry: Registry

    def members(self) -> list[type[BaseModel]]:
        return [cls for _, cls in self.registry.items()]

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        # Serialised as whatever it is (a registered config serialises itself, options included).
        return core_schema.with_info_plain_validator_function(self._validate)

    def _validate(self, value: Any, info: core_schema.ValidationInfo) -> Any:
        reg = self.registry
        if isinstance(value, BaseModel):
            tag = getattr(value, "type", None)
            if isinstance(tag, str) and tag in reg and isinstance(value, reg.get(tag)):
                return value
            value = value.model_dump()
        if not isinstance(value, dict):
            raise PydanticCustomError("model_attributes_type", "Input should be a valid dictionary or object to extract fields from")
        tag = value.get("type")
        if tag is None:
            raise PydanticCustomError(
                "union_tag_not_found", "Unable to extract tag using discriminator 'type'", {"discriminator": "'type'"}
            )
        if not isinstance(tag, str) or tag not in reg:
            raise PydanticCustomError(
                "union_tag_invalid",
                "Input tag {tag} found using 'type' does not match any of the expected tags: {expected_tags}",
                {"discriminator": "'type'", "tag": repr(tag), "expected_tags": ", ".join(map(repr, reg.names()))},
            )
        return reg.get(tag).model_validate(value, context=info.context)


def tagged_union(registry: Registry) -> Any:
    """The annotation of a field that chooses a registered config class by its `type:` key
    (read from `registry` at validation time; see the module doc)."""
    return Annotated[BaseModel, Choice(registry)]


def field_annotation(field: Any) -> Any:
    """A pydantic field's annotation with its `Choice` kept (pydantic moves a top-level
    `Annotated` field's metadata into `FieldInfo.metadata`): what annotation walkers should read."""
    choice = next((m for m in getattr(field, "metadata", ()) if isinstance(m, Choice)), None)
    return Annotated[field.annotation, choice] if choice is not None else field.annotation


def choice_of(annotation: Any) -> Choice | None:
    """The `Choice` an annotation made by `tagged_union` carries, else None."""
    for meta in getattr(annotation, "__metadata__", ()):
        if isinstance(meta, Choice):
            return meta
    return None


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

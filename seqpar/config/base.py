"""Base class for every typed config block read from a spec.

Configs are frozen pydantic models that forbid unknown keys; a registered config
class carries `type: Literal[name]` and a `build()` returning the runtime object.

Numbers are checked here, once, for every config (a new method's or task's fields
included, with nothing to remember): pydantic's lax mode would read `true` as 1 and
`1` as true, and YAML writes `.inf` as easily as `1.0`. So a boolean is refused where
a number is expected and a number where a boolean is; no float may be infinite or NaN;
no integer may exceed the int64 range that JAX and NumPy can hold. Numbers written as
strings (`lr: "3e-3"`, and a bare `3e-3`, which YAML 1.1 reads as a string) are
accepted and converted: the value is the one written.
"""

from __future__ import annotations

import functools
import types
import typing
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_serializer, model_validator

INT_MAX = 2**63 - 1  # the largest integer JAX and NumPy hold (int64); seeds and sizes above it cannot be used


class KeyedError(ValueError):
    """A cross-field validation error that names the key to blame, relative to its config block.

    Raise it from a `model_validator`; the spec loader prefixes the block's dotted path.
    """

    def __init__(self, key: str, msg: str):
        super().__init__(f"{key}: {msg}")
        self.key = key
        self.msg = msg


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)
    #: Fields added after records existed, left out of a dump while at their default: a record
    #: written before them reads (and hashes, and resumes) the same, and a spec that does not
    #: use them is recorded as it was written.
    omit_defaults: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_unused_defaults(self, handler: Any) -> Any:
        out = handler(self)
        if self.omit_defaults and isinstance(out, dict):
            fields = type(self).model_fields
            for name in self.omit_defaults:
                if name in out and getattr(self, name) == fields[name].get_default(call_default_factory=True):
                    out.pop(name)
        return out

    @model_validator(mode="before")
    @classmethod
    def _no_bool_number_swaps(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, kinds, item in _numeric_fields(cls):
                if name in data:
                    _check_kind(name, data[name], kinds, item)
        return data

    @model_validator(mode="after")
    def _ints_fit_int64(self):
        for name, kinds, item in _numeric_fields(type(self)):
            if int in kinds or (item and int in item):
                _check_int_range(name, getattr(self, name))
        return self


@functools.cache
def _numeric_fields(cls: type[BaseModel]) -> tuple[tuple[str, frozenset[type], frozenset[type] | None], ...]:
    """(name, scalar kinds, scalar kinds of its items) of every field that admits a bool or a number;
    computed once per class (validation runs for every spec and sweep point)."""
    out = []
    for name, f in cls.model_fields.items():
        kinds = frozenset(_scalar_kinds(f.annotation))
        item_ann = _item_annotation(f.annotation)
        item = frozenset(_scalar_kinds(item_ann)) if item_ann is not None else None
        if kinds or item:
            out.append((name, kinds, item))
    return tuple(out)


def _scalar_kinds(annotation: Any) -> set[type]:
    """The scalar types (bool, int, float) an annotation admits at its top level."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _scalar_kinds(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_scalar_kinds(a) for a in typing.get_args(annotation)))
    if origin is typing.Literal:
        return {type(a) for a in typing.get_args(annotation) if isinstance(a, (bool, int, float))}
    return {annotation} & {bool, int, float}


def _item_annotation(annotation: Any) -> Any | None:
    """For `list[X]` / `tuple[X, ...]` (possibly optional or annotated): X; else None."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _item_annotation(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        items = [i for i in map(_item_annotation, typing.get_args(annotation)) if i is not None]
        return items[0] if items else None
    if origin in (list, tuple, set, frozenset):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return args[0] if args else None
    return None


def _check_kind(key: str, value: Any, kinds: frozenset[type], item: frozenset[type] | None) -> None:
    numeric = bool(kinds & {int, float})
    if isinstance(value, bool) and numeric and bool not in kinds:
        raise KeyedError(key, f"expected a number, got the boolean {str(value).lower()}")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and bool in kinds and not numeric:
        raise KeyedError(key, f"expected true or false, got the number {value!r}")
    if item and isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_kind(f"{key}.{i}", v, item, None)


def _check_int_range(key: str, value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and not -INT_MAX - 1 <= value <= INT_MAX:
        raise KeyedError(key, f"{value} is too large: integers must fit in 64 bits (at most 2**63 - 1)")
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_int_range(f"{key}.{i}", v)

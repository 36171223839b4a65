"""Build a pydantic tagged union (on the `type:` key) from a registry."""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field

from seqpar.registry import Registry


def tagged_union(registry: Registry) -> Any:
    """`Annotated[Union[...], Field(discriminator="type")]` over every registered config class.

    Call it after the registry is filled (i.e. after importing the modules that register).
    """
    members = tuple(cls for _, cls in registry.items())
    if len(members) == 1:
        return members[0]
    return Annotated[Union[members], Field(discriminator="type")]  # noqa: UP007 - a runtime union of classes

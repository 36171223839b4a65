"""Base class for every typed config block read from a spec.

Configs are frozen pydantic models that forbid unknown keys; a registered config
class carries `type: Literal[name]` and a `build()` returning the runtime object.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class KeyedError(ValueError):
    """A cross-field validation error that names the key to blame, relative to its config block.

    Raise it from a `model_validator`; the spec loader prefixes the block's dotted path.
    """

    def __init__(self, key: str, msg: str):
        super().__init__(f"{key}: {msg}")
        self.key = key
        self.msg = msg

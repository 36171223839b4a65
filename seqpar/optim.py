"""Optimizers, chosen by `optimizer.type`; each config builds an `optax` chain."""

from __future__ import annotations

import math
from typing import Annotated, Literal

import optax
from pydantic import Field, field_validator

from seqpar.config import Config
from seqpar.config.registry import Registry

OPTIMIZERS: Registry[type] = Registry("optimizer")


class OptimizerConfig(Config):
    lr: float = Field(description="learning rate (> 0, finite)")
    clip_norm: Annotated[float, Field(gt=0)] | None = Field(None, description="clip the global gradient norm to this")

    @field_validator("lr")
    @classmethod
    def _lr_positive_finite(cls, v: float) -> float:
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"must be a positive finite number (got {v})")
        return v

    def build(self) -> optax.GradientTransformation:
        base = self._base()
        return optax.chain(optax.clip_by_global_norm(self.clip_norm), base) if self.clip_norm else base

    def _base(self) -> optax.GradientTransformation:  # pragma: no cover - interface
        raise NotImplementedError


@OPTIMIZERS.register("adam")
class AdamConfig(OptimizerConfig):
    type: Literal["adam"] = "adam"
    b1: float = Field(0.9, ge=0, lt=1)
    b2: float = Field(0.999, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)

    def _base(self):
        return optax.adam(self.lr, b1=self.b1, b2=self.b2, eps=self.eps)


@OPTIMIZERS.register("adamw")
class AdamWConfig(AdamConfig):
    type: Literal["adamw"] = "adamw"  # type: ignore[assignment]
    weight_decay: float = Field(1e-4, ge=0)

    def _base(self):
        return optax.adamw(self.lr, b1=self.b1, b2=self.b2, eps=self.eps, weight_decay=self.weight_decay)


@OPTIMIZERS.register("sgd")
class SGDConfig(OptimizerConfig):
    type: Literal["sgd"] = "sgd"
    momentum: float = Field(0.0, ge=0, lt=1)
    nesterov: bool = False

    def _base(self):
        return optax.sgd(self.lr, momentum=self.momentum or None, nesterov=self.nesterov)

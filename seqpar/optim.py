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
    """Adam (Kingma & Ba 2015), `optax.adam`."""

    type: Literal["adam"] = "adam"
    b1: float = Field(0.9, ge=0, lt=1, description="decay rate of the first-moment (mean) estimate")
    b2: float = Field(0.999, ge=0, lt=1, description="decay rate of the second-moment estimate")
    eps: float = Field(1e-8, gt=0, description="added to the root of the second moment, for stability")

    def _base(self):
        return optax.adam(self.lr, b1=self.b1, b2=self.b2, eps=self.eps)


@OPTIMIZERS.register("adamw")
class AdamWConfig(AdamConfig):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), `optax.adamw`."""

    type: Literal["adamw"] = "adamw"  # type: ignore[assignment]
    weight_decay: float = Field(1e-4, ge=0, description="decoupled weight decay, applied to every parameter")

    def _base(self):
        return optax.adamw(self.lr, b1=self.b1, b2=self.b2, eps=self.eps, weight_decay=self.weight_decay)


@OPTIMIZERS.register("sgd")
class SGDConfig(OptimizerConfig):
    """Stochastic gradient descent, optionally with (Nesterov) momentum, `optax.sgd`."""

    type: Literal["sgd"] = "sgd"
    momentum: float = Field(0.0, ge=0, lt=1, description="momentum (0: plain SGD)")
    nesterov: bool = Field(False, description="Nesterov momentum instead of heavy-ball")

    def _base(self):
        return optax.sgd(self.lr, momentum=self.momentum or None, nesterov=self.nesterov)

"""The `tune:` block: a typed config, checked against the spec's methods, and pure search-space sampling.

    tune:
      trials: 20                    # per method: every method gets the same number
      objective: final              # validation rollout loss at the end (final) or its minimum over evals (best)
      seeds: [0, 1, 2]              # each method's best is re-run with these and judged on the test split
      sampler: {type: tpe}          # tpe (default) or random; seed: default the spec's
      pruner: {type: median}        # none (default), median or hyperband, fed the eval-point validation losses
      space:                        # per method label; keys are dotted paths inside that method
        bptt:
          optimizer.lr: {log: [1.0e-4, 1.0e-1]}
        parallel:
          optimizer.lr: {log: [1.0e-4, 1.0e-1]}
          consistency_weight: {log: [0.01, 100]}
          refresh: {choice: [none, rollout, jacobi]}
          refresh_every: {int: [1, 50], when: {refresh: [rollout, jacobi]}}

Nothing here imports Optuna or JAX: sampling takes any object with Optuna's `suggest_*`
methods, and every check runs before anything is written. A space is checked by
validating whole trial specs at its corners (every range at its low and its high end,
every choice), so a key the method lacks, a value it refuses, or a conditional that
leaves a required key unset fails here with one line naming `tune.space.<label>.<key>`.
"""

from __future__ import annotations

import copy
import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from seqpar.config import Config
from seqpar.spec import (
    Spec,
    SpecError,
    blame_overrides,
    error_key,
    format_validation_error,
    ordered_errors,
    parse_override,
    read_yaml,
    set_dotted,
    validate_spec,
    with_spec_dir,
)
from seqpar.sweep.plan import short_value
from seqpar.tune import MAX_TRIALS

_KINDS = ("float", "log", "int", "choice")


class Param(Config):
    """One searched key: exactly one of `float`, `log`, `int` (a [low, high] range) or `choice` (a list)."""

    float_: list[float] | None = Field(default=None, alias="float", description="[low, high]: uniform")
    log: list[float] | None = Field(default=None, description="[low, high], low > 0: log-uniform")
    int_: list[int] | None = Field(default=None, alias="int", description="[low, high]: integers, both ends included")
    choice: list[Any] | None = Field(default=None, description="values to choose from (any YAML values)")
    step: float | None = Field(default=None, gt=0, description="grid step of a float or int range")
    when: dict[str, list[Any]] | None = Field(default=None, description="sample this key only when these choice keys take these values")

    @model_validator(mode="after")
    def _one_kind(self):
        given = [k for k, v in zip(_KINDS, (self.float_, self.log, self.int_, self.choice), strict=True) if v is not None]
        if len(given) != 1:
            raise ValueError(f"expected exactly one of {', '.join(_KINDS)} (got {', '.join(given) or 'none'})")
        kind = given[0]
        if kind == "choice":
            if not self.choice:
                raise ValueError("choice: expected a non-empty list of values")
            if self.step is not None:
                raise ValueError("step: only for float and int ranges")
            return self
        lo_hi = self.bounds
        if len(lo_hi) != 2:
            raise ValueError(f"{kind}: expected [low, high] (got {lo_hi})")
        lo, hi = lo_hi
        if not lo < hi:
            raise ValueError(f"{kind}: empty range [{lo}, {hi}]; expected low < high")
        if kind == "log" and lo <= 0:
            raise ValueError(f"log: range [{lo}, {hi}] must be above 0 (a log scale has no 0 or negative values)")
        if kind == "log" and self.step is not None:
            raise ValueError("step: not with a log range")
        return self

    @property
    def kind(self) -> str:
        return next(k for k, v in zip(_KINDS, (self.float_, self.log, self.int_, self.choice), strict=True) if v is not None)

    @property
    def bounds(self) -> list[Any]:
        return list(self.float_ or self.log or self.int_ or [])

    def corners(self) -> list[Any]:
        """The values a check must try: both ends of a range, every choice."""
        return list(self.choice) if self.choice is not None else self.bounds

    def suggest(self, trial: Suggester, name: str) -> Any:
        if self.choice is not None:
            labels = choice_labels(self.choice)
            picked = trial.suggest_categorical(name, labels)
            return copy.deepcopy(self.choice[labels.index(picked)])
        lo, hi = self.bounds
        if self.int_ is not None:
            return trial.suggest_int(name, int(lo), int(hi), step=int(self.step or 1))
        return trial.suggest_float(name, float(lo), float(hi), log=self.log is not None, step=self.step)


class Suggester(Protocol):
    """What sampling needs of an Optuna trial."""

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False) -> float: ...
    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...
    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


def choice_labels(choices: list[Any]) -> list[Any]:
    """Optuna stores None, bools, numbers and strings; any other choice (a mapping, a list) by its YAML text."""
    if all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
        return list(choices)
    return [short_value(c) for c in choices]


class SamplerConfig(Config):
    type: Literal["tpe", "random"] = Field(default="tpe", description="tpe (Optuna's default Bayesian sampler) or random")
    seed: int | None = Field(default=None, ge=0, description="sampler seed (default: the spec's seed)")
    startup_trials: int | None = Field(default=None, ge=0, description="tpe: random trials before the model (Optuna's default 10)")


class PrunerConfig(Config):
    type: Literal["none", "median", "hyperband"] = Field(default="none", description="stop unpromising trials at eval points")
    startup_trials: int = Field(default=2, ge=0, description="median: trials that are never pruned")
    warmup_steps: int | None = Field(
        default=None, ge=0, description="median: training steps before a trial may be pruned (default and least: half of train.steps)"
    )


class TuneConfig(Config):
    trials: int = Field(gt=0, description="trials per method (the same for every method)")
    objective: Literal["final", "best"] = Field(default="final", description="validation rollout loss: at the end, or the best eval")
    seeds: list[int] = Field(default=[0], min_length=1, description="seeds of the final re-runs of each method's best, judged on test")
    sampler: SamplerConfig = Field(default=SamplerConfig(), description="how trials are proposed")
    pruner: PrunerConfig = Field(default=PrunerConfig(), description="which trials stop early")
    space: dict[str, dict[str, Param]] = Field(min_length=1, description="per method label: dotted key -> range or choice")

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v) or any(s < 0 for s in v):
            raise ValueError(f"expected distinct seeds >= 0 (got {v})")
        return v


@dataclass(frozen=True)
class TunePlan:
    """A checked study: the base spec (no `tune:`), its tune block, and each method's place."""

    source: str
    raw: dict[str, Any]  # the spec as tuned, after --set, `tune:` included (written to tune.yaml)
    base: dict[str, Any]  # the spec without `tune:`
    spec: Spec  # the validated base spec
    tune: TuneConfig

    @property
    def labels(self) -> list[str]:
        return [m.display_label for m in self.spec.methods]

    def trial_raw(self, index: int, values: dict[str, Any], seed: int | None = None) -> dict[str, Any]:
        """The spec of one trial of method `index`: that method alone, with `values` set inside it."""
        raw = copy.deepcopy(self.base)
        method = copy.deepcopy(raw["methods"][index])
        for key, value in values.items():
            set_dotted(method, key, copy.deepcopy(value), source=f"{self.source}: tune.space.{self.labels[index]}")
        raw["methods"] = [method]
        if seed is not None:
            raw["seed"] = seed
        return raw

    def sample(self, index: int, trial: Suggester) -> dict[str, Any]:
        return sample(self.tune.space[self.labels[index]], trial)


def sample(params: dict[str, Param], trial: Suggester) -> dict[str, Any]:
    """Values for one trial: unconditional keys first, then each conditional one whose `when` holds."""
    values: dict[str, Any] = {}
    for key, p in sorted(params.items(), key=lambda kv: kv[1].when is not None):
        if p.when is None or all(values.get(k, _ABSENT) in allowed for k, allowed in p.when.items()):
            values[key] = p.suggest(trial, key)
    return values


_ABSENT = object()


# ----------------------------------------------------------------------------- loading and checking


def load_tune(path: str | Path, overrides: list[str] | tuple[str, ...] = (), max_trials: int | None = MAX_TRIALS) -> TunePlan:
    """Read a spec with a `tune:` block, apply `--set` (`tune.trials=8` works too), check everything.

    A study of more than `max_trials` trials (methods x `tune.trials`) is a `SpecError` (None: no cap)."""
    path = Path(path)
    raw = with_spec_dir(read_yaml(path), path)
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(raw, key, value, source=f"--set {item}")
    try:
        return check_tune(raw, str(path), max_trials)
    except SpecError as e:
        raise blame_overrides(e, overrides) from None


def check_tune(raw: dict[str, Any], source: str, max_trials: int | None = MAX_TRIALS) -> TunePlan:
    if "tune" not in raw:
        raise SpecError(f"{source}: tune: missing; `seqpar tune` needs a tune: block (trials, space, ...)", key="tune", source=source)
    if "sweep" in raw:
        raise SpecError(f"{source}: sweep: a study tunes one spec; remove sweep: (tune.seeds gives the final seeds)", key="sweep")
    block = raw["tune"]
    if not isinstance(block, dict):
        raise SpecError(f"{source}: tune: expected a mapping (trials, space, ...), got {type(block).__name__}", key="tune", source=source)
    try:
        tune = TuneConfig.model_validate(block)
    except ValidationError as e:
        msg = format_validation_error(e, block, TuneConfig)
        raise SpecError(f"{source}: tune.{msg}", key=f"tune.{error_key(ordered_errors(e)[0], block)}", source=source) from None
    base = {k: v for k, v in raw.items() if k != "tune"}
    spec = validate_spec(base, source=source)
    plan = TunePlan(source, raw, base, spec, tune)
    warm = tune.pruner.warmup_steps
    if tune.pruner.type == "median" and warm is not None and warm < pruner_warmup(plan):
        raise SpecError(
            f"{source}: tune.pruner.warmup_steps: must be at least half of train.steps ({pruner_warmup(plan)}, got {warm}): "
            "a method that learns late must not be pruned before it has had half its budget",
            key="tune.pruner.warmup_steps",
            source=source,
        )
    total = len(plan.labels) * tune.trials
    if max_trials is not None and total > max_trials:
        raise SpecError(
            f"{source}: tune.trials: {len(plan.labels)} method(s) x {tune.trials} trials = {total} trials exceed the limit of "
            f"{max_trials}; lower tune.trials, or pass --max-trials {total} to run them all",
            key="tune.trials",
            source=source,
        )
    _check_space(plan)
    return plan


def pruner_warmup(plan: TunePlan) -> int:
    """Steps before any trial may be pruned: half of train.steps, or the longer warm-up given.

    The rule: a trial is judged only in the second half of its budget. Losses on recall
    tasks sit near the baseline until the method finds the dependency and then drop (BPTT
    at lag 4 does so late), so an early median compares trials that have not started yet;
    a 200-of-600-step warm-up stopped 9 of BPTT's 12 trials in a lag-4 study. Whether the
    rule spared a method's good settings is checked, not assumed: its untuned default is
    run unpruned as a reference (`seqpar.tune.defaults`)."""
    half = math.ceil(plan.spec.train.steps / 2)
    warm = plan.tune.pruner.warmup_steps
    return max(half, warm) if warm is not None else half


def _check_space(plan: TunePlan) -> None:
    source, labels = plan.source, plan.labels
    for label, params in plan.tune.space.items():
        if label not in labels:
            close = difflib.get_close_matches(label, labels, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SpecError(
                f"{source}: tune.space.{label}: no method is labelled {label!r}{hint} (methods: {', '.join(labels)})",
                key=f"tune.space.{label}",
                source=source,
            )
        if not params:
            raise SpecError(f"{source}: tune.space.{label}: empty; give at least one key to search", key=f"tune.space.{label}")
        for key, p in params.items():
            for parent, allowed in (p.when or {}).items():
                where = f"tune.space.{label}.{key}.when.{parent}"
                if parent not in params or params[parent].choice is None:
                    raise SpecError(f"{source}: {where}: expected a choice key of this method's space", key=where, source=source)
                missing = [v for v in allowed if v not in params[parent].choice]
                if missing or not allowed:
                    raise SpecError(f"{source}: {where}: expected values among its choices (got {allowed})", key=where, source=source)
    untuned = [x for x in labels if x not in plan.tune.space]
    if untuned:
        raise SpecError(
            f"{source}: tune.space: no search space for method {untuned[0]!r}; every method is tuned at the same budget "
            "(give it a space, or remove it from methods)",
            key="tune.space",
            source=source,
        )
    for label, params in plan.tune.space.items():
        index = labels.index(label)
        for values in corners(params):
            try:
                validate_spec(plan.trial_raw(index, values), source="trial")
            except SpecError as e:
                raise SpecError(_blame(e, label, index, values, source), key=f"tune.space.{label}", source=source) from None


def corners(params: dict[str, Param]) -> list[dict[str, Any]]:
    """Trial values at the space's corners: all lows, all highs, and each choice with the rest low."""

    class Pick:
        def __init__(self, end: int, fixed: dict[str, Any]):
            self.end, self.fixed = end, fixed

        def suggest_float(self, name, low, high, *, step=None, log=False):
            return (low, high)[self.end]

        def suggest_int(self, name, low, high, *, step=1, log=False):
            return (low, high)[self.end]

        def suggest_categorical(self, name, choices):
            return self.fixed.get(name, choices[0] if self.end == 0 else choices[-1])

    out = [sample(params, Pick(0, {})), sample(params, Pick(1, {}))]
    for key, p in params.items():
        if p.choice is not None:
            for label in choice_labels(p.choice):
                out.append(sample(params, Pick(0, {key: label})))
    unique = []
    for v in out:
        if v not in unique:
            unique.append(v)
    return unique


def _blame(err: SpecError, label: str, index: int, values: dict[str, Any], source: str) -> str:
    """`trial: methods.0.consistency_weight: ...` -> `x.yaml: tune.space.parallel.consistency_weight: ...`."""
    msg = str(err).removeprefix("trial: ")
    inner = msg.removeprefix("methods.0.") if msg.startswith("methods.0.") else None
    at = ", ".join(f"{k}={short_value(v)}" for k, v in values.items())
    if inner is not None:
        key = inner.split(":", 1)[0]
        hit = next((k for k in values if key == k or key.startswith(k + ".")), None)
        if "unknown key" in inner and hit is not None:
            return f"{source}: tune.space.{label}.{inner.replace('unknown key', f'not a key of method {label!r}', 1)}"
        if hit is not None:
            return f"{source}: tune.space.{label}.{inner} (at {at})"
        return f"{source}: tune.space.{label}: the method becomes invalid: {inner} (at {at})"
    return f"{source}: tune.space.{label}: a trial spec is invalid: {msg} (at {at})"


def spec_yaml(raw: dict[str, Any]) -> str:
    return yaml.safe_dump(raw, sort_keys=False)

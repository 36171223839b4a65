"""A researcher's own cell as two plain JAX functions: no seqpar class to write.

    def init(key, input_size, hidden_size): return params      # any pytree of arrays
    def step(params, h, x): return h_new                        # h: (hidden_size,), x: (input_size,)

named in a spec as `model: {cell: {type: function, init: "MODULE:NAME", step: "MODULE:NAME",
structure: full|diagonal}, hidden: H}` (MODULE looked up beside the spec first, see
`seqpar.config.plugins`), or registered under a name of its own from Python or a plugin:
`seqpar.register_cell("softgru", init=init, step=step)`, after which `cell: softgru` works
everywhere a built-in name does. seqpar vmaps the step over sequences and scans it over time
like any cell, so every method trains it.

What seqpar cannot know about plain functions, it computes by autodiff (DEER's and ELK's
code take any cell function the same way): the Newton solvers' Jacobian is `jax.jacfwd` of
the step (one pass per state unit) on a `full` cell; on a cell declared `diagonal` (each
unit's new value reads only its own old value: per-unit recurrences like ParaGRU's) the
exact diagonal is one forward-mode pass, `jvp` with a vector of ones, so a diagonal user cell
is solved by elementwise scans like the built-in ones. `seqpar validate` checks the
declaration (`seqpar.model.cells.checks`): a cell declared diagonal whose Jacobian is not is
refused. Not available to a function pair (a cell class can do it, see the cell protocol in
the docs): an analytic Jacobian, a block structure, and hoisting the input projection out of
the Newton iterations (`Cell.project`; here the step reads the raw input every iteration).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import jax
import jax.numpy as jnp
from flax import nnx
from pydantic import Field, ValidationInfo, create_model, field_validator

from seqpar.config.plugins import PluginError, resolve
from seqpar.model.cells.base import CELLS, Cell, CellConfig

Structure = Literal["full", "diagonal"]
InitFn = Callable[[jax.Array, int, int], Any]
StepFn = Callable[[Any, jax.Array, jax.Array], jax.Array]

_SIGNATURES = {"init": ("key", "input_size", "hidden_size"), "step": ("params", "h", "x")}


def check_function(role: str, fn: Any, ref: str) -> None:
    """`fn` is callable with the arguments its role passes (init: 3, step: 3); a `PluginError` if not."""
    want = _SIGNATURES[role]
    if not callable(fn):
        raise PluginError(f"{role} {ref}: is a {type(fn).__name__}, not a function {role}({', '.join(want)})")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: called as it is
        return
    try:
        sig.bind(*want)
    except TypeError as e:
        raise PluginError(f"{role} {ref}: must take ({', '.join(want)}), got {getattr(fn, '__name__', role)}{sig} ({e})") from None


def _name(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


class AutodiffCell(Cell):
    """A cell whose Newton Jacobian comes from autodiff of its step, in the structure it declares
    (subclassed per structure below: the structure is a class-level declaration of `Cell`)."""

    autodiff_jacobian = True

    def step_and_jacobian(self, s, px):
        f = lambda h: self.step_projected(h, px)  # noqa: E731
        if self.jacobian_structure == "diagonal":
            # J is diagonal, so J·1 is its diagonal: one forward-mode pass, exact.
            return jax.jvp(f, (s,), (jnp.ones_like(s),))
        return f(s), jax.jacfwd(f)(s)

    def step_and_diagonal(self, s, px):
        if self.jacobian_structure == "diagonal":
            return self.step_and_jacobian(s, px)
        new, jac = self.step_and_jacobian(s, px)
        return new, jnp.diagonal(jac)


class FunctionCell(AutodiffCell):
    """A `Cell` around `init`/`step` functions: the params pytree held as `nnx.Param` leaves."""

    def __init__(self, init: InitFn, step: StepFn, input_dim: int, hidden: int, *, rngs: nnx.Rngs, label: str):
        self.hidden = self.state_dim = hidden
        self.label = label
        self.fn = step
        params = init(rngs.params(), input_dim, hidden)
        self.p = nnx.data(jax.tree.map(lambda a: nnx.Param(jnp.asarray(a)), params))

    def _params(self) -> Any:
        return jax.tree.map(lambda v: v[...], self.p, is_leaf=lambda v: isinstance(v, nnx.Variable))

    def step_projected(self, s, px):
        return self.fn(self._params(), s, px)


class FullFunctionCell(FunctionCell):
    jacobian_structure = "full"


class DiagonalFunctionCell(FunctionCell):
    jacobian_structure = "diagonal"


ModuleFactory = Callable[..., nnx.Module]  # (input_size, hidden_size, *, rngs) -> a module with __call__(h, x) -> h_new


class ModuleCell(AutodiffCell):
    """A researcher's own Flax NNX module as a cell, as it is: `module(h, x) -> h_new` for one
    example; its `nnx.Param`s are trained, its Jacobian taken by autodiff."""

    def __init__(self, make: ModuleFactory, input_dim: int, hidden: int, *, rngs: nnx.Rngs, label: str):
        self.hidden = self.state_dim = hidden
        self.label = label
        self.inner = make(input_dim, hidden, rngs=rngs)

    def step_projected(self, s, px):
        return self.inner(s, px)


class FullModuleCell(ModuleCell):
    jacobian_structure = "full"


class DiagonalModuleCell(ModuleCell):
    jacobian_structure = "diagonal"


def build_function_cell(
    init: InitFn, step: StepFn, structure: Structure, input_dim: int, hidden: int, *, rngs: nnx.Rngs, label: str
) -> FunctionCell:
    cls = DiagonalFunctionCell if structure == "diagonal" else FullFunctionCell
    return cls(init, step, input_dim, hidden, rngs=rngs, label=label)


_STRUCTURE_DOC = (
    "exact structure of d step / d h: full (any cell), or diagonal (unit j's new value reads only its own old value: "
    "checked by seqpar validate; Newton then runs elementwise scans)"
)


@CELLS.register("function")
class FunctionCellConfig(CellConfig):
    """A cell given as two plain JAX functions, init(key, input_size, hidden_size) -> params and
    step(params, h, x) -> h_new, each named MODULE:NAME (MODULE beside the spec first, then sys.path)."""

    type: Literal["function"] = "function"
    init: str = Field(description="MODULE:NAME of init(key, input_size, hidden_size) -> params (any pytree of arrays)")
    step: str = Field(description="MODULE:NAME of step(params, h, x) -> h_new, for one example (h: (hidden_size,), x: (input_size,))")
    structure: Structure = Field("full", description=_STRUCTURE_DOC)

    @field_validator("init", "step")
    @classmethod
    def _importable(cls, v: str, info: ValidationInfo) -> str:
        directory = (info.context or {}).get("base_dir")
        assert info.field_name is not None
        try:
            check_function(info.field_name, resolve(v, directory), repr(v))
        except PluginError as e:
            raise ValueError(str(e)) from None
        return v

    def is_default(self) -> bool:
        return False  # its functions are always recorded

    @property
    def label(self) -> str:
        return self.step

    def functions(self) -> tuple[InitFn, StepFn]:
        return resolve(self.init), resolve(self.step)

    def build(self, input_dim, hidden, *, rngs):
        init, step = self.functions()
        return build_function_cell(init, step, self.structure, input_dim, hidden, rngs=rngs, label=self.label)


class RegisteredFunctionCell(CellConfig):
    """Base of the config classes `register_cell` makes for a named function pair (or module)."""

    init_fn: ClassVar[InitFn]
    step_fn: ClassVar[StepFn]
    module_fn: ClassVar[ModuleFactory | None] = None
    structure: ClassVar[Structure]

    def build(self, input_dim, hidden, *, rngs):
        label = str(getattr(self, "type"))  # noqa: B009 - every registered subclass has its `type:`
        if self.module_fn is not None:
            cls = DiagonalModuleCell if self.structure == "diagonal" else FullModuleCell
            return cls(self.module_fn, input_dim, hidden, rngs=rngs, label=label)
        return build_function_cell(self.init_fn, self.step_fn, self.structure, input_dim, hidden, rngs=rngs, label=label)


def register_cell(
    name: str,
    *,
    init: InitFn | None = None,
    step: StepFn | None = None,
    structure: Structure = "full",
    config: type[CellConfig] | None = None,
    module: ModuleFactory | None = None,
) -> type[CellConfig]:
    """Make `model.cell: NAME` valid in every spec: a function pair (`init`, `step`, see the module
    doc); with `module`, a Flax NNX module as it is (`module(input_size, hidden_size, rngs=...)`
    builds it, `m(h, x)` steps it; its Jacobian by autodiff in `structure`); or, with `config`, a
    `CellConfig` class following the cell protocol (an analytic Jacobian, a block structure,
    options of its own). Returns the registered config class.

    Call it from a plugin module (a spec's `plugins:`, or an installed package's `seqpar.plugins`
    entry point), so that every process of a run (workers, a resume) registers it too."""
    given = [k for k, v in (("init/step", init or step), ("config", config), ("module", module)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"register_cell({name!r}): give one of init= and step=, config= or module= (got {' and '.join(given)})")
    if structure not in ("full", "diagonal"):
        raise ValueError(f"register_cell({name!r}): structure must be 'full' or 'diagonal' (got {structure!r})")
    if config is not None:
        return CELLS.register_class(name, config, CellConfig)
    if module is not None:
        if not callable(module):
            raise ValueError(f"register_cell({name!r}): module must build an nnx.Module: module(input_size, hidden_size, rngs=...)")
        doc = f"The cell registered as {name!r}: the Flax module {_name(module)} ({structure} Jacobian, by autodiff)."
        return _register_named(name, module, doc, module_fn=staticmethod(module), structure=structure)
    if init is None or step is None:
        raise ValueError(f"register_cell({name!r}): give init= and step= (plain functions), config= (a CellConfig class) or module=")
    try:
        check_function("init", init, _name(init))
        check_function("step", step, _name(step))
    except PluginError as e:
        raise ValueError(f"register_cell({name!r}): {e}") from None
    doc = f"The cell registered as {name!r}: init {_name(init)}, step {_name(step)} ({structure} Jacobian, by autodiff)."
    return _register_named(name, step, doc, init_fn=staticmethod(init), step_fn=staticmethod(step), structure=structure)


def _register_named(name: str, owner: Any, doc: str, **classvars: Any) -> type[CellConfig]:
    """A `RegisteredFunctionCell` subclass whose `type:` is `name` (its module the user's), registered."""
    cls = create_model(
        f"{name}_cell",
        __base__=RegisteredFunctionCell,
        __module__=getattr(owner, "__module__", __name__),
        __doc__=doc,
        type=(Literal[name], name),  # type: ignore[valid-type]
    )
    for key, value in classvars.items():
        setattr(cls, key, value)
    CELLS.register(name)(cls)
    return cls

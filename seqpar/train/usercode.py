"""Before a run writes anything: check every user cell the specs name, and say how it is solved.

A cell that is not built in (a `type: function` pair, or a class registered by a plugin) is
built and checked at a few random states (`seqpar.model.cells.checks`): its step's shape,
dtype and finiteness, whether JAX can trace it, and that its declared Jacobian structure
(and analytic Jacobian, if it writes one) is true. A lie is a `UserCodeError`, one line, so
`seqpar validate` and `seqpar run` exit 2 with nothing written. A cell whose Jacobian comes
from autodiff is said once (`notes`), and the run record carries it (`model.jacobian`).
"""

from __future__ import annotations

from seqpar.model.cells.base import CellConfig
from seqpar.model.cells.checks import CellCheckError, CellCost, CellReport, cell_cost, check_cell
from seqpar.model.cells.function import FunctionCellConfig, RegisteredFunctionCell
from seqpar.model.model import as_cell_config
from seqpar.spec import Spec


class UserCodeError(ValueError):
    """A user's cell that does not do what it declares; one line."""


def is_builtin(cfg: CellConfig) -> bool:
    """A cell shipped in seqpar (its analytic Jacobian is required and tested) rather than a user's."""
    return type(cfg).__module__.startswith("seqpar.") and not isinstance(cfg, (FunctionCellConfig, RegisteredFunctionCell))


def cell_label(cfg: CellConfig) -> str:
    """How messages name a cell: its registered name, or a function pair's step (`mycell:step`)."""
    if isinstance(cfg, FunctionCellConfig):
        return str(cfg.model_dump()["step"])
    return str(getattr(cfg, "type", type(cfg).__name__))


def cell_shapes(spec: Spec) -> list[tuple[int, int]]:
    """(input size, hidden size) of each distinct layer shape: layer 0 reads the task, the rest the stream."""
    input_dim = spec.task.build().input_dim
    shapes = [(input_dim, spec.model.hidden)]
    if spec.model.layers > 1 and input_dim != spec.model.hidden:
        shapes.append((spec.model.hidden, spec.model.hidden))
    return shapes


def check_user_code(specs: list[Spec]) -> list[str]:
    """Check each user cell of `specs` once per shape; the notes to show (one per cell whose
    Newton Jacobian is computed by autodiff). `UserCodeError` for a cell that fails a check."""
    seen: dict[tuple, CellReport] = {}
    notes: dict[str, str] = {}
    for spec in specs:
        cfg = as_cell_config(spec.model.cell)
        if is_builtin(cfg):
            continue
        for shape in cell_shapes(spec):
            key = (cfg, shape)
            if key in seen:
                continue
            try:
                seen[key] = report = check_cell(cfg, *shape, name=cell_label(cfg))
            except CellCheckError as e:
                raise UserCodeError(f"model.cell: {e}") from None
            if report.jacobian == "autodiff" and report.name not in notes:
                how = "one jvp per step (exact on a diagonal cell)" if report.structure == "diagonal" else "jax.jacfwd, S passes per step"
                notes[report.name] = (
                    f"cell {report.name}: no analytic Jacobian; DEER, quasi-DEER, ELK and the table's Newton refresh "
                    f"differentiate its step by autodiff ({how}; recorded as model.jacobian: autodiff)"
                )
    return list(notes.values())


def user_cell_costs(spec: Spec) -> tuple[str, CellCost] | None:
    """What the spec's user cell would cost a Newton solver at the spec's batch and length
    (`seqpar validate`'s extra lines); None for a built-in cell."""
    cfg = as_cell_config(spec.model.cell)
    if is_builtin(cfg):
        return None
    input_dim, hidden = cell_shapes(spec)[0]
    positions = spec.train.batch_size * spec.task.build().seq_len
    return cell_label(cfg), cell_cost(cfg, input_dim, hidden, positions)

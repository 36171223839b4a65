"""The architecture as tests: the import graph's layers, no cycles, and no JAX where none is needed.

ARCHITECTURE.md draws the same layers; a new package gets a layer here and there.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "seqpar"

# A unit (a subpackage or a top-level module of seqpar) may import only units of a lower layer.
LAYERS = {
    "config": 0,  # registries, the frozen config base, keyed errors
    "records": 0,  # the run-directory layout, its writer and reader
    "optim": 1,
    "tasks": 1,
    "sharding": 1,
    "track": 1,  # live trackers behind one interface: metrics.jsonl's fan-out, TensorBoard, MLflow
    "analysis": 2,  # compare, plots, TensorBoard export: reads records (and the trackers' tag names) only
    "model": 2,  # cells, the model, the rollout evaluator (which scores with a task's loss)
    "methods": 3,
    "spec": 4,  # the experiment schema: composes tasks, model and methods
    "train": 5,
    "sweep": 6,
    "bench": 6,
    "tune": 7,  # studies run their trials as sweep points
    "cli": 8,
    "api": 8,  # seqpar.run/compare/load for notebooks: the CLI's functions, in Python
    "testing": 8,  # the registry-parametrised cell checks, for the suite and for users' own tests
    "__main__": 9,
}
# Imported by `seqpar compare`, `seqpar plot` and the records: none may pull in JAX.
NO_JAX = [
    "seqpar",
    "seqpar.api",
    "seqpar.cli",
    "seqpar.analysis.compare",
    "seqpar.analysis.plots",
    "seqpar.analysis.tensorboard",
    "seqpar.analysis.report",
    "seqpar.analysis.findings",  # seqpar findings --check runs in CI: the pages are redrawn from records, never by JAX
    "seqpar.track",
    "seqpar.track.tensorboard",
    "seqpar.track.mlflow",
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path], *, top_level_only: bool) -> set[str]:
    """seqpar modules that `path` imports: every import, or only those that run when it is
    imported (not inside a function body, not under `if TYPE_CHECKING:`)."""

    def nodes(node: ast.AST):
        for child in ast.iter_child_nodes(node):
            if top_level_only and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if top_level_only and isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for stmt in child.orelse:
                    yield stmt
                    yield from nodes(stmt)
                continue
            yield child
            yield from nodes(child)

    found = set()
    for node in nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.update(t for t in (node.module, *(f"{node.module}.{a.name}" for a in node.names)) if t in modules)
    return found


def _unit(module: str) -> str:
    return module.split(".")[1] if module != "seqpar" else "seqpar"


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_every_unit_has_a_layer_and_imports_only_lower_layers():
    modules = _modules()
    bad = []
    for name, path in modules.items():
        if name == "seqpar":
            continue
        unit = _unit(name)
        assert unit in LAYERS, f"{unit}: a new package or module; give it a layer in LAYERS here and in ARCHITECTURE.md"
        for target in _imports(path, modules, top_level_only=False):
            t = _unit(target)
            if t != unit and t != "seqpar" and LAYERS[t] >= LAYERS[unit]:
                bad.append(f"{name} imports {target} (layer {LAYERS[unit]} -> {LAYERS[t]})")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


@pytest.mark.parametrize("top_level_only", [True, False], ids=["import-time", "including-lazy"])
def test_no_import_cycles_between_modules(top_level_only):
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        graph[name] |= {t for t in _imports(path, modules, top_level_only=top_level_only) if t != name and not name.startswith(t + ".")}
        if top_level_only and "." in name:
            graph[name].discard(name.rsplit(".", 1)[0])  # a package's own __init__ runs first: not an edge
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_record_readers_and_the_cli_import_no_jax():
    """`seqpar compare`, `plot` and `--help` only read JSON: they must start without JAX, Flax or optax."""
    code = (
        "import sys\n" + "".join(f"import {m}\n" for m in NO_JAX) + "print(sorted(m for m in ('jax', 'flax', 'optax') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout

"""User code in a spec: plugin modules, `MODULE:NAME` references, and installed plugin packages.

Three ways a researcher's code reaches seqpar, all without a fork:

- a spec's top-level `plugins: [MODULE, ...]`, imported before the spec is validated;
- a `MODULE:NAME` reference in a config (`model.cell: {type: function, init: "mycell:init", ...}`);
- an installed package that declares an entry point in the group `seqpar.plugins`
  (`[project.entry-points."seqpar.plugins"] mycells = "mycells"`), imported once per process
  the first time any registry is read, so the CLI, the API and every worker see it.

A module named in a spec is looked up in the spec file's directory first, then on `sys.path`
(as pytest puts a test's directory first): the directory is put at the front of `sys.path`,
so the module's own sibling imports work too. Importing a module is how it registers its
cells, tasks and methods (`seqpar.register_cell`, ...), so registration order never matters:
the `type:` choices are read from the registries when a spec is validated.

Every failure is a `PluginError` with one line naming the module (or entry point) and the
error it raised; the CLI turns it into exit 2 before anything is written.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import sys
import traceback
from pathlib import Path
from typing import Any

ENTRY_POINT_GROUP = "seqpar.plugins"
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class PluginError(ValueError):
    """User code that cannot be imported or used; the message is one line."""


def check_module_name(name: Any) -> str:
    if not isinstance(name, str) or not _MODULE.match(name):
        raise PluginError(f"{name!r} is not a module name (like mycells or mypkg.cells)")
    return name


def use_dir(directory: str | Path | None) -> None:
    """Put `directory` at the front of `sys.path` (once), so modules beside a spec import first."""
    if directory is None:
        return
    d = str(Path(directory).resolve())
    if sys.path[:1] != [d]:
        if d in sys.path:
            sys.path.remove(d)
        sys.path.insert(0, d)


def _where(e: BaseException) -> str:
    """`file:line` of the innermost frame of `e` in user code (the line that raised), or ''."""
    frames = traceback.extract_tb(e.__traceback__)
    for f in reversed(frames):
        if "importlib" not in f.filename:
            return f" ({Path(f.filename).name}:{f.lineno})"
    return ""


def import_module(name: str, directory: str | Path | None = None) -> Any:
    """Import `name`, from `directory` first (see the module doc); `PluginError` if it fails."""
    check_module_name(name)
    use_dir(directory)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and (name == e.name or name.startswith(e.name + ".")):
            where = f"{Path(directory).resolve()} or " if directory is not None else ""
            raise PluginError(f"module {name!r} not found (looked in {where}sys.path)") from None
        raise PluginError(f"module {name!r} failed to import: {type(e).__name__}: {e}{_where(e)}") from None
    except Exception as e:  # anything a user module raises while it is imported
        msg = str(e).splitlines()[0] if str(e) else ""
        raise PluginError(f"module {name!r} failed to import: {type(e).__name__}: {msg}{_where(e)}") from None


def resolve(ref: Any, directory: str | Path | None = None) -> Any:
    """The object a `MODULE:NAME` reference names (`NAME` may be dotted: `mod:Class.method`)."""
    if not isinstance(ref, str) or ref.count(":") != 1:
        raise PluginError(f"{ref!r}: expected MODULE:NAME (like mycell:step)")
    module_name, _, attr = ref.partition(":")
    if not attr or not all(part.isidentifier() for part in attr.split(".")):
        raise PluginError(f"{ref!r}: expected MODULE:NAME (like mycell:step); {attr!r} is not a name")
    obj = import_module(module_name, directory)
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = sorted(n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n, None)))
            hint = f"; it defines: {', '.join(names[:12])}" if names else ""
            raise PluginError(f"{ref!r}: module {module_name!r} has no {attr!r}{hint}")
        obj = getattr(obj, part)
    return obj


_entry_points_state = "unloaded"  # unloaded -> loading -> loaded (or the error, raised again each time)
_entry_points_error: PluginError | None = None


def load_entry_points() -> None:
    """Import every installed plugin (entry-point group `seqpar.plugins`), once per process.

    Called before a spec is validated and before any registry is read, so every command,
    the API and every worker process see installed plugins. A plugin that fails is a
    `PluginError` naming it (raised again on every later call: a broken install stays loud)."""
    global _entry_points_state, _entry_points_error
    if _entry_points_state == "loading":  # a plugin reading a registry while it is imported
        return
    if _entry_points_state == "loaded":
        if _entry_points_error is not None:
            raise _entry_points_error
        return
    _entry_points_state = "loading"
    try:
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = getattr(ep.dist, "name", None)
            owner = f"entry point {ep.name!r} of {dist}" if dist else f"entry point {ep.name!r}"
            try:
                ep.load()
            except PluginError as e:
                raise PluginError(f"plugin {owner} ({ENTRY_POINT_GROUP}): {e}") from None
            except Exception as e:
                msg = str(e).splitlines()[0] if str(e) else ""
                raise PluginError(
                    f"plugin {owner} ({ENTRY_POINT_GROUP}) failed to import {ep.value!r}: {type(e).__name__}: {msg}{_where(e)}"
                ) from None
    except PluginError as e:
        _entry_points_error = e
        raise
    finally:
        _entry_points_state = "loaded"

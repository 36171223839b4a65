"""The spec reference, generated from the config classes at docs build time (an mkdocs hook).

Every block a spec may hold is a frozen pydantic class, and every `type:` choice is a
registered class of one of them; this module walks them from the top-level `Spec` (and the
`tune:` block) through every nested config and every tagged union, so a new method, task,
cell, optimizer or field appears in the reference with no page to edit. A page holding the
marker below gets the tables in its place; `tests/test_docs.py` checks the walk and that no
field lacks a description.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from seqpar.config.registry import choice_of, field_annotation

MARKER = "<!-- seqpar:spec-reference -->"
log = logging.getLogger("mkdocs.hooks.spec_reference")


@dataclass
class Group:
    """A tagged union: the registered classes one key chooses between by `type:`."""

    name: str  # the registry's kind ("method", "cell", ...)
    members: list[type[BaseModel]]
    used_by: list[str] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return _slug(self.name)


@dataclass
class Block:
    """One config class documented as a table."""

    cls: type[BaseModel]
    title: str
    anchor: str
    group: Group | None = None
    used_by: list[str] = field(default_factory=list)


@dataclass
class Reference:
    blocks: list[Block]
    groups: list[Group]

    def missing_descriptions(self) -> list[str]:
        """`Class.field` for every field without a description (the `type:` discriminator is the class's own)."""
        out = []
        for b in self.blocks:
            for name, f in b.cls.model_fields.items():
                if not f.description and not (b.group and name == "type"):
                    out.append(f"{b.cls.__module__}.{b.cls.__qualname__}.{name}")
        return out


# ----------------------------------------------------------------------------- the walk


def roots() -> list[tuple[str, type[BaseModel]]]:
    """The top-level blocks: a spec, and the `tune:` block `seqpar tune` reads beside it."""
    from seqpar.spec import Spec
    from seqpar.tune.space import TuneConfig

    return [("spec", Spec), ("tune", TuneConfig)]


def registries() -> dict[frozenset[type], str]:
    """Every registry of the loaded seqpar modules, by the set of classes it holds -> its kind."""
    from seqpar.config.registry import Registry

    found: dict[frozenset[type], str] = {}
    for name, module in list(sys.modules.items()):
        if not name.startswith("seqpar") or module is None:
            continue
        for obj in vars(module).values():
            if isinstance(obj, Registry) and obj.names():
                found[frozenset(cls for _, cls in obj.items())] = obj.kind
    return found


def collect() -> Reference:
    """Walk every config class reachable from the roots, in the order a reader meets them."""
    for package in ("seqpar.spec", "seqpar.tune.space"):
        importlib.import_module(package)
    kinds = registries()
    blocks: dict[type, Block] = {}
    groups: dict[frozenset[type], Group] = {}
    for root, root_cls in roots():  # breadth first within each root: a reader meets the outer blocks first
        queue: list[tuple[str, type[BaseModel], Group | None]] = [(root, root_cls, None)]
        while queue:
            _visit(*queue.pop(0), blocks, groups, kinds, queue)
    return Reference(list(blocks.values()), list(groups.values()))


def _visit(path: str, cls: type[BaseModel], group: Group | None, blocks: dict, groups: dict, kinds: dict, queue: list) -> None:
    if cls in blocks:
        blocks[cls].used_by.append(path)
        return
    name = _type_name(cls)
    if group and name:
        title, anchor = f"{group.name}: `type: {name}`", f"{group.anchor}-{_slug(name)}"
    else:
        title, anchor = ("Top level" if path == "spec" else f"`{path}`"), _slug(path)
    blocks[cls] = Block(cls, title, anchor, group, [path])
    for key, f in cls.model_fields.items():
        sub = f"{path}.{f.alias or key}" if path != "spec" else (f.alias or key)
        for inner, suffix in _configs_in(field_annotation(f)):
            where = sub + suffix
            if isinstance(inner, frozenset):
                g = groups.get(inner)
                if g is None:
                    members = sorted(inner, key=lambda c: _type_name(c) or c.__name__)
                    g = groups[inner] = Group(kinds.get(inner, key.replace("_", " ")), members)
                    queue.extend((where, m, g) for m in members)
                g.used_by.append(where)
            else:
                queue.append((where, inner, None))


def _configs_in(annotation: Any, suffix: str = "") -> list[tuple[Any, str]]:
    """The config classes (or tagged unions, as frozensets) inside an annotation, each with its path
    suffix below the field: `[]` for a list item, `.*` for a mapping's value."""
    choice = choice_of(annotation)
    if choice is not None:  # a registry's `type:` choice: its members now
        return [(frozenset(choice.members()), suffix)]
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _configs_in(args[0], suffix)
    if origin in (typing.Union, types.UnionType):
        models = [a for a in args if _is_model(a)]
        rest = [a for a in args if not _is_model(a)]
        out = [(frozenset(models), suffix)] if len(models) > 1 else [(m, suffix) for m in models]
        return out + [x for a in rest for x in _configs_in(a, suffix)]
    if origin in (list, tuple, set, frozenset):
        return [x for a in args if a is not Ellipsis for x in _configs_in(a, suffix + "[]")]
    if origin is dict:
        return [x for a in args[1:] for x in _configs_in(a, suffix + ".*")]
    if _is_model(annotation):
        return [(annotation, suffix)]
    return []


def _is_model(a: Any) -> bool:
    return isinstance(a, type) and issubclass(a, BaseModel)


def _type_name(cls: type[BaseModel]) -> str | None:
    f = cls.model_fields.get("type")
    if f is None or typing.get_origin(f.annotation) is not typing.Literal:
        return None
    values = typing.get_args(f.annotation)
    return str(values[0]) if len(values) == 1 else None


# ----------------------------------------------------------------------------- rendering


def render(ref: Reference | None = None) -> str:
    ref = ref or collect()
    by_cls = {b.cls: b for b in ref.blocks}
    by_members = {frozenset(g.members): g for g in ref.groups}
    out: list[str] = []
    seen_groups: set[str] = set()
    for b in ref.blocks:
        if b.group and b.group.name not in seen_groups:
            seen_groups.add(b.group.name)
            g = b.group
            names = ", ".join(f"[`{_type_name(m)}`](#{by_cls[m].anchor})" for m in g.members)
            out += [f"## {g.name} {{#{g.anchor}}}", "", f"Chosen by `type:` at {_paths(g.used_by)}; one of {names}.", ""]
        if b.group:
            out += [f"### {b.title} {{#{b.anchor}}}", ""]
        else:
            out += [f"## {b.title} {{#{b.anchor}}}", ""]
            if len(b.used_by) > 1:
                out += [f"Used at {_paths(b.used_by)}.", ""]
        doc = _describe_class(b.cls, registered=b.group is not None)
        if doc:
            out += [doc, ""]
        rows = [(k, f) for k, f in b.cls.model_fields.items() if not (b.group and k == "type")]
        if not rows:
            out += ["No options.", ""]
            continue
        out += ["| key | type | default | bounds | description |", "|---|---|---|---|---|"]
        for key, f in rows:
            cells = [
                f"`{f.alias or key}`",
                _type(field_annotation(f), by_cls, by_members),
                _default(f),
                _bounds(f),
                _prose(f.description or ""),
            ]
            out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        out.append("")
    return "\n".join(out)


def _cell(text: str) -> str:
    """One table cell: on one line, a pipe escaped outside code spans (inside them the table
    extension leaves it alone, and an escape would show)."""
    parts = text.replace("\n", " ").split("`")
    return "`".join(p if i % 2 else p.replace("|", "\\|") for i, p in enumerate(parts))


def _paths(paths: list[str]) -> str:
    return ", ".join(f"`{p}`" for p in dict.fromkeys(paths))


def _describe_class(cls: type, registered: bool) -> str:
    """The class's own docstring, else for a registered class its module's first paragraph (a
    registered class has a module of its own, and every module opens with a docstring)."""
    doc = cls.__dict__.get("__doc__") or ""
    if not doc.strip() and registered:
        module = sys.modules.get(cls.__module__)
        doc = ((module.__doc__ if module else None) or "").strip().split("\n\n")[0]
    return " ".join(doc.split())


_SCALARS = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null", typing.Any: "any YAML value"}


def _type(a: Any, by_cls: dict[type, Block], by_members: dict[frozenset, Group]) -> str:
    choice = choice_of(a)
    if choice is not None:
        g = by_members.get(frozenset(choice.members()))
        return f"[{g.name}](#{g.anchor})" if g else "a registered config"
    origin = typing.get_origin(a)
    args = typing.get_args(a)
    if origin is typing.Annotated:
        return _type(args[0], by_cls, by_members)
    if origin is typing.Literal:
        return " or ".join(f"`{_inline(v)}`" for v in args)
    if origin in (typing.Union, types.UnionType):
        models = frozenset(x for x in args if _is_model(x))
        parts = []
        if len(models) > 1 and models in by_members:
            g = by_members[models]
            parts.append(f"[{g.name}](#{g.anchor})")
        parts += [_type(x, by_cls, by_members) for x in args if not (len(models) > 1 and x in models)]
        return " or ".join(parts)
    if origin in (list, tuple, set, frozenset):
        inner = [x for x in args if x is not Ellipsis]
        return "list of " + (_type(inner[0], by_cls, by_members) if inner else "values")
    if origin is dict:
        return f"mapping of {_type(args[0], by_cls, by_members)} to {_type(args[1], by_cls, by_members)}"
    if _is_model(a) and a in by_cls:
        b = by_cls[a]
        return f"[{_type_name(a) or b.used_by[0]}](#{b.anchor})"
    return _SCALARS.get(a, getattr(a, "__name__", str(a)))


def _default(f: FieldInfo) -> str:
    if f.is_required():
        return "required"
    value = f.default_factory() if f.default_factory is not None else f.default  # type: ignore[call-arg]
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", by_alias=True, exclude_none=True)
    return f"`{_inline(value)}`"


def _inline(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    return text.removesuffix("...").strip()


_OPS = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}


def _bounds(f: FieldInfo) -> str:
    out = []
    for m in list(f.metadata) + _annotated_metadata(f.annotation):
        for attr, op in _OPS.items():
            if getattr(m, attr, None) is not None:
                out.append(f"{op} {getattr(m, attr)}")
        if getattr(m, "min_length", None) is not None:
            out.append(f"length ≥ {m.min_length}")
        if getattr(m, "max_length", None) is not None:
            out.append(f"length ≤ {m.max_length}")
        if getattr(m, "pattern", None):
            out.append(f"matches `{m.pattern}`")
    return ", ".join(dict.fromkeys(out))


def _annotated_metadata(a: Any) -> list[Any]:
    """Constraints written inside the annotation (`Annotated[float, Field(gt=0)] | None`)."""
    origin = typing.get_origin(a)
    args = typing.get_args(a)
    if origin is typing.Annotated:
        found = []
        for extra in args[1:]:
            found += list(extra.metadata) if isinstance(extra, FieldInfo) else [extra]
        return found + _annotated_metadata(args[0])
    if origin in (typing.Union, types.UnionType):
        return [m for x in args for m in _annotated_metadata(x)]
    return []


def _prose(text: str) -> str:
    """A description as table text: braces as entities (Markdown's attr_list would read `{a, b}` as
    attributes and drop it), pipes escaped."""
    return text.replace("{", "&#123;").replace("}", "&#125;").replace("|", "\\|")


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


# ----------------------------------------------------------------------------- the mkdocs hook


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **_: Any) -> str:
    if MARKER not in markdown:
        return markdown
    ref = collect()
    for missing in ref.missing_descriptions():
        log.warning("config field without a description: %s", missing)
    return markdown.replace(MARKER, render(ref))

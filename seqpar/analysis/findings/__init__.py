"""`seqpar findings`: every findings table, figure and number, generated from the committed store.

A page holds generated text between markers,

    <!-- findings:shooting.summary -->
    ...generated Markdown...
    <!-- /findings:shooting.summary -->

and `seqpar findings` rewrites what is between them from the store (`store.py`), so the
README and the pages read on GitHub show the numbers; `seqpar findings --check` regenerates
everything in memory and exits non-zero when a block, or the data behind a figure, differs
from what is committed: a hand edit of a generated number fails CI. Prose outside the markers
carries no measured number.

Every study registers its blocks and figures in `BLOCKS` and `FIGURES` (one module per study:
`shooting.py`, ...). A figure is a PNG beside a JSON file of the data it draws; the check
compares the data, not the pixels (matplotlib versions draw the same data differently). A page
shows a figure through the marker `figure.NAME`, which becomes its image link.

A study the store does not hold (`NotInStore`) is not an error: the first of its blocks on a page
says that it was not measured, its other blocks there stay empty, its figure is neither drawn nor
linked, and no number of it appears anywhere. A fork with an empty store builds honest pages.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seqpar.analysis.findings.store import ROOT, STORE, FindingsError, NotInStore

MARKER = re.compile(r"<!-- findings:([A-Za-z0-9_.-]+) -->\n(.*?)<!-- /findings:\1 -->", re.S)

Block = Callable[[Path], str]  # store -> Markdown
Figure = Callable[[Path], tuple[dict[str, Any], Callable[[dict[str, Any], Path], None]]]  # store -> (data, draw(data, png))

BLOCKS: dict[str, Block] = {}
FIGURES: dict[str, Figure] = {}
FIGURE_ALT: dict[str, str] = {}  # figure name -> its image's alt text


def block(name: str) -> Callable[[Block], Block]:
    def deco(fn: Block) -> Block:
        if name in BLOCKS:
            raise ValueError(f"findings block {name!r} is defined twice")
        BLOCKS[name] = fn
        return fn

    return deco


def figure(name: str, alt: str) -> Callable[[Figure], Figure]:
    """Register a figure; a page shows it with the marker `figure.NAME` (`alt`: what it draws)."""

    def deco(fn: Figure) -> Figure:
        if name in FIGURES:
            raise ValueError(f"findings figure {name!r} is defined twice")
        FIGURES[name] = fn
        FIGURE_ALT[name] = alt
        return fn

    return deco


def pages(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


@dataclass
class Report:
    written: list[str] = field(default_factory=list)  # files rewritten (or, checking, that would be)
    problems: list[str] = field(default_factory=list)  # one line each


def _load_studies() -> None:
    from seqpar.config.registry import discover

    discover(__name__)


def not_measured(study: str, what: str = "") -> str:
    held = f"{what} of the study `{study}`" if what else f"record of the study `{study}`"
    return (
        f"*Not measured: the findings store holds no {held}. The command that produces it is in its spec's header "
        f'(a command-line study: this page\'s setup); `seqpar findings add {study} RUN_DIR --command "..."` stores the '
        "record and `seqpar findings` fills this page.*\n"
    )


def _figure_block(name: str, page: Path, root: Path, store: Path) -> str:
    """`figure.NAME`: the figure's image link, relative to the page (raises `NotInStore` like its data)."""
    FIGURES[name](store)
    rel = os.path.relpath(root / "docs" / "img" / f"{name}.png", page.parent).replace(os.sep, "/")
    return f"![{FIGURE_ALT[name]}]({rel})\n"


def generate(check: bool = False, root: Path = ROOT, store: Path = STORE, only: str | None = None) -> Report:
    """Regenerate every marked block and every figure (or, `check`, compare them with what is there)."""
    _load_studies()
    report = Report()
    used: set[str] = set()
    for page in pages(root):
        text = page.read_text(encoding="utf-8")
        said: set[str] = set()  # studies this page has already said are not in the store

        def fill(m: re.Match[str], page: Path = page, said: set[str] = said) -> str:
            name = m.group(1)
            used.add(name)
            if only is not None and not name.removeprefix("figure.").startswith(only):
                return m.group(0)
            fig = name.removeprefix("figure.") if name.startswith("figure.") else None
            if fig is not None and fig not in FIGURES:
                report.problems.append(f"{page.relative_to(root)}: findings figure {fig!r} is not defined")
                return m.group(0)
            if fig is None and name not in BLOCKS:
                report.problems.append(
                    f"{page.relative_to(root)}: findings block {name!r} is not defined (known: {', '.join(sorted(BLOCKS))})"
                )
                return m.group(0)
            try:
                body = (_figure_block(fig, page, root, store) if fig is not None else BLOCKS[name](store)).rstrip("\n") + "\n"
            except NotInStore as e:
                key = f"{e.study}/{e.what}"
                body = "" if key in said else not_measured(e.study, e.what)
                said.add(key)
            except FindingsError as e:
                report.problems.append(f"{page.relative_to(root)}: {name}: {e}")
                return m.group(0)
            if body != m.group(2):
                where = f"{page.relative_to(root)}: {name}"
                (report.problems if check else report.written).append(
                    f"{where}: differs from its regeneration (run seqpar findings)" if check else where
                )
            return f"<!-- findings:{name} -->\n{body}<!-- /findings:{name} -->"

        new = MARKER.sub(fill, text)
        if new != text and not check:
            page.write_text(new, encoding="utf-8")
    for name, make in sorted(FIGURES.items()):
        if only is not None and not name.startswith(only):
            continue
        img = root / "docs" / "img"
        data_path, png = img / f"{name}.json", img / f"{name}.png"
        try:
            data, draw = make(store)
        except NotInStore:
            stale = [p for p in (data_path, png) if p.is_file()]
            if check and stale:
                report.problems.append(f"docs/img/{name}.png: drawn from a study the store does not hold (run seqpar findings)")
            elif stale:
                for p in stale:
                    p.unlink()
                report.written.append(f"docs/img/{name}.png (removed)")
            continue
        except FindingsError as e:
            report.problems.append(f"figure {name}: {e}")
            continue
        text = json.dumps(data, indent=1, sort_keys=True, allow_nan=False) + "\n"
        old = data_path.read_text() if data_path.is_file() else None
        if old != text or not png.is_file():
            if check:
                report.problems.append(f"docs/img/{name}.json: the figure's data differ from its regeneration (run seqpar findings)")
            else:
                img.mkdir(parents=True, exist_ok=True)
                data_path.write_text(text)
                draw(data, png)
                report.written.append(f"docs/img/{name}.png")
    if only is None:
        for name in sorted(set(BLOCKS) - used):
            report.problems.append(f"findings block {name!r} is defined but no page shows it")
        for name in sorted(set(FIGURES) - {u.removeprefix("figure.") for u in used if u.startswith("figure.")}):
            report.problems.append(f"findings figure {name!r} is drawn but no page shows it (marker figure.{name})")
    return report

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
compares the data, not the pixels (matplotlib versions draw the same data differently).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seqpar.analysis.findings.store import ROOT, STORE, FindingsError

MARKER = re.compile(r"<!-- findings:([A-Za-z0-9_.-]+) -->\n(.*?)<!-- /findings:\1 -->", re.S)
IMG = ROOT / "docs" / "img"

Block = Callable[[Path], str]  # store -> Markdown
Figure = Callable[[Path], tuple[dict[str, Any], Callable[[dict[str, Any], Path], None]]]  # store -> (data, draw(data, png))

BLOCKS: dict[str, Block] = {}
FIGURES: dict[str, Figure] = {}


def block(name: str) -> Callable[[Block], Block]:
    def deco(fn: Block) -> Block:
        if name in BLOCKS:
            raise ValueError(f"findings block {name!r} is defined twice")
        BLOCKS[name] = fn
        return fn

    return deco


def figure(name: str) -> Callable[[Figure], Figure]:
    def deco(fn: Figure) -> Figure:
        if name in FIGURES:
            raise ValueError(f"findings figure {name!r} is defined twice")
        FIGURES[name] = fn
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


def generate(check: bool = False, root: Path = ROOT, store: Path = STORE, only: str | None = None) -> Report:
    """Regenerate every marked block and every figure (or, `check`, compare them with what is there)."""
    _load_studies()
    report = Report()
    used: set[str] = set()
    for page in pages(root):
        text = page.read_text(encoding="utf-8")

        def fill(m: re.Match[str], page: Path = page) -> str:
            name = m.group(1)
            used.add(name)
            if only is not None and not name.startswith(only):
                return m.group(0)
            if name not in BLOCKS:
                report.problems.append(
                    f"{page.relative_to(root)}: findings block {name!r} is not defined (known: {', '.join(sorted(BLOCKS))})"
                )
                return m.group(0)
            try:
                body = BLOCKS[name](store).rstrip("\n") + "\n"
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
        try:
            data, draw = make(store)
        except FindingsError as e:
            report.problems.append(f"figure {name}: {e}")
            continue
        data_path, png = IMG / f"{name}.json", IMG / f"{name}.png"
        text = json.dumps(data, indent=1, sort_keys=True, allow_nan=False) + "\n"
        old = data_path.read_text() if data_path.is_file() else None
        if old != text or not png.is_file():
            if check:
                report.problems.append(f"docs/img/{name}.json: the figure's data differ from its regeneration (run seqpar findings)")
            else:
                IMG.mkdir(parents=True, exist_ok=True)
                data_path.write_text(text)
                draw(data, png)
                report.written.append(f"docs/img/{name}.png")
    if only is None:
        for name in sorted(set(BLOCKS) - used):
            report.problems.append(f"findings block {name!r} is defined but no page shows it")
    return report

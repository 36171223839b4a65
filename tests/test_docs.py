"""The docs cannot drift from the code: every YAML snippet in the README and docs/ is a valid
spec (or a marked fragment that is valid once merged into the spec it names), every findings
table names the command that produced it, the generated spec reference covers every field
and registered name with a description, and the README stays a short front page whose two
first lines are the commands `.ci/run` relies on and whose links resolve."""

from __future__ import annotations

import copy
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field

from seqpar.config import Config
from seqpar.spec import SpecError, load_yaml, read_yaml, with_spec_dir
from seqpar.sweep.plan import expand
from seqpar.tune.space import check_tune

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FRAGMENT = re.compile(r"^# fragment of (\S+\.ya?ml)\s*$")
COMMAND = re.compile(r"(^|`|\s)seqpar (run|tune|bench|compare|plot|predictability|tolerance|findings)\b", re.M)
README_MAX_LINES = 200


def _load_hook():
    path = ROOT / "docs" / "hooks" / "spec_reference.py"
    spec = importlib.util.spec_from_file_location("seqpar_docs_spec_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


hook = _load_hook()


# ----------------------------------------------------------------------------- YAML snippets


def fenced_blocks(text: str) -> list[tuple[int, str, str]]:
    """(line number, info string, body) of every fenced code block."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^\s*```(\S*)", lines[i])
        if m:
            start, body = i + 1, []
            i += 1
            while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
                body.append(lines[i])
                i += 1
            blocks.append((start, m.group(1), "\n".join(body)))
        i += 1
    return blocks


def _merge(base: Any, part: Any) -> Any:
    """Mappings merged key by key; anything else in `part` replaces what `base` had."""
    if isinstance(base, dict) and isinstance(part, dict):
        out = dict(base)
        for k, v in part.items():
            out[k] = _merge(base[k], v) if k in base else v
        return out
    return copy.deepcopy(part)


def check_snippet(body: str, source: str) -> None:
    """Raise SpecError unless the snippet (merged into its base spec when a fragment) validates."""
    first = body.splitlines()[0] if body.strip() else ""
    raw = load_yaml(body, source)
    m = FRAGMENT.match(first)
    if m:
        base_path = ROOT / m.group(1)
        if not base_path.is_file():
            raise SpecError(f"{source}: fragment of {m.group(1)}: no such file")
        raw = with_spec_dir(_merge(read_yaml(base_path), raw), base_path)  # its modules and paths are that file's
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: a yaml block must be a spec (a mapping), or another fenced block")
    if "tune" in raw:
        check_tune(raw, source)
    else:
        expand(raw, source=source)


SNIPPETS = [
    pytest.param(body, f"{page.relative_to(ROOT)}:{line}", id=f"{page.relative_to(ROOT)}:{line}")
    for page in PAGES
    for line, info, body in fenced_blocks(page.read_text(encoding="utf-8"))
    if info.lower() in ("yaml", "yml")
]


def test_the_docs_hold_yaml_snippets():
    assert len(SNIPPETS) >= 3  # the spec, the sweep and the tune examples at least


@pytest.mark.parametrize(("body", "source"), SNIPPETS)
def test_yaml_snippet_is_a_valid_spec(body, source, monkeypatch):
    monkeypatch.chdir(ROOT)  # specs name files relative to the repository (seqpar/data/...)
    check_snippet(body, source)


@pytest.mark.parametrize(
    ("body", "hint"),
    [
        ("name: x\n", "task"),  # not a whole spec and not marked as a fragment
        ("# fragment of experiments/quickstart.yaml\ntrain: {stepz: 10}\n", "stepz"),
        ("# fragment of experiments/quickstart.yaml\nsweep:\n  task.lag: [0]\n", "task.lag"),
        ("# fragment of experiments/none.yaml\nseed: 1\n", "no such file"),
        ("- a list\n", "mapping"),
    ],
)
def test_a_bad_snippet_is_refused(body, hint, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SpecError, match=re.escape(hint)):
        check_snippet(body, "page.md:1")


def test_a_valid_fragment_passes(monkeypatch):
    monkeypatch.chdir(ROOT)
    check_snippet("# fragment of experiments/quickstart.yaml\ntrain: {steps: 10}\n", "page.md:1")


# ----------------------------------------------------------------------------- findings tables


def tables_without_command(text: str) -> list[int]:
    """Line numbers of tables whose section (the text since the heading above) names no seqpar command.
    A table generated from the findings store (inside a `findings:` block) carries its commands
    through the page: the page must name them (its provenance block does, from the store)."""
    missing, section, lines = [], "", text.splitlines()
    generated, inside = set(), None
    for i, line in enumerate(lines):
        m = re.match(r"^<!-- (/?)findings:", line)
        if m:
            inside = None if m.group(1) else i
        elif inside is not None:
            generated.add(i)
    page_names_a_command = bool(COMMAND.search(text))
    for i, line in enumerate(lines):
        if line.startswith("#"):
            section = ""
        elif line.startswith("|") and i + 1 < len(lines) and re.match(r"^\|[\s:|-]+\|$", lines[i + 1]):
            carried = COMMAND.search(section) or (i in generated and page_names_a_command)
            if not (i > 0 and lines[i - 1].startswith("|")) and not carried:
                missing.append(i + 1)
        section += line + "\n"
    return missing


FINDINGS = sorted((ROOT / "docs" / "findings").glob("*.md"))


@pytest.mark.parametrize("page", FINDINGS, ids=[p.name for p in FINDINGS])
def test_findings_tables_carry_their_command(page):
    assert tables_without_command(page.read_text(encoding="utf-8")) == []


def test_a_table_without_its_command_is_caught():
    page = "# Result\n\nSome text.\n\n| a | b |\n|---|---:|\n| 1 | 2 |\n\n## Next\n\n`seqpar run x.yaml`\n\n| c |\n|---|\n| 3 |\n"
    assert tables_without_command(page) == [5]


# ----------------------------------------------------------------------------- the spec reference


def test_every_config_field_has_a_description():
    assert hook.collect().missing_descriptions() == []


def test_a_field_without_description_is_caught():
    class Undocumented(Config):
        documented: int = Field(1, description="has one")
        bare: int = 2

    ref = hook.Reference([hook.Block(Undocumented, "x", "x")], [])
    assert ref.missing_descriptions() == [f"{__name__}.{Undocumented.__qualname__}.bare"]


def test_reference_lists_every_registered_name_and_field():
    ref = hook.collect()
    text = hook.render(ref)
    kinds = hook.registries()
    assert {"method", "task", "cell", "optimizer"} <= set(kinds.values())
    for members, kind in kinds.items():
        for cls in members:
            name = cls.model_fields["type"].default
            assert f"{kind}: `type: {name}`" in text, (kind, name)
            assert hook._describe_class(cls, registered=True), f"{kind} {name}: no docstring to describe its type"
            for key, f in cls.model_fields.items():
                if key != "type":
                    assert f"| `{f.alias or key}` |" in text, (kind, name, key)


def test_reference_marker_is_replaced_by_the_hook():
    page = (ROOT / "docs" / "reference" / "spec.md").read_text(encoding="utf-8")
    assert hook.MARKER in page
    out = hook.on_page_markdown(page, page=None, config=None, files=None)
    assert hook.MARKER not in out and "### method: `type: bptt` {#method-bptt}" in out


# ----------------------------------------------------------------------------- the README


def test_readme_is_a_short_front_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES
    assert "pip install -e ." in lines[0] and "seqpar run experiments/quickstart.yaml" in lines[0]
    for part in ("pip install -e '.[dev,docs]'", "ruff check", "ruff format --check", "pyright", "mkdocs build --strict", "pytest"):
        assert part in lines[1], part


def test_readme_links_resolve():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    assert targets
    for target in targets:
        if re.match(r"^[a-z]+://", target):
            continue
        assert (ROOT / target.split("#")[0]).exists(), target

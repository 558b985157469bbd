"""docs/architecture.md's module map stays true: every path it names exists, and every module is named.

When this fails after adding or removing a module, edit the "Layout" block of docs/architecture.md: the
failure message lists the lines to add (path and the first sentence of the module's docstring) or remove.
"""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
PACKAGES = ("core", "dashboard")


def _map_paths() -> list[str]:
    text = DOC.read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    return [line.split()[0] for line in block.splitlines() if line.strip()]


def _modules() -> set[str]:
    return {
        p.relative_to(ROOT).as_posix()
        for pkg in PACKAGES
        for p in (ROOT / pkg).rglob("*.py")
        if "__pycache__" not in p.parts
    }


def _suggestion(path: str) -> str:
    doc = ast.get_docstring(ast.parse((ROOT / path).read_text())) or ""
    return f"{path:36s} {doc.split(chr(10))[0].rstrip('.')}"


def test_every_path_in_the_module_map_exists():
    missing = [p for p in _map_paths() if not (ROOT / p).exists()]
    assert not missing, f"docs/architecture.md names modules that do not exist (remove them): {missing}"


def test_every_module_is_in_the_module_map():
    absent = sorted(_modules() - set(_map_paths()))
    assert not absent, "add to the Layout block of docs/architecture.md:\n" + "\n".join(map(_suggestion, absent))


def test_other_paths_the_docs_name_exist():
    # Backquoted repository paths anywhere on the page (tables, prose), e.g. `core/layout.py`.
    named = set(re.findall(r"`((?:core|dashboard|tests|bench|docs)/[\w/.-]+\.(?:py|md))`", DOC.read_text()))
    named |= set(re.findall(r"\b((?:core|dashboard)/[\w/]+\.py)\b", DOC.read_text().split("## Commands", 1)[1]))
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"

"""docs/architecture.md matches the code: every file, directory and module it names exists.

Three kinds of names are checked: repository paths (``client/...``, ``shim/...``, ...; in the job picture
``backends/...`` is relative to ``shim/tako_shim/``), the files of the shim's layout tree (nested by
indentation), and dotted ``tako_shim...`` module names.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
SHIM = ROOT / "shim" / "tako_shim"
TOP_DIRS = ("client/", "shim/", "operator/", "runner/", "tests/", "crds/", "docs/", "charts/", "bench/")
PATH = re.compile(r"(?<![\w./-])((?:[\w-]+/)+[\w.-]*)")
MODULE = re.compile(r"\btako_shim(?:\.\w+)+")


def code_blocks(text: str) -> list[list[str]]:
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def named_paths(text: str) -> set[str]:
    found = {match.rstrip(".,;:") for match in PATH.findall(text)}
    return {p for p in found if p.startswith((*TOP_DIRS, "backends/"))}


def resolve(path: str) -> Path:
    if path.startswith("backends/"):
        return SHIM / path
    return ROOT / path


def tree_files(block: list[str]) -> list[Path]:
    """Files of the layout tree: a line is ``[dir/] name name ...``; a dir nests by its indentation."""
    stack: list[tuple[int, Path]] = []
    files: list[Path] = []
    for line in block:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        words = re.sub(r"\([^)]*\)", " ", line).split()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        base = stack[-1][1] if stack else ROOT
        if words[0].endswith("/"):
            here = base / words[0]
            stack.append((indent, here))
            words = words[1:]
        else:
            here = base
        files.extend(here / word for word in words if word.endswith(".py"))
    return files


def test_the_doc_names_paths_and_modules_at_all() -> None:
    text = DOC.read_text()
    assert len(named_paths(text)) >= 20
    assert len(MODULE.findall(text)) >= 5


@pytest.mark.parametrize("path", sorted(named_paths(DOC.read_text())))
def test_every_named_path_exists(path: str) -> None:
    assert resolve(path).exists(), f"docs/architecture.md names {path}, which does not exist"


def test_every_file_of_the_shim_layout_tree_exists() -> None:
    blocks = [b for b in code_blocks(DOC.read_text()) if b and b[0].strip() == "shim/tako_shim/"]
    assert len(blocks) == 1, "the layout tree of the shim is missing"
    files = tree_files(blocks[0])
    assert len(files) >= 20
    missing = [str(f.relative_to(ROOT)) for f in files if not f.exists()]
    assert not missing, f"docs/architecture.md lists files that do not exist: {missing}"


def test_every_shim_module_of_the_tree_is_in_the_doc() -> None:
    blocks = [b for b in code_blocks(DOC.read_text()) if b and b[0].strip() == "shim/tako_shim/"]
    listed = {f.resolve() for f in tree_files(blocks[0])}
    on_disk = {
        p.resolve() for p in SHIM.rglob("*.py") if p.name != "__init__.py" or p.parent.name == "backends"
    }
    unlisted = sorted(str(p.relative_to(ROOT)) for p in on_disk - listed)
    assert not unlisted, f"shim modules missing from the layout tree in docs/architecture.md: {unlisted}"


@pytest.mark.parametrize("module", sorted(set(MODULE.findall(DOC.read_text()))))
def test_every_named_module_exists(module: str) -> None:
    relative = Path(*module.split(".")[1:])
    candidates = [SHIM / relative.with_suffix(".py"), SHIM / relative / "__init__.py"]
    assert any(c.exists() for c in candidates), f"docs/architecture.md names {module}, which does not exist"


def test_tree_parsing_nests_by_indentation() -> None:
    block = [
        "shim/tako_shim/",
        "  a.py",
        "  http/  b.py (note c.py)",
        "  backends/  d.py",
        "    local/  e.py",
    ]
    assert [str(p.relative_to(ROOT)) for p in tree_files(block)] == [
        "shim/tako_shim/a.py",
        "shim/tako_shim/http/b.py",
        "shim/tako_shim/backends/d.py",
        "shim/tako_shim/backends/local/e.py",
    ]


OPERATOR = ROOT / "operator" / "tako_operator"


def test_the_operator_layout_tree_matches_the_package() -> None:
    """Every file of the operator's tree exists, and every operator module on disk is in the tree."""
    blocks = [b for b in code_blocks(DOC.read_text()) if b and b[0].strip() == "operator/tako_operator/"]
    assert len(blocks) == 1, "the layout tree of the operator is missing"
    listed = {f.resolve() for f in tree_files(blocks[0])}
    missing = sorted(str(f.relative_to(ROOT)) for f in listed if not f.exists())
    assert not missing, f"docs/architecture.md lists operator files that do not exist: {missing}"
    on_disk = {p.resolve() for p in OPERATOR.rglob("*.py") if p.name != "__init__.py"}
    unlisted = sorted(str(p.relative_to(ROOT)) for p in on_disk - listed)
    assert not unlisted, f"operator modules missing from the layout tree in docs/architecture.md: {unlisted}"

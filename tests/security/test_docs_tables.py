"""The tables in docs/SECURITY.md and docs/reliability.md name real tests.

Every ``tests/...py::test_name`` reference in a table row must point at a file that exists and defines
that test (a function or a method), so the docs cannot claim a proof that is not in the suite; a row
that says "strict xfail (BUG" must name a test that really is a strict xfail, and the other rows must not.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ["docs/SECURITY.md", "docs/reliability.md"]
REFERENCE = re.compile(r"`(tests/[\w/.-]+\.py)::(test_\w+)`")


def table_references(doc: str) -> list[tuple[str, str, str]]:
    rows = [line for line in (ROOT / doc).read_text().splitlines() if line.startswith("|")]
    return [(path, name, row) for row in rows for path, name in REFERENCE.findall(row)]


def defined_tests(path: Path) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    tree = ast.parse(path.read_text())
    return {
        node.name: node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
    }


def is_strict_xfail(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for decorator in node.decorator_list:
        text = ast.unparse(decorator)
        if "xfail" in text and "strict=True" in text:
            return True
    return False


@pytest.mark.parametrize("doc", DOCS)
def test_every_table_row_names_an_existing_test(doc: str) -> None:
    references = table_references(doc)
    assert len(references) >= 10, f"{doc}: expected a table of tests, found {len(references)} references"
    missing = []
    for path, name, _row in references:
        file = ROOT / path
        if not file.is_file() or name not in defined_tests(file):
            missing.append(f"{path}::{name}")
    assert not missing, f"{doc} names tests that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS)
def test_rows_marked_strict_xfail_name_strict_xfail_tests(doc: str) -> None:
    for path, name, row in table_references(doc):
        node = defined_tests(ROOT / path).get(name)
        if node is None:
            continue  # reported by the test above
        claims_xfail = "strict xfail (BUG" in row
        assert claims_xfail == is_strict_xfail(node), (
            f"{doc}: the row for {name} {'says' if claims_xfail else 'does not say'} 'strict xfail (BUG' "
            f"but the test {'is not' if claims_xfail else 'is'} one"
        )

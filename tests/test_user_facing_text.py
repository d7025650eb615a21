"""No issue numbers or to-do notes in what users read: messages, help texts, reports."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ISSUE_NUMBER = re.compile(r"issue \d+", re.IGNORECASE)
NOTE_TO_SELF = re.compile(r"\b(TODO|FIXME|XXX)\b")
#: Third-party files shipped as they are.
VENDORED = ("wsi_mil/view/static/openseadragon/",)


def _string_literals(path: Path) -> list[tuple[int, str]]:
    """Every string constant of a Python file, docstrings included (argparse shows them as help)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


def _python_files() -> list[Path]:
    return sorted(
        [*(ROOT / "wsi_mil").rglob("*.py"), *(ROOT / "bench").glob("*.py"), *(ROOT / "pipelines").glob("*.py")]
    )


def _shipped_text_files() -> list[Path]:
    suffixes = {".md", ".html", ".js", ".css", ".yaml", ".yml", ".json", ".txt"}
    files = [p for p in (ROOT / "wsi_mil").rglob("*") if p.suffix in suffixes and p.is_file()]
    files += sorted((ROOT / "configs").glob("*.yaml"))
    return sorted(p for p in files if not p.relative_to(ROOT).as_posix().startswith(VENDORED))


def test_no_issue_numbers_in_string_literals() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {match.group(0)!r}"
        for path in _python_files()
        for line, text in _string_literals(path)
        for match in ISSUE_NUMBER.finditer(text)
    ]
    assert found == [], "\n".join(found)


def test_no_notes_to_self_in_the_package_strings() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {text[:80]!r}"
        for path in sorted((ROOT / "wsi_mil").rglob("*.py"))
        for line, text in _string_literals(path)
        if NOTE_TO_SELF.search(text)
    ]
    assert found == [], "\n".join(found)


def test_no_issue_numbers_in_shipped_text_files() -> None:
    found = [str(path.relative_to(ROOT)) for path in _shipped_text_files() if ISSUE_NUMBER.search(path.read_text())]
    assert found == []


@pytest.mark.parametrize("text", ["see Issue 6", "issue 12 item 4", "(ISSUE 2)"])
def test_the_scan_catches_issue_numbers(text: str, tmp_path: Path) -> None:
    module = tmp_path / "module.py"
    module.write_text(f'"""Docstring."""\nMESSAGE = {text!r}\n')
    assert any(ISSUE_NUMBER.search(value) for _, value in _string_literals(module))

"""Code-style rules that keep the code readable (issue 25): no function over 80 lines without a
reason in its docstring, no line over 100 characters in src/, benchmarks/, examples/ and
tests/."""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.paths import ROOT

MAX_FUNCTION_LINES = 80
REASON = "Longer than 80 lines"


def long_functions(root: Path, base: Path = ROOT) -> list[tuple[str, str, int]]:
    """``(path relative to base, name, lines)`` of every function under ``root`` longer than 80
    lines (def line to last line, docstring included) whose docstring does not say why."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(base).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), filename=rel)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            length = node.end_lineno - node.lineno + 1
            doc = " ".join((ast.get_docstring(node) or "").split())
            if length > MAX_FUNCTION_LINES and REASON not in doc:
                found.append((rel, node.name, length))
    return found


def test_long_functions_say_why():
    offenders = long_functions(ROOT / "src")
    assert not offenders, (
        f"functions over {MAX_FUNCTION_LINES} lines: split them, or add "
        f"'{REASON} because ...' to the docstring: "
        + "; ".join(f"{p}:{name} ({n} lines)" for p, name, n in offenders)
    )


def test_long_function_check_finds_one(tmp_path):
    # the check itself: an 81-line function is reported until its docstring gives the reason
    body = "\n".join(f"    x{i} = {i}" for i in range(79))
    (tmp_path / "m.py").write_text(f'def f():\n    """Doc."""\n{body}\n')
    assert [(n, k) for _, n, k in long_functions(tmp_path, tmp_path)] == [("f", 81)]
    (tmp_path / "m.py").write_text(f'def f():\n    """{REASON} because it is a test."""\n{body}\n')
    assert long_functions(tmp_path, tmp_path) == []


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed")
def test_no_line_over_100_characters():
    result = subprocess.run(
        [
            "ruff",
            "check",
            "--select",
            "E501",
            "--output-format",
            "concise",
            "--no-cache",
            "src",
            "benchmarks",
            "examples",
            "tests",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr

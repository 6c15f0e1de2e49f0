"""The package's shape: DESIGN.md section 2's layers, checked by import-linter, and no import cycles
hidden inside functions."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tether"


def _imports_tether(node: ast.AST) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").split(".")[0] == "tether"
    if isinstance(node, ast.Import):
        return any(alias.name.split(".")[0] == "tether" for alias in node.names)
    return False


def _function_local_tether_imports(source: str) -> list[int]:
    lines = []
    for func in ast.walk(ast.parse(source)):
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines += [node.lineno for node in ast.walk(func) if _imports_tether(node)]
    return sorted(set(lines))


def test_the_scanner_finds_a_function_local_import() -> None:
    source = "import os\ndef f():\n    from .hub import get_hub\n    import tether.conf\n"
    assert _function_local_tether_imports(source) == [3, 4]
    assert _function_local_tether_imports("from .hub import get_hub\ndef f():\n    import os\n") == []


def test_no_tether_module_is_imported_inside_a_function() -> None:
    found = {
        str(path.relative_to(PACKAGE.parent)): lines
        for path in sorted(PACKAGE.rglob("*.py"))
        if (lines := _function_local_tether_imports(path.read_text()))
    }
    assert found == {}


def test_the_layers_contract_holds() -> None:
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint_imports, "import-linter is a dev dependency: pip install -e '.[dev]'"
    result = subprocess.run([lint_imports], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout

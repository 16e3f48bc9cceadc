"""Layers depend only downward: rlhf_lib on no orchestration tool, tasks not on flows."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

FORBIDDEN = {"prefect", "mlflow", "dvc", "great_expectations", "tasks", "flows"}
LIBRARY = Path(__file__).resolve().parents[2] / "rlhf_lib"


def imports_of(package: Path, forbidden: set[str]) -> list[str]:
    """Every `import X` / `from X import` in the package whose top-level name is in `forbidden`."""
    offenders = []
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in forbidden]
    return offenders


def test_no_module_of_rlhf_lib_imports_orchestration():
    assert not imports_of(LIBRARY, FORBIDDEN)


def test_tasks_do_not_import_flows():
    assert not imports_of(LIBRARY.parent / "tasks", {"flows"})


def test_importing_the_library_loads_no_orchestration_module():
    code = (
        "import sys, rlhf_lib, rlhf_lib.generation, rlhf_lib.models.tiny, rlhf_lib.data.sources;"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN)!r}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=LIBRARY.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"

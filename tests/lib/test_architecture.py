"""The library depends on no orchestration tool: orchestration depends on it, never the reverse."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

FORBIDDEN = {"prefect", "mlflow", "dvc", "great_expectations", "tasks", "flows"}
LIBRARY = Path(__file__).resolve().parents[2] / "rlhf_lib"


def test_no_module_of_rlhf_lib_imports_orchestration():
    offenders = []
    for path in LIBRARY.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert not offenders, offenders


def test_importing_the_library_loads_no_orchestration_module():
    code = (
        "import sys, rlhf_lib, rlhf_lib.generation, rlhf_lib.models.tiny, rlhf_lib.data.sources;"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN)!r}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=LIBRARY.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"

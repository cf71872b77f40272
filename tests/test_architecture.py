"""The core imports no console or plotting libraries, and nothing uses pickle-based loading."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bertcls"
CORE = [
    "config",
    "config_sources",
    "lexical",
    "precision",
    "calibration",
    "interrupts",
    "locking",
    "resume",
    "redaction",
    "distributed",
    "onnx_backend",
    "batches",
    "data",
    "encoder",
    "embedding_cache",
    "features",
    "model",
    "training",
    "early_stopping",
    "metrics",
    "callbacks",
    "checkpoint",
    "memory",
    "workflow",
]


FORBIDDEN = ("typer", "rich", "matplotlib", "optuna")


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_core_source_imports_no_typer_rich_matplotlib_or_optuna():
    for name in CORE:
        assert not imported_modules(PACKAGE / f"{name}.py") & set(FORBIDDEN), name


def test_importing_the_core_loads_no_typer_matplotlib_or_optuna():
    # rich is left out here only because scikit-learn >= 1.9 imports it itself (sklearn.callback).
    code = (
        "import sys\n"
        + "".join(f"import bertcls.{m}\n" for m in CORE)
        + "bad = [m for m in ('typer', 'matplotlib', 'optuna') if m in sys.modules]\n"
        + "print(bad); sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_unsafe_loading_anywhere():
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text or path.name == "checkpoint.py", path
        assert not re.search(r"^\s*(import|from) joblib", text, re.M), path
        assert not re.search(r"yaml\.load\(", text), path
        assert not re.search(r"(?<![\w.])eval\(", text), path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)


def test_core_has_no_print_calls():
    for name in CORE:
        text = (PACKAGE / f"{name}.py").read_text()
        assert not re.search(r"^\s*print\(", text, re.M), name

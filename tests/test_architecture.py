"""The core imports no console or plotting libraries, and nothing uses pickle-based loading."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bertcls"
# Only these may import what the core may not: the command layer (typer, rich), evaluation's figures (matplotlib)
# and the tuning package (optuna).
OUTSIDE_CORE = ("cli", "evaluation", "tuning")


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


CORE = sorted(
    module_name(path)
    for path in PACKAGE.rglob("*.py")
    if path.relative_to(PACKAGE).parts[0] not in OUTSIDE_CORE and path.name != "__main__.py"
)
NOT_COMMANDS = sorted(
    module_name(path) for path in PACKAGE.rglob("*.py") if path.relative_to(PACKAGE).parts[0] != "cli"
)


FORBIDDEN = ("typer", "rich", "matplotlib", "optuna")


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def source(name: str) -> Path:
    return PACKAGE.joinpath(*name.split(".")).with_suffix(".py")


def test_the_core_is_derived_from_the_package():
    assert {"config", "data", "layout", "training", "workflow", "prediction"} <= set(CORE)
    assert not any(name.startswith(OUTSIDE_CORE) for name in CORE)


def test_core_source_imports_no_typer_rich_matplotlib_or_optuna():
    for name in CORE:
        assert not imported_modules(source(name)) & set(FORBIDDEN), name


def test_only_the_commands_import_typer_or_rich():
    for name in NOT_COMMANDS:
        assert not imported_modules(source(name)) & {"typer", "rich"}, name


def test_importing_the_core_loads_no_typer_matplotlib_or_optuna():
    # rich is left out here only because scikit-learn >= 1.9 imports it itself (sklearn.callback).
    code = (
        "import sys\n"
        + "".join(f"import bertcls.{m}\n" for m in CORE if m != "__init__")
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
    for name in NOT_COMMANDS:
        text = source(name).read_text()
        assert not re.search(r"^\s*print\(", text, re.M), name

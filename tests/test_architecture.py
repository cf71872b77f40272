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
    expected = {"config.settings", "data.labelled", "runtime.layout", "training.trainer", "inference.prediction"}
    assert expected <= set(CORE)
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


def package_module(path: Path) -> str:
    """``task.single`` for bertcls/task/single.py, ``task`` for bertcls/task/__init__.py."""
    name = module_name(path)
    return name.removesuffix(".__init__") if name != "__init__" else ""


def top_level_imports(path: Path) -> set[str]:
    """The bertcls modules a module imports when it is loaded (not inside functions or ``if TYPE_CHECKING``)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bertcls"):
            module = node.module.removeprefix("bertcls").strip(".")
            names.add(module)
            names.update(f"{module}.{alias.name}".strip(".") for alias in node.names)  # a submodule, if it is one
        elif isinstance(node, ast.Import):
            names.update(a.name.removeprefix("bertcls").strip(".") for a in node.names if a.name.startswith("bertcls"))
    return names


def import_graph() -> dict[str, set[str]]:
    modules = {package_module(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in top_level_imports(path) if m in modules and m != name} for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    done, active, cycles = set(), [], []

    def visit(name: str) -> None:
        if name in active:
            cycles.append(active[active.index(name) :] + [name])
            return
        if name in done:
            return
        active.append(name)
        for target in sorted(graph[name]):
            visit(target)
        active.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
    return cycles


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert {"task.single", "task.multi"} <= graph["task"] and "evaluation.plots" in graph["evaluation.single_label"]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert not find_cycles(graph), find_cycles(graph)[:3]


def test_top_level_holds_only_packages():
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert not loose, loose

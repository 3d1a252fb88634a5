"""The package's shape: layers that import one way only (storage below the core, the
core below the public Queue, the Queue below the worker runtime, and operations on
top: a lower layer that imported a higher one could call back up into it, which is
how data flow stops being one-way), and functions short enough to read whole."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "s3queue"

#: Modules shared by every layer: errors, limits, plain value types, the version.
LEAVES = {"errors", "limits", "payload", "info", "backoff", "version"}
#: Each layer, and the first parts of the s3queue modules it may import.
ALLOWED = {
    "storage": {"storage", "errors"},
    "core": {"core", "storage"} | LEAVES,
    "runtime": {"runtime", "core", "storage", "queue", "client"} | LEAVES,
    "app": {"app", "runtime", "core", "storage", "queue", "client"} | LEAVES,
}


def imports(path: Path) -> set[str]:
    """The s3queue modules ``path`` imports, without the ``s3queue.`` prefix
    ("" for the package itself, whose ``__init__`` imports every layer)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # "from s3queue import limits" imports s3queue.limits (or a name of the
            # package itself, which counts as the package).
            names = [node.module]
            if node.module == "s3queue":
                names = [f"s3queue.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            if name == "s3queue":
                found.add("")
            elif name.startswith("s3queue."):
                found.add(name.removeprefix("s3queue."))
    return found


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_a_layer_imports_nothing_above_it(layer: str) -> None:
    modules = sorted((PACKAGE / layer).glob("*.py"))
    assert modules, f"no modules in {layer}/"
    for path in modules:
        for module in imports(path):
            first = module.split(".")[0]
            assert first in ALLOWED[layer], f"{layer}/{path.name} imports s3queue.{module}"


def test_the_public_queue_imports_neither_the_runtime_nor_operations() -> None:
    for name in ("queue.py", "client.py"):
        for module in imports(PACKAGE / name):
            assert module.split(".")[0] not in {"runtime", "ops"}, f"{name} imports {module}"


#: The longest a function may be (lines, its docstring included); ruff's PLR0913
#: bounds its parameters.
MAX_FUNCTION_LINES = 60


def test_no_function_is_longer_than_a_screen() -> None:
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({lines})")
    assert not long, long

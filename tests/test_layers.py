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
#: ``sources`` is where every layer reads the time and draws chance.
LEAVES = {"errors", "limits", "payload", "info", "backoff", "version", "sources"}
#: Each layer, and the first parts of the s3queue modules it may import.
ALLOWED = {
    "storage": {"storage", "errors", "sources"},
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


#: Reads of the machine's clocks that bypass s3queue.sources where they are meant:
#: waiting for real threads at exit (the seam itself is not checked).
CLOCK_READS_ALLOWED = {"storage/cloud.py": 2}
#: What a clock read or a random draw looks like when it bypasses the seam.
BYPASSES = (
    "time.time",
    "time.monotonic",
    "time.perf_counter",
    "random.",
    "secrets.",
    "uuid.",
    "os.urandom",
    "datetime.now",
    "datetime.utcnow",
    "datetime.today",
)
#: Modules nothing may be imported from by name (``from time import time`` would
#: hide a read from the check above).
SOURCE_MODULES = {"time", "random", "secrets", "uuid"}


def bypasses(path: Path) -> list[str]:
    """``module.attribute`` uses in ``path`` that read a clock or draw chance."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            name = f"{node.value.id}.{node.attr}"
            if name.startswith(BYPASSES) and name != "random.Random":
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {name}")
        elif isinstance(node, ast.ImportFrom) and node.module in SOURCE_MODULES:
            found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} from {node.module} import")
    return found


def test_every_clock_read_and_random_draw_goes_through_sources() -> None:
    # The simulation runs every pod on virtual time with its own seeded chance by
    # swapping s3queue.sources per context: one direct read would leak real time
    # (or real randomness) into a run that must repeat from its seed.
    leaks = []
    for path in sorted(set(PACKAGE.rglob("*.py")) - {PACKAGE / "sources.py"}):
        found = bypasses(path)
        if len(found) > CLOCK_READS_ALLOWED.get(str(path.relative_to(PACKAGE)), 0):
            leaks.extend(found)
    assert not leaks, leaks

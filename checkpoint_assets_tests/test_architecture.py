"""The house rules of the package's layout, read from the source (no database needed).

Under test, as written in checkpoint_assets/engine/__init__.py and the README's
Development section:

1. The front door. A module outside ``engine/`` calls the engine only through
   ``checkpoint_assets.engine.operations.<module>``. From any other engine module it
   imports only what it never calls into: exception classes, plain data types
   (dataclasses and enums) and constants (UPPER_CASE values that are not callable).
2. ``engine/operations/__init__.py`` re-exports nothing: it holds its docstring alone.
3. No module of the package is longer than MAX_LINES lines.
4. No import cycle between the package's modules at module level (imports inside
   functions, which run later, and under ``if TYPE_CHECKING`` are left out).
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import importlib
import inspect
from pathlib import Path

import pytest

import checkpoint_assets

PACKAGE_DIR = Path(checkpoint_assets.__file__).parent
ENGINE = "checkpoint_assets.engine"
FRONT_DOOR = "checkpoint_assets.engine.operations"
MAX_LINES = 550  # the house rule is "about 500"; this is the hard stop


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}
OUTSIDE_ENGINE = sorted(name for name in MODULES
                        if name != ENGINE and not name.startswith(ENGINE + "."))


def _engine_imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every import of an engine module in ``path``, at any
    depth (inside functions too); ``import X`` gives no names."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and (node.module == ENGINE or node.module.startswith(ENGINE + ".")):
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names
                      if alias.name == ENGINE or alias.name.startswith(ENGINE + ".")]
    return found


def _not_called_into(value: object, name: str) -> str | None:
    """Why ``value`` may be imported from beyond the front door, or None when it may not."""
    if inspect.isclass(value) and issubclass(value, BaseException):
        return "exception class"
    if inspect.isclass(value) and (dataclasses.is_dataclass(value)
                                   or issubclass(value, enum.Enum)):
        return "data type"
    if name.isupper() and not callable(value):
        return "constant"
    return None


def _violations(module: str) -> list[str]:
    problems = []
    for line, imported, names in _engine_imports(MODULES[module]):
        where = f"{module}:{line}"
        if not names:
            problems.append(f"{where}: `import {imported}` (import names from a module)")
        elif imported in (ENGINE, FRONT_DOOR):
            # Only the front door's modules, never a name from a package's __init__.
            problems += [f"{where}: {imported}.{name} is not a front-door module"
                         for name in names if f"{imported}.{name}" not in MODULES]
        elif imported.startswith(FRONT_DOOR + "."):
            continue  # the front door: operations, requests, reports, CONTRACT
        else:
            engine_module = importlib.import_module(imported)
            for name in names:
                if _not_called_into(getattr(engine_module, name), name) is None:
                    problems.append(f"{where}: {imported}.{name} is called into; give the "
                                    "front door an operation for it")
    return problems


@pytest.mark.parametrize("module", OUTSIDE_ENGINE)
def test_modules_outside_the_engine_call_only_the_front_door(module: str) -> None:
    """Rule 1, per module outside engine/ (the CLI, the Dagster layer, settings...)."""
    assert _violations(module) == []


def test_the_rule_catches_a_call_beyond_the_front_door(tmp_path: Path) -> None:
    """The scan itself: a function, a working class and a plain import are refused; an
    exception, a data type and a constant pass."""
    assert _not_called_into(importlib.import_module(
        "checkpoint_assets.engine.load.loader").load_batch, "load_batch") is None
    assert _not_called_into(importlib.import_module(
        "checkpoint_assets.engine.load.target").Target, "Target") is None
    errors = importlib.import_module("checkpoint_assets.engine.core.errors")
    assert _not_called_into(errors.MigrationError, "MigrationError") == "exception class"
    assert _not_called_into(errors.FailureKind, "FailureKind") == "data type"
    check_table = importlib.import_module("checkpoint_assets.engine.verify.check_table")
    assert _not_called_into(check_table.COUNT_MATCH, "COUNT_MATCH") == "constant"
    source = tmp_path / "adapter.py"
    source.write_text("import checkpoint_assets.engine.load.loader\n")
    assert _engine_imports(source) == [(1, "checkpoint_assets.engine.load.loader", [])]


def test_the_front_door_package_re_exports_nothing() -> None:
    """Rule 2: importers name the defining module (engine.operations.migration, ...)."""
    tree = ast.parse(MODULES[FRONT_DOOR].read_text())
    assert len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr) \
        and isinstance(tree.body[0].value, ast.Constant)  # the docstring alone


def test_no_module_is_longer_than_the_limit() -> None:
    """Rule 3: every module of the package, engine and adapters alike."""
    long = {name: lines for name, path in MODULES.items()
            if (lines := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def _module_level_imports(module: str) -> set[str]:
    """The package's modules that ``module`` imports when it is imported: statements in
    its body (inside ``if``/``try`` too, but not ``if TYPE_CHECKING``), not inside
    functions or classes."""
    tree = ast.parse(MODULES[module].read_text())
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue  # for annotations only: never imported at run time
        if isinstance(node, (ast.If, ast.Try, ast.With)):
            pending += [child for child in ast.iter_child_nodes(node)
                        if isinstance(child, ast.stmt)]
            pending += [h for h in getattr(node, "handlers", [])]
            continue
        if isinstance(node, ast.ExceptHandler):
            pending += node.body
        elif isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([node.module] if node.module else []))
            for alias in node.names:
                child = f"{base}.{alias.name}"
                targets.add(child if child in MODULES else base)
    return {target for target in targets if target in MODULES and target != module}


def test_no_import_cycle_at_module_level() -> None:
    """Rule 4: depth-first search over the module-level import graph finds no cycle."""
    graph = {module: _module_level_imports(module) for module in MODULES}
    cycles: list[list[str]] = []
    state: dict[str, str] = {}  # "open" while on the current path, "done" after

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                cycles.append(path[path.index(imported):] + [imported])
            elif imported not in state:
                visit(imported, path + [imported])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []

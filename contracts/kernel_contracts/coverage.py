"""Which registered names have contract tests, found by reading test files (no imports).

A test module counts as a contract test when it subclasses one of the base classes
(``SchedulerContract`` ...) or calls ``parametrize``/``check``/``parametrize_registered``.
In such a module, a name is covered when it appears as ``component = "Name"``, as
``kernel.component("Name")`` / ``component("Name")``, or as the first argument of
``parametrize("Name")`` / ``check("Name")``; ``parametrize_registered("kind")`` covers every
registered name of that kind.  A test may also list names explicitly with
``CONTRACT_COVERS = ["Name", ...]``.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Iterable

from kernel_contracts.classes import BASE_CLASSES

_CALLS = {"parametrize", "check", "cases"}


@dataclasses.dataclass
class Coverage:
    names: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # name -> files
    kinds: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # swept kind -> files

    def covers(self, name: str, kind: str | None) -> bool:
        return name in self.names or (kind is not None and kind in self.kinds)


def _imports(tree: ast.AST) -> tuple[set[str], set[str]]:
    """(aliases of the kernel_contracts module, names imported from it)."""
    modules, names = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(a.asname or a.name for a in node.names if a.name == "kernel_contracts")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "kernel_contracts":
            names.update(a.asname or a.name for a in node.names)
    return modules, names


def _callee(node: ast.Call, modules: set[str], names: set[str]) -> str:
    """The kernel_contracts function called (``kc.parametrize`` or an imported name), else ``""``."""
    f = node.func
    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in modules:
        return f.attr
    if isinstance(f, ast.Name) and f.id in names:
        return f.id
    return ""


def _is_component_call(node: ast.Call) -> bool:
    f = node.func
    return (isinstance(f, ast.Attribute) and f.attr == "component") or (isinstance(f, ast.Name) and f.id == "component")


def _str(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def scan_file(path: Path, coverage: Coverage) -> None:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError):
        return
    modules, imported = _imports(tree)
    if not modules and not imported:
        return
    is_contract_test = False
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            bases = {b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "") for b in node.bases}
            if bases & set(BASE_CLASSES):
                is_contract_test = True
        elif isinstance(node, ast.Call):
            callee = _callee(node, modules, imported)
            first = _str(node.args[0]) if node.args else None
            if callee == "parametrize_registered" and first:
                coverage.kinds.setdefault(first, []).append(str(path))
                is_contract_test = True
            elif callee in _CALLS:
                is_contract_test = True
                if first:
                    names.add(first)
            elif _is_component_call(node) and first:
                names.add(first)
        elif isinstance(node, ast.Assign):
            targets = {t.id for t in node.targets if isinstance(t, ast.Name)}
            if "component" in targets and _str(node.value):
                names.add(_str(node.value))
            if "CONTRACT_COVERS" in targets and isinstance(node.value, (ast.List, ast.Tuple)):
                names.update(s for s in map(_str, node.value.elts) if s)
    if is_contract_test:
        for name in names:
            coverage.names.setdefault(name, []).append(str(path))


def scan(paths: Iterable[Path]) -> Coverage:
    coverage = Coverage()
    for path in paths:
        scan_file(Path(path), coverage)
    return coverage


def contract_test_files(root: Path) -> list[Path]:
    """Every test module of the plugins, the examples and the contracts package under ``root``."""
    patterns = ("plugins/*/tests/**/*.py", "examples/*/tests/**/*.py", "contracts/tests/**/*.py", "tests/**/*.py")
    return sorted({p for pattern in patterns for p in root.glob(pattern)})

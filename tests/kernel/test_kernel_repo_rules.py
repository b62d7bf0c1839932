"""Repository rules that keep the monorepo sound."""

import ast
import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ["kernel", "plugins", "contracts", "examples"]


def _py_files(*tops):
    for top in tops:
        base = ROOT / top
        if base.exists():
            yield from (p for p in base.rglob("*.py") if ".venv" not in p.parts and "/tests/" not in p.as_posix())


def test_shipped_code_never_imports_diffusers():
    pattern = re.compile(r"^\s*(import diffusers|from diffusers\b)", re.M)
    offenders = [str(p.relative_to(ROOT)) for p in _py_files(*SHIPPED) if pattern.search(p.read_text())]
    assert offenders == []


def test_shipped_code_never_unpickles():
    offenders = []
    for path in _py_files(*SHIPPED):
        for line in path.read_text().splitlines():
            if re.search(r"pickle\.loads?\(", line) or ("torch.load(" in line and "weights_only=True" not in line):
                offenders.append(f"{path.relative_to(ROOT)}: {line.strip()}")
    assert offenders == []


def test_test_module_names_do_not_collide():
    names = Counter(p.name for p in ROOT.rglob("test_*.py") if ".venv" not in p.parts)
    assert [n for n, c in names.items() if c > 1] == []


def test_every_plugin_distribution_has_tests():
    import subprocess

    tracked = subprocess.run(["git", "ls-files", "plugins"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    for name in sorted({Path(t).parts[1] for t in tracked if len(Path(t).parts) > 2}):
        plugin = ROOT / "plugins" / name
        if f"plugins/{name}/pyproject.toml" not in tracked:
            continue  # not a distribution yet (work in progress)
        assert list((plugin / "tests").glob("test_*.py")), f"{plugin.name} has no tests"


def _plugin_import_packages() -> set[str]:
    """Top-level import packages of the distributions under plugins/ and contracts/ (and examples/)."""
    packages = set()
    for dist in [*ROOT.glob("plugins/*"), ROOT / "contracts", *ROOT.glob("examples/*")]:
        if not (dist / "pyproject.toml").exists():
            continue
        packages.update(p.parent.name for p in dist.glob("*/__init__.py") if p.parent.name != "tests")
        packages.update(p.stem for p in dist.glob("*.py") if p.stem not in ("setup", "conftest"))
    return packages


def _imported_top_levels(source: str) -> set[str]:
    """Top-level modules a source imports: import statements, plus import_module/__import__ of a literal."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.add(node.args[0].value.split(".")[0])
    return found


def test_kernel_never_imports_a_plugin():
    plugins = _plugin_import_packages()
    assert {"kernel_layers", "kernel_sched_common", "kernel_contracts", "kernel_unet"} <= plugins
    assert _imported_top_levels("import kernel_unet.blocks\nfrom kernel_layers import x\n") == {"kernel_unet", "kernel_layers"}
    assert _imported_top_levels("importlib.import_module('kernel_flux.rotary')") == {"kernel_flux"}
    offenders = []
    for path in sorted((ROOT / "kernel").rglob("*.py")):
        bad = _imported_top_levels(path.read_text()) & plugins
        offenders += [f"{path.relative_to(ROOT)} imports {name}" for name in sorted(bad)]
    assert offenders == [], "the kernel never imports a plugin (DESIGN.md); move the code into a plugin instead"

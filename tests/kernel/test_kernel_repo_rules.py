"""Repository rules that keep the monorepo sound."""

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

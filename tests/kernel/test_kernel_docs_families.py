"""docs/families.md lists exactly the pipelines the installed plugins register."""

import re
from pathlib import Path

import pytest

from kernel.registry import get_registry

DOC = Path(__file__).resolve().parents[2] / "docs" / "families.md"


def _rows() -> list[str]:
    return [line for line in DOC.read_text().splitlines() if line.startswith("| `kernel-")]


def _table_pipelines() -> set[str]:
    names = {n for row in _rows() for n in re.findall(r"`([A-Z][A-Za-z0-9]*Pipeline)`", row)}
    return {n for n in names if not n.startswith("AutoPipelineFor")}


def _table_aliases() -> set[str]:
    return {n for row in _rows() for n in re.findall(r"`([a-z0-9][a-z0-9-]*)`", row.rsplit("|", 2)[-2])}


def test_families_doc_names_every_registered_pipeline():
    registered = {n for n in get_registry().names() if n.endswith("Pipeline")}
    if not registered:
        pytest.skip("no plugin is installed")
    assert sorted(registered - _table_pipelines()) == [], "registered pipelines missing from docs/families.md"


def test_families_doc_names_only_registered_pipelines():
    registered = {n for n in get_registry().names() if n.endswith("Pipeline")}
    if len(registered) < 50:
        pytest.skip("not every family plugin is installed")
    assert sorted(_table_pipelines() - registered) == [], "docs/families.md names pipelines no plugin registers"


def test_families_doc_aliases_match_the_registry():
    registered = set(get_registry().names("kernel.aliases"))
    if len(registered) < 20:
        pytest.skip("not every family plugin is installed")
    assert sorted(registered ^ _table_aliases()) == [], "aliases differ between docs/families.md and the plugins"

"""Every test module has one tier (tests/conftest.py's TIERS), so `pytest -m unit`,
`-m integration` and `-m e2e` together run the whole suite; and test modules share
helpers through helper modules (tests/builders.py, tests/e2e.py, ...), never by importing
one another, so each runs alone."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

from tests.conftest import TIERS


def test_every_test_module_is_in_exactly_one_tier():
    modules = sorted(p.stem for p in Path(__file__).parent.glob("test_*.py"))
    listed = Counter(module for tier in TIERS.values() for module in tier)
    assert [m for m, n in listed.items() if n > 1] == []  # none in two tiers
    assert sorted(listed) == modules  # every module, and none that is gone


def test_the_tiers_are_the_markers_pyproject_registers():
    import tomllib

    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    markers = tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]["pytest"]
    registered = {line.split(":")[0] for line in markers["ini_options"]["markers"]}
    assert set(TIERS) <= registered


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            modules |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return modules


def test_no_module_of_the_tests_imports_a_test_module():
    tests = Path(__file__).parent
    test_modules = {f"tests.{p.stem}" for p in tests.glob("test_*.py")}
    importing = {
        path.name: sorted(imported_modules(path) & test_modules)
        for path in sorted(tests.glob("*.py"))
    }
    assert {name: found for name, found in importing.items() if found} == {}

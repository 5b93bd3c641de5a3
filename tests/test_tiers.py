"""Every test module has one tier (tests/conftest.py's TIERS), so `pytest -m unit`,
`-m integration` and `-m e2e` together run the whole suite."""

from __future__ import annotations

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

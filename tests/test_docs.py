"""The README stays true: every command has help and is documented, exit codes included."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from batchgen.cli import cli

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
COMMANDS = sorted(cli.commands)


def test_every_product_command_exists():
    assert set(COMMANDS) >= {
        "validate",
        "plan",
        "ingest",
        "run",
        "resume",
        "status",
        "report",
        "download",
        "retry",
        "sandbox",
    }


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command):
    for flag in ("-h", "--help"):
        result = CliRunner().invoke(cli, [command, flag])
        assert result.exit_code == 0, result.output
        assert "Example" in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_is_in_the_readme(command):
    assert f"batchgen {command}" in README


def test_the_readme_gives_the_two_newcomer_commands_and_ci_runs_the_checks_and_tests():
    """.ci/run runs the README's check and test commands, which are the noxfile's."""
    root = Path(__file__).resolve().parent.parent
    ci = (root / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    noxfile = (root / "noxfile.py").read_text(encoding="utf-8")
    assert "batchgen run manifests/quickstart.yaml --sandbox" in README
    checks, tests = "nox -s lint types", "python -m pytest -n auto --dist loadgroup"
    assert f"\n{checks}  " in README and f"\n{tests}  " in README
    assert ci[-2:] == [checks, tests]
    assert f"TESTS = {tests.split()!r}".replace("'", '"') in noxfile


@pytest.mark.parametrize("code", ["0", "1", "2", "3", "4", "130"])
def test_every_exit_code_is_documented(code):
    assert f"| {code} |" in README

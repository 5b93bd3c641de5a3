"""The README and docs/ stay true: every command has help and is documented, exit codes
included; the help texts in docs/commands.md are the code's; every relative link resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchgen import docs
from batchgen.cli import cli
from tests.documentation import DOCS, ROOT, pages

README = (ROOT / "README.md").read_text(encoding="utf-8")
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
    """The README's table of commands has a line for each, linking to its help text."""
    assert f"| [`batchgen {command}" in README
    assert f"](docs/commands.md#batchgen-{command})" in README


def test_the_readme_gives_the_two_newcomer_commands_and_ci_runs_the_checks_and_tests():
    """.ci/run runs the README's check and test commands, which are the noxfile's."""
    root = ROOT
    ci = (root / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    noxfile = (root / "noxfile.py").read_text(encoding="utf-8")
    assert "batchgen run manifests/quickstart.yaml --sandbox" in README
    checks, tests = "nox -s lint types", "python -m pytest -n 4 --dist loadgroup"
    assert f"\n{checks}  " in README and f"\n{tests}  " in README
    assert ci[-2:] == [checks, tests]
    assert f"TESTS = {tests.split()!r}".replace("'", '"') in noxfile


@pytest.mark.parametrize("code", ["0", "1", "2", "3", "4", "130"])
def test_every_exit_code_is_documented(code):
    assert f"| {code} |" in README


def test_the_readme_is_short_and_the_reference_is_in_docs():
    lines = README.count("\n")
    assert lines <= 300, f"README.md has {lines} lines"
    for page in sorted(DOCS.glob("*.md")):
        assert f"](docs/{page.name})" in README, f"the README links to no docs/{page.name}"


def test_the_readmes_first_campaign_is_a_valid_manifest(tmp_path):
    """The manifest of "A first campaign" validates, with the 9 jobs the text counts."""
    section = README.split("## A first campaign", 1)[1]
    manifest = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert manifest is not None
    (tmp_path / "spring.yaml").write_text(manifest.group(1), encoding="utf-8")
    result = CliRunner().invoke(cli, ["validate", str(tmp_path / "spring.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    assert '"jobs": 9' in result.output and "9 videos" in section


def test_the_commands_page_holds_every_help_text_as_the_code_prints_it():
    assert docs.main(["--check"]) == 0, "docs/commands.md is stale: run python -m batchgen.docs"
    page = (DOCS / "commands.md").read_text(encoding="utf-8")
    for command in COMMANDS:
        assert f"### `batchgen {command}`\n\n```text\n{docs.help_text(command)}```" in page


def test_a_stale_commands_page_fails_the_check_and_is_rewritten(tmp_path, monkeypatch, capsys):
    page = tmp_path / "commands.md"
    written = (DOCS / "commands.md").read_text(encoding="utf-8")
    page.write_text(written.replace("Show this message and exit.", "Old text."), encoding="utf-8")
    monkeypatch.setattr(docs, "COMMANDS_PAGE", page)
    assert docs.main(["--check"]) == 1
    assert "is stale: run python -m batchgen.docs" in capsys.readouterr().err
    assert docs.main([]) == 0
    assert page.read_text(encoding="utf-8") == written


LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings, as GitHub makes them."""
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
    headings = re.findall(r"^#+ (.+)$", text, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def links(page: Path) -> list[str]:
    """The targets of a page's links and images, outside code blocks and code spans."""
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
    return LINK.findall(re.sub(r"`[^`\n]*`", "", text))


@pytest.mark.parametrize("page", pages(), ids=lambda page: page.name)
def test_every_relative_link_resolves_to_a_file_and_heading(page):
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:: not this repository's
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or (anchor and anchor not in anchors(file)):
            broken.append(target)
    assert broken == []


def test_the_link_check_sees_a_missing_file_and_a_missing_heading():
    assert "docs/teams.md#several-keys" in links(ROOT / "README.md")
    assert "several-keys" in anchors(DOCS / "teams.md")
    assert "no-such-heading" not in anchors(DOCS / "teams.md")
    assert {"review-grid.png", "teams.md#a-teammate-on-another-machine---share"} <= set(
        links(DOCS / "review.md")
    )

"""Hostile and invalid manifests through the real commands: each problem one clear line on
stderr, exit 1, no traceback, and nothing written — no ledger, no request (§4, §10)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from batchgen.cli import cli
from tests.e2e import batchgen, ledger_written
from tests.workbooks import inline, row, write_workbook

CORPUS = Path(__file__).resolve().parent / "bad_manifests"
BAD = sorted(path.name for path in CORPUS.glob("*.yaml"))
LIBYAML_WORDING = {"bad-indentation.yaml"}  # the parser words syntax errors


def options_for(name: str) -> list[str]:
    limit = re.search(r"max_jobs=(\d+)", (CORPUS / name).read_text(errors="replace"))
    return ["--max-jobs", limit.group(1)] if limit else []


@pytest.mark.parametrize("command", ["validate", "plan", "ingest", "run"])
@pytest.mark.parametrize("name", BAD)
def test_a_bad_manifest_is_refused_with_its_lines_and_nothing_written(
    name, command, tmp_path, monkeypatch
):
    """On a SQLite file only: a manifest is refused before any ledger is opened, whatever
    its kind (the corpus is 200 cases); a PostgreSQL database left untouched by a refused
    manifest is the next test's, and the workbook's."""
    monkeypatch.chdir(CORPUS)  # FILE in each line is the path as given
    monkeypatch.setenv("OKAYPIC_API_KEY", "okpk_never_used")
    monkeypatch.setenv("OKAYPIC_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    ledger = tmp_path / "ledger.db"
    result = CliRunner().invoke(cli, ["--ledger", str(ledger), command, name, *options_for(name)])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    if name not in LIBYAML_WORDING or yaml.__with_libyaml__:
        expected = (CORPUS / name).with_suffix(".expected").read_text().splitlines()
        for line in expected:
            assert line in result.output
    assert not ledger_written(ledger)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["python-tag.yaml", "alias-bomb.yaml", "grok-duration.yaml"])
def test_the_real_command_refuses_a_hostile_manifest_in_one_line_each(name, ledger_at):
    ledger = ledger_at
    result = batchgen(
        "run",
        str(CORPUS / name),
        ledger=ledger,
        key="okpk_never_used",
        base_url="http://127.0.0.1:9",
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    problems = [line for line in result.stderr.splitlines() if re.match(r".+:\d+:\d+: ", line)]
    assert problems and result.stderr.strip().endswith("nothing was written.")
    assert not ledger_written(ledger)


@pytest.mark.parametrize("command", ["validate", "ingest", "run"])
def test_a_corrupt_workbook_is_a_problem_placed_by_sheet_row_and_cell(command, ledger_at, tmp_path):
    # A cell pointing at shared string 999 of 3, and a date in the year 10113 (openpyxl
    # warns of it): one line each, never a traceback or a warning.
    write_workbook(
        tmp_path / "prompts.xlsx",
        [
            row(1, inline("A1", "sku"), inline("B1", "description"), inline("C1", "shoot")),
            row(2, inline("A2", "S1"), '<c r="B2" t="s"><v>999</v></c>'),
            row(3, inline("A3", "S2"), '<c r="B3" t="s"><v>2</v></c>',
                '<c r="C3" s="1"><v>3000000</v></c>'),
        ],
        shared_strings=["a", "b", "A cat"],
    )  # fmt: skip
    (tmp_path / "m.yaml").write_text(
        "version: 1\ncampaign: c\ndefaults: {model: grok-video-3}\n"
        'jobs:\n  - {id: "row-{sku}", rows: prompts.xlsx, prompt: "{description} on {shoot}"}\n',
        encoding="utf-8",
    )
    ledger = ledger_at
    result = batchgen(
        command,
        str(tmp_path / "m.yaml"),
        ledger=ledger,
        key="okpk_never_used",
        base_url="http://127.0.0.1:9",
    )
    assert result.returncode == 1
    place = str(tmp_path / "prompts.xlsx#Sheet1")
    assert result.stderr.splitlines() == [
        f"{place}:2:2: jobs[0]: cell B2: points at shared string 999, but the workbook has 3 "
        "(a damaged workbook)",
        f"{place}:3:3: jobs[0]: cell C3: holds the date 3000000, beyond the dates Excel can "
        "show (to 9999-12-31)",
        "2 problem(s) found; nothing was written.",
    ]
    assert not ledger_written(ledger)


def test_a_bad_lost_after_is_a_usage_error(tmp_path):
    result = batchgen("resume", "--lost-after", "soon", ledger=tmp_path / "l.db")
    assert result.returncode == 2
    assert "--lost-after" in result.stderr and "30m" in result.stderr

"""Hostile and invalid manifests through the real commands: each problem one clear line on
stderr, exit 1, no traceback, and nothing written — no ledger, no request (§4, §10)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from batchgen.cli import cli
from tests.e2e import batchgen

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
    assert not ledger.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["python-tag.yaml", "alias-bomb.yaml", "grok-duration.yaml"])
def test_the_real_command_refuses_a_hostile_manifest_in_one_line_each(name, tmp_path):
    ledger = tmp_path / "ledger.db"
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
    assert not ledger.exists()

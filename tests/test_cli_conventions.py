"""Command-line conventions (PRODUCT.md §7): --json on validate and plan, --ledger before or
after the command, help that fits the command, report tables that fit 80 columns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from batchgen.cli import Commands, cli
from batchgen.report import render
from tests.builders import grok, make_ledger, report
from tests.documentation import readme_and_docs
from tests.e2e import batchgen, ledger_content, ledger_written, write_manifest

ROOT = Path(__file__).resolve().parent.parent
README_AND_DOCS = readme_and_docs()  # the README, and docs/ where its reference moved
SPRING = ROOT / "manifests" / "spring-launch.yaml"


def bad_manifest(tmp_path: Path) -> Path:
    return write_manifest(
        tmp_path / "bad.yaml",
        """
        version: 1
        campaign: c
        jobs:
          - {id: a, model: grok-video-3, prompt: A cat, duration: 7}
          - {id: b, model: veo3.1, prompt: A ship}
        """,
    )


# --- --json ------------------------------------------------------------------------------


def test_validate_json_gives_each_problem_as_an_object_on_stdout(tmp_path):
    path = bad_manifest(tmp_path)
    as_text = batchgen("validate", str(path), ledger=tmp_path / "l.db")
    as_json = batchgen("validate", str(path), "--json", ledger=tmp_path / "l.db")
    assert as_json.returncode == as_text.returncode == 1
    answer = json.loads(as_json.stdout)
    assert answer["valid"] is False
    assert [list(p) for p in answer["problems"]] == [["file", "line", "col", "path", "message"]] * 2
    lines = [f"{p['file']}:{p['line']}:{p['col']}: {p['path']}: {p['message']}"
             for p in answer["problems"]]  # fmt: skip
    assert lines == as_text.stderr.splitlines()[:2]
    assert answer["problems"][0]["line"] == 4 and answer["problems"][0]["path"] == "jobs[0] (a)"


def test_validate_json_on_a_valid_manifest_and_on_broken_yaml(tmp_path):
    ok = batchgen("validate", str(SPRING), "--json", ledger=tmp_path / "l.db")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {
        "valid": True, "campaign": "spring-launch", "jobs": 36, "problems": []
    }  # fmt: skip
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\ncampaign: [unclosed\n", encoding="utf-8")
    result = batchgen("validate", str(broken), "--json", ledger=tmp_path / "l.db")
    assert result.returncode == 1
    [problem] = json.loads(result.stdout)["problems"]
    assert problem["path"] == "manifest" and "YAML" in problem["message"]


def test_validate_json_has_the_same_keys_on_an_invalid_manifest_as_on_a_valid_one(tmp_path):
    ok = json.loads(batchgen("validate", str(SPRING), "--json", ledger=tmp_path / "l.db").stdout)
    named = json.loads(
        batchgen("validate", str(bad_manifest(tmp_path)), "--json", ledger=tmp_path / "l.db").stdout
    )
    assert list(named) == list(ok) == ["valid", "campaign", "jobs", "problems"]
    assert (named["valid"], named["campaign"], named["jobs"]) == (False, "c", None)
    unnamed = write_manifest(
        tmp_path / "unnamed.yaml",
        "version: 1\ncampaign: Not A Name\njobs: [{id: a, model: grok-video-3, prompt: x}]\n",
    )
    answer = json.loads(
        batchgen("validate", str(unnamed), "--json", ledger=tmp_path / "l.db").stdout
    )
    assert list(answer) == list(ok)
    assert (answer["campaign"], answer["jobs"]) == (None, None)
    assert answer["problems"][0]["path"] == "campaign"


# the commands that print data (PRODUCT.md §7); run, resume and download print progress on
# stderr, retry one sentence, sandbox shell lines, review a web page
PRINTING_DATA = ["validate", "plan", "ingest", "status", "report"]


@pytest.mark.parametrize("command", PRINTING_DATA)
def test_every_command_that_prints_data_takes_json(command):
    result = CliRunner().invoke(cli, [command, "-h"])
    assert result.exit_code == 0 and "--json" in result.output


def test_report_json_is_the_same_as_format_json(audit_at):
    for extra in ([], ["--jobs"], ["--by", "model"]):
        as_format = batchgen("report", "--format", "json", *extra, ledger=audit_at)
        as_json = batchgen("report", "--json", *extra, ledger=audit_at)
        assert as_json.returncode == as_format.returncode == 0, as_json.stderr
        assert as_json.stdout == as_format.stdout
        json.loads(as_json.stdout)
    both = batchgen("report", "--json", "--format", "csv", ledger=audit_at)
    assert both.returncode == 2 and "--json" in both.stderr


def test_ingest_json_gives_the_counts_as_one_object(ledger_at, tmp_path):
    ledger = ledger_at
    first = batchgen("ingest", str(SPRING), "--json", ledger=ledger)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {
        "campaign": "spring-launch", "new": 36, "unchanged": 0, "replaced": 0, "ledger": str(ledger)
    }  # fmt: skip
    again = json.loads(batchgen("ingest", str(SPRING), "--json", ledger=ledger).stdout)
    assert (again["new"], again["unchanged"]) == (0, 36)
    invalid = batchgen("ingest", str(bad_manifest(tmp_path)), "--json", ledger=tmp_path / "x.db")
    assert invalid.returncode == 1
    assert json.loads(invalid.stdout)["valid"] is False and not (tmp_path / "x.db").exists()


def test_plan_json_gives_the_plan_as_one_object(tmp_path):
    result = batchgen("plan", str(SPRING), "--json", ledger=tmp_path / "none.db")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert (plan["campaign"], plan["jobs"], plan["cost_usd"]) == ("spring-launch", 36, "15.08")
    assert sum(m["jobs"] for m in plan["models"]) == 36
    assert plan["ledger"]["found"] is False and plan["to_run"] == 36
    assert (plan["budget_usd"], plan["fits_budget"], plan["over_budget_usd"]) == (
        "40.00", True, "0.00"
    )  # fmt: skip
    assert not (tmp_path / "none.db").exists()
    invalid = batchgen("plan", str(bad_manifest(tmp_path)), "--json", ledger=tmp_path / "l.db")
    assert invalid.returncode == 1 and len(json.loads(invalid.stdout)["problems"]) == 2


# --- --ledger after the command ----------------------------------------------------------


def test_the_ledger_can_be_named_before_or_after_the_command_or_by_environment(ledger_at, tmp_path):
    manifest = write_manifest(
        tmp_path / "m.yaml",
        "version: 1\ncampaign: c\njobs: [{id: a, model: grok-video-3, prompt: A cat}]\n",
    )
    elsewhere = tmp_path / "env.db"  # what BATCHGEN_LEDGER says in these runs
    after, before = ledger_at, tmp_path / "before.db"
    result = batchgen("ingest", str(manifest), "--ledger", str(after), ledger=elsewhere)
    assert result.returncode == 0, result.stderr
    result = batchgen("--ledger", str(before), "ingest", str(manifest), ledger=elsewhere)
    assert result.returncode == 0, result.stderr
    assert ledger_written(after) and before.exists() and not elsewhere.exists()
    for args in (["status", "--json", "--ledger", str(after)],
                 ["--ledger", str(after), "status", "--json"]):  # fmt: skip
        result = batchgen(*args, ledger=elsewhere)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["counts"]["queued"] == 1
    via_env = batchgen("status", "--json", ledger=before)
    assert json.loads(via_env.stdout)["counts"]["queued"] == 1


@pytest.mark.parametrize("command", sorted(set(cli.commands) - Commands.WITHOUT_LEDGER))
def test_every_command_that_uses_the_ledger_takes_it_after_its_name(command, tmp_path):
    result = CliRunner().invoke(cli, [command, "-h"])
    assert result.exit_code == 0 and "--ledger" in result.output


def test_resume_goes_on_in_the_sandbox_as_run_does():
    """PRODUCT §8: an interrupted `run --sandbox` goes on with `resume --sandbox`."""
    resume = CliRunner().invoke(cli, ["resume", "-h"]).output
    run = CliRunner().invoke(cli, ["run", "-h"]).output
    assert "--sandbox" in resume and "--sandbox" in run


# --- the README and docs/ tell how to install, complete and save ---------------------------------


def test_the_docs_document_output_folder_completion_and_installing_as_a_tool():
    for text in ("BATCHGEN_OUT", "_BATCHGEN_COMPLETE=bash_source batchgen",
                 "_BATCHGEN_COMPLETE=zsh_source batchgen", "pipx install", "uv tool install",
                 "datasette batchgen.db"):  # fmt: skip
        assert text in README_AND_DOCS, text


def test_shell_completion_works_as_the_readme_says(tmp_path):
    env = {**os.environ, "_BATCHGEN_COMPLETE": "bash_complete", "COMP_WORDS": "batchgen rep",
           "COMP_CWORD": "1"}  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "batchgen"], env=env, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.stdout.strip() == "plain,report"


def two_campaigns(path: Path | str) -> Path | str:
    for campaign in ("spring-launch", "summer"):
        make_ledger(path, [grok("a")], campaign=campaign).close()
    return path


def test_campaign_names_complete_from_the_ledger_read_only(ledger_at, tmp_path):
    from batchgen.cli import complete_campaigns

    path = two_campaigns(ledger_at)
    before = ledger_content(path)
    ctx = click.Context(cli, obj={"ledger": str(path)})
    param = cli.commands["status"].params[0]
    assert [c.value for c in complete_campaigns(ctx, param, "")] == ["spring-launch", "summer"]
    assert [c.value for c in complete_campaigns(ctx, param, "sp")] == ["spring-launch"]
    assert ledger_content(path) == before
    for nothing in (tmp_path / "none.db", tmp_path):  # no ledger, a folder: nothing offered
        assert complete_campaigns(click.Context(cli, obj={"ledger": str(nothing)}), param, "") == []
    (tmp_path / "junk.db").write_bytes(b"not a ledger")
    assert complete_campaigns(click.Context(cli, obj={"ledger": str(tmp_path / "junk.db")}),
                              param, "") == []  # fmt: skip


@pytest.mark.parametrize(
    "words", ["batchgen status --campaign s", "batchgen retry --job a --campaign s"]
)
@pytest.mark.parametrize("where", ["environment", "--ledger before", "--ledger after"])
def test_the_shell_completes_campaign_names(ledger_at, tmp_path, words, where):
    path = two_campaigns(ledger_at)
    env = {**os.environ, "_BATCHGEN_COMPLETE": "bash_complete"}
    env.pop("BATCHGEN_LEDGER", None)
    if where == "environment":
        env["BATCHGEN_LEDGER"] = str(path)
    elif where == "--ledger before":
        words = words.replace("batchgen ", f"batchgen --ledger {path} ", 1)
    else:
        command, _, rest = words.partition(" --campaign")
        words = f"{command} --ledger {path} --campaign{rest}"
    env["COMP_WORDS"] = words
    env["COMP_CWORD"] = str(len(words.split()) - 1)
    result = subprocess.run([sys.executable, "-m", "batchgen"], env=env, capture_output=True,
                            text=True, timeout=60, cwd=tmp_path)  # fmt: skip
    assert result.stdout.split() == ["plain,spring-launch", "plain,summer"], result.stderr


# --- report tables fit 80 columns --------------------------------------------------------


@pytest.mark.parametrize("by", ["campaign", "model", "tag", "status"])
@pytest.mark.parametrize("per_job", [False, True])
def test_report_tables_fit_in_80_columns(audit_at, by, per_job):
    text = report(audit_at, by=by, fmt="table", per_job=per_job, width=80)
    assert max(len(line) for line in text.splitlines()) <= 80, text
    if not per_job:  # nothing that costs money is ever left out
        for header in ("spent", "in flight", "unknown", "refunded"):
            assert header in text


def test_report_command_fits_the_terminal_width_it_is_given(audit_at):
    for args in (["report", "--by", "model"], ["report", "--jobs"]):
        result = subprocess.run(
            [sys.executable, "-m", "batchgen", "--ledger", str(audit_at), *args],
            env={**os.environ, "COLUMNS": "80"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert max(len(line) for line in result.stdout.splitlines()) <= 80, result.stdout
    wide = render_text(audit_at, 200)
    assert "refunded" in wide and "video s" in wide


def render_text(path: Path | str, width: int) -> str:
    from batchgen.ledger import Ledger

    ledger = Ledger(path, create=False)
    try:
        return render(ledger, [], "model", "table", False, width=width)
    finally:
        ledger.close()


def test_a_long_name_folds_within_its_column_at_80_columns(ledger_at):
    ledger = make_ledger(ledger_at, [grok("a-very-long-job-id-" + "x" * 60)],
                         campaign="campaign-with-a-long-name")  # fmt: skip
    ledger.close()
    text = report(ledger_at, per_job=True, fmt="table", width=80)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "x" * 30 in text.replace("\n", "")  # folded over lines, not cut


def test_report_jobs_help_says_one_row_per_attempt_as_the_output_has():
    text = " ".join(CliRunner().invoke(cli, ["report", "-h"]).output.split())
    assert "--jobs One row per attempt" in text
    assert "row per job" not in text


def test_the_default_ports_are_written_once_and_are_the_servers_own():
    from batchgen import ports
    from batchgen.review import DEFAULT_PORT as REVIEW_DEFAULT
    from batchgen.sandbox import DEFAULT_PORT as SANDBOX_DEFAULT

    def port_default(command: str) -> object:
        return next(p.default for p in cli.commands[command].params if p.name == "port")

    assert port_default("sandbox") == ports.SANDBOX_PORT == SANDBOX_DEFAULT
    assert port_default("review") == ports.REVIEW_PORT == REVIEW_DEFAULT

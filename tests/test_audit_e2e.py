"""The cost audit and the result files end to end: the real commands against the sandbox,
the ledger held to what the service really charged and served (PRODUCT.md §7, §9)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import pytest

from batchgen.money import to_micros
from batchgen.sandbox import DEFAULT_KEY, Sandbox, SandboxConfig, serve
from tests import postgres
from tests.conftest import LEDGER_KINDS
from tests.e2e import (
    FAST,
    batchgen,
    grok_batch,
    on_sandbox,
    recorded_task_ids,
    report_text,
    rows,
    status_json,
)

SCALE = 0.01
GROUP_SUMS = ["jobs", "completed", "failed", "queued", "video_seconds", "images"]
MONEY = ["spent_usd", "in_flight_usd", "unknown_usd", "refunded_usd"]


@pytest.fixture(scope="module", params=LEDGER_KINDS)
def audited(request, tmp_path_factory):
    """Two campaigns run on one key through failed tasks, 500s, 429s and dropped answers;
    made once per kind of ledger for the module (its tests only read it)."""
    folder = tmp_path_factory.mktemp("audited")
    if request.param == "sqlite":
        ledger: Path | str = folder / "l.db"
    else:
        cluster = request.getfixturevalue("postgres_cluster")
        ledger = postgres.new_database(cluster)
        request.addfinalizer(lambda: postgres.drop_database(cluster, str(ledger)))
    sandbox = Sandbox(
        SandboxConfig(
            time_scale=SCALE,
            seed=11,
            fail_rate=0.25,
            submit_500_rate=0.15,
            spurious_429_rate=0.15,
            drop_rate=0.15,
        )
    )
    with serve(sandbox) as served, pytest.MonkeyPatch.context() as env:
        env.setenv("BATCHGEN_OUT", str(folder / "out"))  # as conftest's env_setup does
        env.setenv("XDG_STATE_HOME", str(folder / "state"))
        for campaign, n in (("alpha", 8), ("beta", 6)):
            manifest = grok_batch(folder / f"{campaign}.yaml", n, campaign=campaign)
            result = batchgen(
                "run", str(manifest), *FAST, "--max-attempts", "8",
                ledger=ledger, base_url=served.base_url, key=DEFAULT_KEY,
            )  # fmt: skip
            assert result.returncode in (0, 1), result.stderr
    return sandbox, ledger


def test_report_totals_equal_the_services_net_charges_to_the_cent(audited):
    sandbox, ledger = audited
    truth = sandbox.truth()
    known = set(recorded_task_ids(ledger))
    assert truth.faults.get("task.fail", 0) > 0 and truth.faults.get("submit.drop", 0) > 0
    totals = json.loads(report_text(ledger, "--format", "json"))["totals"]
    spent, unknown = to_micros(totals["spent_usd"]), to_micros(totals["unknown_usd"])
    # What the service kept for tasks batchgen never heard of (their answers were dropped).
    unheard = sum(
        s.price_micros
        for s in truth.submissions
        if s.task_id not in known and s.status == "completed"
    )
    assert spent + unheard == truth.net_charged_micros()
    assert spent <= truth.net_charged_micros() <= spent + unknown
    refunded = sum(
        s.price_micros for s in truth.submissions if s.task_id in known and s.status == "failed"
    )
    assert to_micros(totals["refunded_usd"]) == refunded > 0


@pytest.mark.parametrize("by", ["campaign", "model", "status"])
def test_group_rows_sum_to_the_totals(audited, by):
    _, ledger = audited
    data = json.loads(report_text(ledger, "--by", by, "--format", "json"))
    assert data["by"] == by
    for column in GROUP_SUMS:
        assert sum(g[column] for g in data["groups"]) == data["totals"][column]
    for column in MONEY:
        assert sum(to_micros(g[column]) for g in data["groups"]) == to_micros(
            data["totals"][column]
        )
    if by == "campaign":
        assert [g["key"] for g in data["groups"]] == ["alpha", "beta"]
        assert data["totals"]["jobs"] == 14


def test_the_csv_report_opens_as_a_table_with_a_total_row(audited):
    _, ledger = audited
    table = list(
        csv.DictReader(io.StringIO(report_text(ledger, "--format", "csv", "--by", "campaign")))
    )
    assert list(table[0]) == [
        "key",
        "jobs",
        "completed",
        "failed",
        "queued",
        *MONEY,
        "video_seconds",
        "images",
    ]
    assert [row["key"] for row in table] == ["alpha", "beta", "TOTAL"]
    assert int(table[0]["jobs"]) + int(table[1]["jobs"]) == int(table[2]["jobs"]) == 14
    assert to_micros(table[0]["spent_usd"]) + to_micros(table[1]["spent_usd"]) == to_micros(
        table[2]["spent_usd"]
    )


def test_the_per_job_audit_lists_every_attempt_with_its_unit_price(audited):
    sandbox, ledger = audited
    jobs = json.loads(report_text(ledger, "--jobs", "--format", "json"))["jobs"]
    assert len(jobs) == 14
    attempts = [a for job in jobs for a in job["attempts"]]
    assert len(attempts) == rows(ledger, "SELECT COUNT(*) n FROM attempts")[0]["n"]
    assert {a["unit_price_usd"] for a in attempts} == {"0.10"}
    created = [a["task_id"] for a in attempts if a["task_id"]]
    assert sorted(created) == sorted(recorded_task_ids(ledger))


def test_the_per_attempt_csv_has_each_attempts_own_money_so_columns_sum_to_the_totals(audited):
    """One row per attempt, money per attempt only: summing a column over a retried job
    gives what that job cost, and over the file what the report's totals say."""
    sandbox, ledger = audited
    table = list(csv.DictReader(io.StringIO(report_text(ledger, "--jobs", "--format", "csv"))))
    totals = json.loads(report_text(ledger, "--format", "json"))["totals"]
    n_attempts = rows(ledger, "SELECT COUNT(*) n FROM attempts")[0]["n"]
    idle = rows(ledger, "SELECT COUNT(*) n FROM jobs j WHERE NOT EXISTS (SELECT 1 FROM attempts a"
                " WHERE a.campaign = j.campaign AND a.job_id = j.id)")[0]["n"]  # fmt: skip
    assert len(table) == n_attempts + idle
    for column in MONEY:
        column_sum = sum(to_micros(row[column]) for row in table)
        assert column_sum == to_micros(totals[column]), column
    retried = [job for job in status_json(ledger)["jobs"] if job["attempts"] > 1]
    assert retried and any(row["state"] == "failed" for row in table)
    for job in retried:
        own = [r for r in table if (r["campaign"], r["job_id"]) == (job["campaign"], job["id"])]
        assert len(own) >= job["attempts"]
        assert sum(to_micros(r["spent_usd"]) for r in own) == to_micros(job["cost_usd"])
        assert {r["prompt"] for r in own} == {f"clip number {job['id'].split('-')[1]}"}


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_downloads_match_the_served_bytes_and_are_restored_without_generating_again(
    make_sandbox, ledger_at, tmp_path
):
    sandbox = make_sandbox(time_scale=SCALE)
    ledger, out = ledger_at, tmp_path / "out"
    manifest = grok_batch(tmp_path / "m.yaml", 4)
    result = on_sandbox(sandbox, "run", str(manifest), *FAST, "--download", str(out), ledger=ledger)
    assert result.returncode == 0, result.stderr
    jobs = {job["id"]: job for job in status_json(ledger)["jobs"]}
    for job_id, job in jobs.items():
        path = out / "e2e" / f"{job_id}.mp4"
        assert job["files"] == [str(path)]
        assert path.read_bytes() == sandbox.sim.result_file(job["task_id"], 0)
    (out / "e2e" / "clip-1.mp4").unlink()
    (out / "e2e" / "clip-2.mp4").write_bytes(b"trunc")
    before = len(sandbox.sim.truth().submissions)
    result = batchgen("download", "--out", str(out), ledger=ledger)
    assert result.returncode == 0, result.stderr
    for job_id, job in jobs.items():
        path = out / "e2e" / f"{job_id}.mp4"
        assert path.read_bytes() == sandbox.sim.result_file(job["task_id"], 0)
        recorded = rows(ledger, "SELECT sha256 FROM files WHERE job_id = ?", job_id)[0]
        assert recorded["sha256"] == sha256(path)
    assert len(sandbox.sim.truth().submissions) == before  # nothing generated again

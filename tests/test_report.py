"""`batchgen report`: the cost audit. Ledgers are built through the Ledger's own write
methods, the path the scheduler takes, and every expected sum is worked out by hand from
the price table (okaypic-api.txt).

The ledgers are built by tests/builders.py (`audit`: every money state once).
"""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from pathlib import Path

import pytest

from batchgen.job import Campaign
from batchgen.ledger import Ledger
from batchgen.report import COLUMNS, JOB_COLUMNS
from tests.builders import (
    CDN,
    complete,
    fail,
    grok,
    invoke,
    make_ledger,
    report,
    sent_with,
    start,
)


def test_json_totals_are_worked_out_from_the_price_table(audit):
    totals = report(audit)["totals"]
    assert totals == {
        "key": "TOTAL",
        "jobs": 10,
        "completed": 4,
        "failed": 2,
        "queued": 1,
        "spent_usd": "1.40",  # 0.80 + 0.30 + 0.20 + 0.10
        "in_flight_usd": "0.60",
        "unknown_usd": "1.50",  # veo pro 0.30 + seedance 5 s at the video-ref rate 1.20
        "refunded_usd": "0.10",
        "video_seconds": 25,  # 10 + 15; veo adds 0
        "images": 1,
    }


def test_every_row_has_exactly_the_contract_keys_in_order(audit):
    data = report(audit, by="model")
    assert data["by"] == "model"
    for row in [*data["groups"], data["totals"]]:
        assert list(row) == list(COLUMNS)


def test_json_by_model_gives_each_models_money(audit):
    groups = {row["key"]: row for row in report(audit, by="model")["groups"]}
    assert list(groups) == sorted(groups)
    assert groups["jimeng-video-seedance-2.0-fast"]["spent_usd"] == "0.80"
    assert groups["grok-video-3"]["spent_usd"] == "0.30"
    assert groups["grok-video-3"]["refunded_usd"] == "0.10"
    assert groups["grok-video-3"]["failed"] == 2 and groups["grok-video-3"]["queued"] == 1
    assert groups["jimeng-video-seedance-2.0"]["in_flight_usd"] == "0.60"
    assert groups["jimeng-video-seedance-2.0"]["unknown_usd"] == "1.20"
    assert groups["veo3.1"]["unknown_usd"] == "0.30" and groups["veo3.1"]["spent_usd"] == "0.10"
    assert groups["veo3.1"]["video_seconds"] == 0
    assert groups["jimeng-5.0"]["images"] == 1 and groups["jimeng-5.0"]["spent_usd"] == "0.20"


@pytest.mark.parametrize("by", ["campaign", "model", "status", "key"])
def test_groups_sum_to_the_totals(audit, by):
    data = report(audit, by=by)
    for column in COLUMNS[1:]:
        if column.endswith("_usd"):
            assert sum(Decimal(g[column]) for g in data["groups"]) == Decimal(
                data["totals"][column]
            )
        else:
            assert sum(g[column] for g in data["groups"]) == data["totals"][column]


def test_csv_report_has_a_total_row_equal_to_the_sum_of_groups(audit):
    rows = list(csv.DictReader(io.StringIO(report(audit, by="model", fmt="csv"))))
    assert list(rows[0]) == list(COLUMNS)
    *groups, total = rows
    assert total["key"] == "TOTAL" and len(groups) == 5
    for column in COLUMNS[1:]:
        assert sum(Decimal(g[column]) for g in groups) == Decimal(total[column])
    assert total["spent_usd"] == "1.40"


def test_by_tag_counts_a_job_in_each_of_its_tags_and_once_in_the_totals(audit):
    data = report(audit, by="tag")
    groups = {row["key"]: row for row in data["groups"]}
    assert set(groups) == {"a", "b", "(none)"}
    assert groups["a"]["jobs"] == 4  # fast-10, grok-15, pro-lost, wait
    assert groups["a"]["spent_usd"] == "1.10"  # 0.80 + 0.30
    assert groups["b"]["jobs"] == 2 and groups["b"]["spent_usd"] == "0.80"
    assert groups["b"]["refunded_usd"] == "0.10"
    assert groups["(none)"]["jobs"] == 5
    assert data["totals"]["jobs"] == 10 and data["totals"]["spent_usd"] == "1.40"
    assert sum(g["jobs"] for g in data["groups"]) == 11  # fast-10 is in a and b


def test_a_tag_listed_twice_on_one_job_counts_once(tmp_path):
    path = tmp_path / "l.db"
    ledger = make_ledger(path, [grok("twice", tags=["x", "x"])])
    complete(ledger, "twice")
    ledger.close()
    [group] = report(path, by="tag")["groups"]
    assert (group["key"], group["jobs"], group["spent_usd"]) == ("x", 1, "0.10")


def test_by_status_shows_the_jobs_that_queued_does_not_count(audit):
    groups = {row["key"]: row["jobs"] for row in report(audit, by="status")["groups"]}
    assert groups == {"completed": 4, "failed": 2, "queued": 1, "running": 1, "held": 1,
                      "submitting": 1}  # fmt: skip


def test_totals_agree_with_the_ledgers_money(audit):
    ledger = Ledger(audit, create=False)
    money = ledger.money()
    ledger.close()
    totals = report(audit)["totals"]
    assert totals["spent_usd"] == "1.40" and money.spent == 1_400_000
    assert (money.in_flight, money.unknown, money.refunded) == (600_000, 1_500_000, 100_000)


def test_a_campaign_filter_keeps_other_campaigns_out(audit):
    ledger = Ledger(audit)
    ledger.ingest(Campaign("other", "o.yaml", "sha", None), [grok("o1")])
    o1 = start(ledger, "o1", campaign="other")
    ledger.task_completed(o1, [])
    ledger.close()
    assert report(audit)["totals"]["spent_usd"] == "1.50"
    assert report(audit, campaigns=["c"])["totals"]["spent_usd"] == "1.40"
    assert [g["key"] for g in report(audit, campaigns=["other"])["groups"]] == ["other"]


def test_per_job_json_nests_each_attempt_with_its_price_task_and_state(audit):
    jobs = {j["id"]: j for j in report(audit, per_job=True)["jobs"]}
    assert len(jobs) == 10
    bad = jobs["grok-bad"]
    assert (bad["status"], bad["spent_usd"], bad["refunded_usd"]) == ("failed", "0.00", "0.10")
    [attempt] = bad["attempts"]
    assert list(attempt) == [
        "number",
        "started_at",
        "http_status",
        "outcome",
        "state",
        "task_id",
        "key_label",
        "unit_price_usd",
        "cost_usd",
        "spent_usd",
        "in_flight_usd",
        "unknown_usd",
        "refunded_usd",
        "error",
        "files",
        "provenance",
        "verdict",
        "note",
    ]
    assert list(bad) == [*JOB_COLUMNS, "attempts"]
    assert bad["prompt"] == "prompt grok-bad" and bad["files"] == []
    assert attempt["number"] == 1 and attempt["state"] == "failed"
    assert attempt["task_id"] == "task-c-grok-bad-0" and attempt["unit_price_usd"] == "0.10"
    assert attempt["cost_usd"] == "0.00" and attempt["error"] == "NSFW"
    assert jobs["sd-sent"]["unknown_usd"] == "1.20"
    assert jobs["sd-sent"]["attempts"][0]["state"] == "sending"
    assert jobs["bad-400"]["attempts"][0]["http_status"] == 400
    assert jobs["wait"]["attempts"] == [] and jobs["wait"]["price_usd"] == "0.20"
    assert jobs["fast-10"]["tags"] == ["a", "b"] and jobs["fast-10"]["spent_usd"] == "0.80"


def test_per_job_csv_has_one_row_per_attempt_with_its_own_money_only(tmp_path):
    path = tmp_path / "l.db"
    ledger = make_ledger(path, [grok("twice"), grok("never")])
    fail(ledger, "twice", then="queued")
    complete(ledger, "twice")
    ledger.file_saved("c", "twice", 0, f"{CDN}/twice.mp4", "out/c/twice.mp4", 10, "ab" * 32)
    ledger.close()
    text = report(path, fmt="csv", per_job=True)
    assert text.splitlines()[0] == (
        "campaign,job_id,model,status,prompt,tags,duration,variant,attempt,started_at,"
        "http_status,outcome,state,task_id,key_label,unit_price_usd,spent_usd,in_flight_usd,"
        "unknown_usd,refunded_usd,error,files,provenance,verdict,note"
    )
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["job_id"], r["attempt"], r["state"], r["spent_usd"], r["refunded_usd"],
             r["files"]) for r in rows] == [
        ("twice", "1", "failed", "0.00", "0.10", ""),
        ("twice", "2", "completed", "0.10", "0.00", "out/c/twice.mp4"),
        ("never", "", "", "0.00", "0.00", ""),
    ]  # fmt: skip
    assert {r["prompt"] for r in rows} == {"prompt twice", "prompt never"}
    assert rows[2]["unit_price_usd"] == ""


def test_per_job_reports_show_the_marks_read_from_each_saved_file(tmp_path):
    path = tmp_path / "l.db"
    ledger = make_ledger(path, [grok("signed")])
    complete(ledger, "signed")
    c2pa = {"state": "valid", "failures": [], "error": None, "untrusted": True,
            "manifests": [{"issuer": "Okaypic"}]}  # fmt: skip
    marks = {"c2pa": c2pa, "xmp": None, "labels": [], "marked": True, "error": None}
    ledger.file_saved("c", "signed", 0, f"{CDN}/s.mp4", "out/c/s.mp4", 10, "ab" * 32, marks)
    ledger.close()
    [job] = report(path, per_job=True)["jobs"]
    assert job["provenance"] == [marks] and job["attempts"][0]["provenance"] == [marks]
    [row] = csv.DictReader(io.StringIO(report(path, fmt="csv", per_job=True)))
    assert row["provenance"] == "C2PA valid (Okaypic)"
    assert "C2PA valid (Okaypic)" in report(path, fmt="table", per_job=True)


def test_per_job_csv_money_columns_sum_to_the_totals(audit):
    rows = list(csv.DictReader(io.StringIO(report(audit, fmt="csv", per_job=True))))
    totals = report(audit)["totals"]
    for column in ("spent_usd", "in_flight_usd", "unknown_usd", "refunded_usd"):
        assert sum(Decimal(r[column]) for r in rows) == Decimal(totals[column]), column


@pytest.fixture
def keyed(audit) -> Path:
    """The audit ledger sent with two keys, some attempts before labels were kept:

    studio        fast-10 (spent 0.80, 10 s), grok-15 (spent 0.30, 15 s), sd-run (in flight 0.60)
    night         grok-bad (failed, refunded 0.10), pro-lost (held, unknown 0.30),
                  poster (spent 0.20, 1 image)
    (unlabelled)  sd-sent (unknown 1.20), veo-done (spent 0.10), bad-400 (failed, nothing)
    (none)        wait (queued, never sent)
    """
    ledger = Ledger(audit, create=False)
    for job_id in ("fast-10", "grok-15", "sd-run"):
        sent_with(ledger, job_id, "studio")
    for job_id in ("grok-bad", "pro-lost", "poster"):
        sent_with(ledger, job_id, "night")
    ledger.close()
    return audit


def test_by_key_gives_each_keys_money_and_jobs_worked_out_by_hand(keyed):
    data = report(keyed, by="key")
    groups = {g["key"]: g for g in data["groups"]}
    assert list(groups) == ["(none)", "(unlabelled)", "night", "studio"]

    def row(key, jobs, completed, failed, queued, money, seconds, images):
        spent, in_flight, unknown, refunded = money
        return {"key": key, "jobs": jobs, "completed": completed, "failed": failed,
                "queued": queued, "spent_usd": spent, "in_flight_usd": in_flight,
                "unknown_usd": unknown, "refunded_usd": refunded, "video_seconds": seconds,
                "images": images}  # fmt: skip

    zero = ("0.00",) * 4
    assert groups == {
        "(none)": row("(none)", 1, 0, 0, 1, zero, 0, 0),
        "(unlabelled)": row("(unlabelled)", 3, 1, 1, 0, ("0.10", "0.00", "1.20", "0.00"), 0, 0),
        "night": row("night", 3, 1, 1, 0, ("0.20", "0.00", "0.30", "0.10"), 0, 1),
        "studio": row("studio", 3, 2, 0, 0, ("1.10", "0.60", "0.00", "0.00"), 25, 0),
    }
    assert data["by"] == "key" and data["totals"] == report(keyed)["totals"]


def test_by_key_a_job_retried_on_another_key_has_its_money_in_both_and_counts_in_the_last(
    tmp_path,
):
    path = tmp_path / "l.db"
    ledger = make_ledger(path, [grok("moved"), grok("other")])
    fail(ledger, "moved", then="queued")  # refunded 0.10
    sent_with(ledger, "moved", "night")
    complete(ledger, "moved")  # spent 0.10
    sent_with(ledger, "moved", "studio")
    ledger.close()
    groups = {g["key"]: g for g in report(path, by="key")["groups"]}
    assert (groups["night"]["jobs"], groups["night"]["refunded_usd"]) == (0, "0.10")
    assert (groups["studio"]["jobs"], groups["studio"]["completed"]) == (1, 1)
    assert (groups["studio"]["spent_usd"], groups["studio"]["video_seconds"]) == ("0.10", 5)
    assert groups["(none)"]["jobs"] == 1


def test_by_key_as_csv_and_as_a_table(keyed):
    rows = list(csv.DictReader(io.StringIO(report(keyed, by="key", fmt="csv"))))
    assert [r["key"] for r in rows] == ["(none)", "(unlabelled)", "night", "studio", "TOTAL"]
    assert rows[-1]["spent_usd"] == "1.40" and rows[3]["in_flight_usd"] == "0.60"
    text = report(keyed, by="key", fmt="table")
    studio = next(line for line in text.splitlines() if line.startswith("studio"))
    assert "$1.10" in studio and "$0.60" in studio
    assert "latest attempt" in text  # how jobs are counted is said under the table


def test_report_command_groups_by_key(keyed):
    result = invoke(keyed, "report", "--by", "key", "--format", "json")
    assert result.exit_code == 0, result.output
    assert [g["key"] for g in json.loads(result.output)["groups"]][-1] == "studio"


def test_per_job_report_gives_each_attempt_the_label_of_its_key(keyed):
    jobs = {j["id"]: j for j in report(keyed, per_job=True)["jobs"]}
    assert jobs["fast-10"]["attempts"][0]["key_label"] == "studio"
    assert jobs["grok-bad"]["attempts"][0]["key_label"] == "night"
    assert jobs["veo-done"]["attempts"][0]["key_label"] is None
    rows = list(csv.DictReader(io.StringIO(report(keyed, fmt="csv", per_job=True))))
    labels = {r["job_id"]: r["key_label"] for r in rows}
    assert (labels["poster"], labels["sd-run"], labels["veo-done"]) == ("night", "studio", "")


def test_table_report_shows_groups_totals_and_budget_use(audit):
    text = report(audit, by="model", fmt="table")
    assert "grok-video-3" in text and "TOTAL" in text and "$1.40" in text
    assert "c: $3.50 of $5.00 (70%)" in text  # spent 1.40 + in flight 0.60 + unknown 1.50


def test_table_per_job_lists_attempts(audit):
    text = report(audit, fmt="table", per_job=True)
    assert "c/grok-bad" in text and "task-c-grok-bad-0" in text and "NSFW" in text


def test_an_empty_ledger_reports_zero_totals(tmp_path):
    Ledger(tmp_path / "l.db").close()
    data = report(tmp_path / "l.db")
    assert data["groups"] == [] and data["totals"]["spent_usd"] == "0.00"
    assert data["totals"]["jobs"] == 0


def test_report_command_prints_csv_with_the_total_last(audit):
    result = invoke(audit, "report", "--by", "model", "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1].startswith("TOTAL,10,4,2,1,1.40,0.60,1.50,0.10,25,1")


def test_report_command_on_an_unknown_campaign_says_so(audit):
    result = invoke(audit, "report", "--campaign", "nope")
    assert result.exit_code == 1 and "no campaign named nope" in result.output


def test_report_command_without_a_ledger_fails_without_creating_one(tmp_path):
    result = invoke(tmp_path / "none.db", "report")
    assert result.exit_code == 1 and not (tmp_path / "none.db").exists()

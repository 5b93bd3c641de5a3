"""Review verdicts in the ledger (PRODUCT §12): recorded per result with their history,
shown by `status`, `report --by verdict` and `report --jobs`, and acted on by
`retry --rejected`, which keeps the rejected result, its files and its cost in the audit."""

from __future__ import annotations

import csv
import io
import json
import sqlite3

import pytest

from batchgen.download import file_name, file_path
from batchgen.ledger import Ledger, VerdictRefused
from batchgen.ledger.migrations import MIGRATIONS, migrate
from batchgen.status import format_status, status_data
from tests.builders import (
    CDN,
    complete,
    fail,
    grok,
    image,
    invoke,
    make_ledger,
    report,
    start,
    unknown,
)


@pytest.fixture
def reviewed(tmp_path):
    """good (approved), bad (rejected with a note), fresh (completed, unreviewed),
    later (running): grok at $0.10 each, an image at $0.20."""
    path = tmp_path / "l.db"
    ledger = make_ledger(path, [grok("good"), grok("bad"), image("fresh"), grok("later")])
    for job_id in ("good", "bad", "fresh"):
        complete(ledger, job_id)
    start(ledger, "later")
    ledger.file_saved("c", "bad", 0, f"{CDN}/bad.mp4", "out/c/bad.mp4", 10, "ab" * 32)
    ledger.record_verdict("c", "good", "task-c-good-0", "approved", None, "Ada")
    ledger.record_verdict("c", "bad", "task-c-bad-0", "approved", "first look", "Ada")
    ledger.record_verdict("c", "bad", "task-c-bad-0", "rejected", "  the cat has five legs ",
                          " Grace ")  # fmt: skip
    ledger.close()
    return path


def test_a_verdict_is_kept_with_its_history_and_the_latest_counts(reviewed):
    ledger = Ledger(reviewed, create=False)
    rows = ledger.query("SELECT job_id, task_id, verdict, note, at FROM verdicts ORDER BY id")
    assert [(r["job_id"], r["verdict"], r["note"]) for r in rows] == [
        ("good", "approved", None),
        ("bad", "approved", "first look"),
        ("bad", "rejected", "the cat has five legs"),
    ]
    assert all(r["at"].endswith("Z") for r in rows)
    assert ledger.verdict_counts() == {"approved": 1, "rejected": 1, "unreviewed": 1}


def test_each_verdict_records_who_gave_it_and_the_history_keeps_every_name(reviewed):
    ledger = Ledger(reviewed, create=False)
    rows = ledger.query("SELECT job_id, verdict, reviewer FROM verdicts ORDER BY id")
    assert [(r["job_id"], r["verdict"], r["reviewer"]) for r in rows] == [
        ("good", "approved", "Ada"),
        ("bad", "approved", "Ada"),
        ("bad", "rejected", "Grace"),  # the name as given, without its spaces
    ]
    assert ledger.reviewers() == ["Ada", "Grace"]
    [current] = ledger.query("SELECT reviewer FROM current_verdicts WHERE job_id = 'bad'")
    assert current["reviewer"] == "Grace"


@pytest.mark.parametrize(
    ("field", "value"),
    [("campaign", "c\ud800"), ("job_id", "\udfff"), ("task_id", "t\ud800"), ("note", "\ud800"),
     ("reviewer", "A\udc80")],
)  # fmt: skip
def test_text_that_is_not_valid_unicode_is_refused_not_a_crash(reviewed, field, value):
    ledger = Ledger(reviewed, create=False)
    given = {"campaign": "c", "job_id": "good", "task_id": "task-c-good-0", "verdict": "rejected",
             "note": None, "reviewer": "Ada", field: value}  # fmt: skip
    with pytest.raises(VerdictRefused) as refused:
        ledger.record_verdict(**given)
    assert refused.value.reason == "invalid" and "Unicode" in str(refused.value)


def test_report_by_reviewer_groups_sum_to_the_totals(reviewed):
    ledger = Ledger(reviewed, create=False)
    ledger.record_verdict("c", "fresh", "task-c-fresh-0", "approved", None)  # nobody named
    ledger.close()
    data = report(reviewed, by="reviewer")
    groups = {g["key"]: (g["jobs"], g["completed"], g["spent_usd"]) for g in data["groups"]}
    assert groups == {
        "(no result)": (1, 0, "0.00"),
        "(unnamed)": (1, 1, "0.20"),
        "Ada": (1, 1, "0.10"),
        "Grace": (1, 1, "0.10"),  # the reviewer of bad's current verdict, not the first
    }
    assert sum(g[0] for g in groups.values()) == data["totals"]["jobs"] == 4
    ledger = Ledger(reviewed, create=False)
    ledger.record_verdict("c", "good", "task-c-good-0", None, None, "Ada")  # withdrawn
    ledger.close()
    groups = {g["key"]: g["jobs"] for g in report(reviewed, by="reviewer")["groups"]}
    assert groups == {"(no result)": 1, "(unnamed)": 1, "(unreviewed)": 1, "Grace": 1}
    result = invoke(reviewed, "report", "--by", "reviewer")
    assert result.exit_code == 0 and "Grace" in result.output, result.output


def test_report_jobs_names_the_reviewer_of_each_jobs_verdict(reviewed):
    jobs = {j["id"]: j for j in report(reviewed, per_job=True)["jobs"]}
    assert {k: (j["verdict"], j["reviewer"]) for k, j in jobs.items()} == {
        "good": ("approved", "Ada"),
        "bad": ("rejected", "Grace"),
        "fresh": (None, None),
        "later": (None, None),
    }
    table = report(reviewed, per_job=True, fmt="table")
    assert "reviewer" in table and "Grace" in table


def test_export_lists_who_gave_each_exported_results_verdict(reviewed):
    ledger = Ledger.read_only(reviewed)
    [bad] = ledger.exported_files(None, approved_only=False)  # the one saved file
    assert (bad["job_id"], bad["verdict"], bad["reviewer"]) == ("bad", "rejected", "Grace")
    ledger.close()


def test_the_reviewers_migration_keeps_every_verdict_of_a_ledger_made_before_it(
    tmp_path, monkeypatch
):
    from batchgen.ledger import migrations
    from tests.old_ledgers import written_before

    path = tmp_path / "old.db"

    def write() -> None:  # as a batchgen before m011 would: no reviewer
        ledger = make_ledger(path, [grok("j")])
        complete(ledger, "j")
        ledger.record_verdict("c", "j", "task-c-j-0", "approved", "kept")
        ledger.close()

    written_before(migrations.m011_reviewers, path, monkeypatch, write)
    db = sqlite3.connect(path)
    assert "reviewer" not in {row[1] for row in db.execute("PRAGMA table_info(verdicts)")}
    db.close()
    # Read without migrating (reading commands never write): given by nobody named.
    reader = Ledger.read_only(path)
    assert not reader._verdicts_name_reviewers
    assert [g["key"] for g in reader.report_groups(None, "reviewer")] == ["(unnamed)"]
    assert [j["job_reviewer"] for j in reader.job_attempts()] == [None]
    reader.close()
    ledger = Ledger(path, create=False)  # opening to write migrates
    rows = ledger.query("SELECT verdict, note, reviewer FROM current_verdicts")
    assert rows == [{"verdict": "approved", "note": "kept", "reviewer": None}]
    ledger.record_verdict("c", "j", "task-c-j-0", "rejected", None, "Ada")
    history = ledger.query("SELECT verdict, reviewer FROM verdicts ORDER BY id")
    assert [(r["verdict"], r["reviewer"]) for r in history] == [
        ("approved", None), ("rejected", "Ada")
    ]  # fmt: skip
    ledger.close()


def test_a_verdict_can_be_withdrawn(reviewed):
    ledger = Ledger(reviewed, create=False)
    ledger.record_verdict("c", "good", "task-c-good-0", None, None)
    assert ledger.verdict_counts() == {"approved": 0, "rejected": 1, "unreviewed": 2}


@pytest.mark.parametrize(
    ("job_id", "task_id", "verdict", "note", "reason"),
    [
        ("nope", "t", "approved", None, "unknown"),
        ("later", "task-c-later-0", "approved", None, "stale"),  # not completed
        ("good", "task-of-an-older-result", "rejected", None, "stale"),
        ("good", "task-c-good-0", "maybe", None, "invalid"),
        ("good", "task-c-good-0", "rejected", "x" * 2001, "invalid"),
    ],
)
def test_a_verdict_on_anything_but_a_jobs_current_result_is_refused(
    reviewed, job_id, task_id, verdict, note, reason
):
    ledger = Ledger(reviewed, create=False)
    before = ledger.query("SELECT COUNT(*) AS n FROM verdicts")[0]["n"]
    with pytest.raises(VerdictRefused) as refused:
        ledger.record_verdict("c", job_id, task_id, verdict, note)
    assert refused.value.reason == reason
    assert ledger.query("SELECT COUNT(*) AS n FROM verdicts")[0]["n"] == before


def test_status_shows_each_jobs_verdict_and_the_counts(reviewed):
    ledger = Ledger(reviewed, create=False)
    data = status_data(ledger, [])
    assert {j["id"]: j["verdict"] for j in data["jobs"]} == {
        "good": "approved",
        "bad": "rejected",
        "fresh": None,
        "later": None,
    }
    assert data["verdicts"] == {"approved": 1, "rejected": 1, "unreviewed": 1}
    text = format_status(ledger, status_data(ledger, [], jobs=False), [])
    assert "review: 1 approved, 1 rejected, 1 not yet reviewed" in text
    assert "`batchgen retry --rejected`" in text and "`batchgen review`" in text


def test_report_by_verdict_groups_sum_to_the_totals(reviewed):
    data = report(reviewed, by="verdict")
    groups = {g["key"]: g for g in data["groups"]}
    assert {
        k: (g["jobs"], g["completed"], g["spent_usd"], g["in_flight_usd"])
        for k, g in groups.items()
    } == {  # fmt: skip
        "(no result)": (1, 0, "0.00", "0.10"),
        "approved": (1, 1, "0.10", "0.00"),
        "rejected": (1, 1, "0.10", "0.00"),
        "unreviewed": (1, 1, "0.20", "0.00"),
    }
    assert sum(g["jobs"] for g in groups.values()) == data["totals"]["jobs"] == 4
    text = report(reviewed, by="verdict", fmt="table")
    assert "rejected" in text and "unreviewed" in text


def test_report_jobs_has_the_verdict_and_note_of_each_job_and_attempt(reviewed):
    jobs = {j["id"]: j for j in report(reviewed, per_job=True)["jobs"]}
    assert (jobs["bad"]["verdict"], jobs["bad"]["note"]) == ("rejected", "the cat has five legs")
    assert jobs["bad"]["attempts"][0]["verdict"] == "rejected"
    assert jobs["fresh"]["verdict"] is None and jobs["later"]["attempts"][0]["verdict"] is None
    rows = list(csv.DictReader(io.StringIO(report(reviewed, fmt="csv", per_job=True))))
    # one row per attempt: its verdict is the one on the result it made
    [bad] = [r for r in rows if r["job_id"] == "bad"]
    assert (bad["state"], bad["verdict"]) == ("completed", "rejected")
    assert (bad["verdict"], bad["note"]) == ("rejected", "the cat has five legs")
    assert jobs["bad"]["attempts"][0]["note"] == "the cat has five legs"


def test_retry_rejected_requeues_only_rejected_results_and_keeps_the_old_one_in_the_audit(
    reviewed,
):
    result = invoke(reviewed, "retry", "--rejected")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("1 job(s) queued again")

    ledger = Ledger(reviewed, create=False)
    jobs = {j["id"]: j for j in status_data(ledger, [])["jobs"]}
    assert {k: j["status"] for k, j in jobs.items()} == {
        "good": "completed",
        "bad": "queued",
        "fresh": "completed",
        "later": "running",
    }
    bad = jobs["bad"]
    assert (bad["attempts"], bad["task_id"], bad["result_urls"], bad["files"]) == (0, None, [], [])
    assert bad["cost_usd"] == "0.10"  # what it cost stays
    [event] = ledger.query("SELECT detail FROM events WHERE kind = 'requeued'")
    detail = json.loads(event["detail"])
    assert detail["task_id"] == "task-c-bad-0" and detail["note"] == "the cat has five legs"
    assert detail["result_urls"] == [f"{CDN}/bad.mp4"]
    assert detail["files"][0]["path"] == "out/c/bad.mp4"
    # the rejected attempt keeps its cost and its verdict in the report
    [attempt] = {j["id"]: j for j in report(reviewed, per_job=True)["jobs"]}["bad"]["attempts"]
    assert (attempt["state"], attempt["cost_usd"], attempt["verdict"]) == (
        "completed",
        "0.10",
        "rejected",
    )
    assert report(reviewed)["totals"]["spent_usd"] == "0.40"
    again = invoke(reviewed, "retry", "--rejected")
    assert again.output.startswith("0 job(s) queued again")


def test_a_job_generated_again_is_unreviewed_and_saved_beside_its_rejected_result(reviewed):
    assert invoke(reviewed, "retry", "--rejected").exit_code == 0
    ledger = Ledger(reviewed, create=False)
    job = start(ledger, "bad", task="task-c-bad-second")
    ledger.task_completed(job, [f"{CDN}/bad-2.mp4"])
    assert {j["id"]: j["verdict"] for j in status_data(ledger, [])["jobs"]}["bad"] is None
    assert ledger.verdict_counts() == {"approved": 1, "rejected": 0, "unreviewed": 2}
    [row] = ledger.result_files(job=("c", "bad"))
    assert row["result"] == 2
    path = file_path("out", "c", file_name("bad", row["n"], row["url"], result=row["result"]))
    assert str(path) == "out/c/bad~2.mp4"
    assert report(reviewed)["totals"]["spent_usd"] == "0.50"  # both results paid for


def test_retry_takes_either_unknown_or_rejected_not_both(reviewed):
    result = invoke(reviewed, "retry", "--unknown", "--rejected")
    assert result.exit_code == 2


def test_the_verdicts_migration_applies_to_a_ledger_made_before_it(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    MIGRATIONS[0](db)  # only m001: a ledger from before the review
    db.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    db.execute("INSERT INTO _migrations VALUES ('m001_initial', 'then')")
    assert "m004_verdicts" in migrate(db)
    assert db.execute("SELECT COUNT(*) FROM current_verdicts").fetchone() == (0,)
    db.close()


# ---------------------------------------------------------------- retry --job: one job again


def statuses(path) -> dict[str, str]:
    ledger = Ledger.read_only(path)
    try:
        return {f"{j['campaign']}/{j['id']}": j["status"] for j in status_data(ledger, [])["jobs"]}
    finally:
        ledger.close()


def test_retry_job_rerolls_a_completed_job_and_keeps_its_result_and_cost_in_the_audit(reviewed):
    result = invoke(reviewed, "retry", "--job", "fresh", "--job", "good")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("2 job(s) queued again (c/fresh, c/good)")
    assert statuses(reviewed) == {
        "c/good": "queued", "c/bad": "completed", "c/fresh": "queued", "c/later": "running"
    }  # fmt: skip
    ledger = Ledger(reviewed, create=False)
    jobs = {j["id"]: j for j in status_data(ledger, [])["jobs"]}
    fresh = jobs["fresh"]
    assert (fresh["attempts"], fresh["task_id"], fresh["result_urls"]) == (0, None, [])
    assert fresh["cost_usd"] == "0.20"  # what it cost stays
    details = {
        e["job_id"]: json.loads(e["detail"])
        for e in ledger.query("SELECT job_id, detail FROM events WHERE kind = 'requeued'")
    }
    assert (
        details["fresh"]["task_id"] == "task-c-fresh-0" and details["fresh"]["from"] == "completed"
    )
    assert details["good"]["verdict"] == "approved"  # a re-roll whatever the verdict
    assert report(reviewed)["totals"]["spent_usd"] == "0.40"  # every result still paid for


def test_retry_job_requeues_a_failed_and_a_held_job(tmp_path):
    path = tmp_path / "l.db"
    ledger = make_ledger(path, [grok("broken"), grok("unsure"), grok("other")])
    fail(ledger, "broken")
    unknown(ledger, "unsure")
    fail(ledger, "other")
    ledger.close()
    result = invoke(path, "retry", "--job", "broken", "--job", "unsure")
    assert result.exit_code == 0, result.output
    assert statuses(path) == {"c/broken": "queued", "c/unsure": "queued", "c/other": "failed"}


@pytest.mark.parametrize(
    ("job_id", "said"),
    [
        ("later", "job c/later is running: retry it once it has ended"),
        ("nope", "no job 'nope'"),
    ],
)
def test_retry_job_refuses_a_job_being_run_or_unknown_and_changes_nothing(reviewed, job_id, said):
    before = statuses(reviewed)
    result = invoke(reviewed, "retry", "--job", "fresh", "--job", job_id)
    assert result.exit_code == 1
    assert said in result.output and "nothing was queued again" in result.output
    assert statuses(reviewed) == before  # all or nothing: fresh was not requeued either


def test_retry_job_refuses_a_queued_job_saying_resume_runs_it(tmp_path):
    path = tmp_path / "l.db"
    make_ledger(path, [grok("waiting")]).close()
    result = invoke(path, "retry", "--job", "waiting")
    assert result.exit_code == 1
    assert "job c/waiting is queued already: `batchgen resume` runs it" in result.output


def test_an_id_in_several_campaigns_needs_campaign_and_the_error_lists_them(tmp_path):
    path = tmp_path / "l.db"
    for campaign in ("spring", "autumn"):
        ledger = make_ledger(path, [grok("hero")], campaign=campaign)
        fail(ledger, "hero", campaign)
        ledger.close()
    result = invoke(path, "retry", "--job", "hero")
    assert result.exit_code == 1
    assert "job 'hero' is in several campaigns (autumn, spring): say which with --campaign" in (
        result.output
    )
    result = invoke(path, "retry", "--job", "hero", "--campaign", "spring")
    assert result.exit_code == 0, result.output
    assert statuses(path) == {"autumn/hero": "failed", "spring/hero": "queued"}


def test_retry_job_goes_with_no_other_choice_of_jobs(reviewed):
    for other in ("--unknown", "--rejected"):
        result = invoke(reviewed, "retry", "--job", "fresh", other)
        assert result.exit_code == 2 and "cannot be used together" in result.output


def test_a_rerolled_job_is_generated_again_and_saved_beside_its_first_result(
    make_sandbox, tmp_path
):
    from tests.e2e import FAST, grok_batch, on_sandbox, status_json

    sandbox = make_sandbox(time_scale=0.01)
    ledger, out = tmp_path / "l.db", tmp_path / "out"
    manifest = grok_batch(tmp_path / "m.yaml", 2)
    first = on_sandbox(sandbox, "run", str(manifest), *FAST, "--download", str(out), ledger=ledger)
    assert first.returncode == 0, first.stderr
    again = on_sandbox(sandbox, "retry", "--job", "clip-1", ledger=ledger)
    assert again.returncode == 0, again.stderr
    resumed = on_sandbox(sandbox, "resume", *FAST, "--download", str(out), ledger=ledger)
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(p.name for p in (out / "e2e").iterdir()) == [
        "clip-1.mp4", "clip-1~2.mp4", "clip-2.mp4"
    ]  # fmt: skip
    assert len(sandbox.sim.truth().submissions) == 3
    assert status_json(ledger)["spent_usd"] == "0.30"  # both results of clip-1 paid for

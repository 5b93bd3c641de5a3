"""Several API keys, the read side (PRODUCT.md §6, §7): m007 keeps each key's tasks in
flight and money (`key_totals`, by triggers, like m006's totals), a view in dollars per
key for people, and the ledger's reads of them: each key's use, and each job's key.

The scheduler records the label of each attempt's key when the attempt begins; these
tests write it with SQL, as it lands in the ledger.
"""

from __future__ import annotations

import json
import sqlite3
from decimal import Decimal
from pathlib import Path

from batchgen.job import Campaign
from batchgen.ledger import Ledger, migrations
from batchgen.ledger.reads import NO_KEY, UNLABELLED
from tests.builders import (
    complete,
    every_kind_of_job,
    fail,
    grok,
    invoke,
    kept_totals,
    make_ledger,
    recomputed_totals,
    report,
    sent_with,
    start,
    unfinished,
    unknown,
)
from tests.e2e import rows
from tests.old_ledgers import written_before


def two_keys(path: Path | str) -> Ledger:
    """Jobs sent with the keys `studio` and `night`, one before labels, one never sent:

    old    completed before labels (NULL)      spent 0.10
    s1     completed with studio               spent 0.10
    n1     running with night                  in flight 0.10
    moved  task failed on night (refunded 0.10), then completed with studio (spent 0.10)
    lost   unknown outcome with night, held    unknown 0.10
    slot   a 429 on night (not sent), queued
    fresh  never sent, queued
    """
    ledger = make_ledger(
        path, [grok(i) for i in ("old", "s1", "n1", "moved", "lost", "slot", "fresh")]
    )
    complete(ledger, "old")
    complete(ledger, "s1")
    sent_with(ledger, "s1", "studio")
    start(ledger, "n1")
    sent_with(ledger, "n1", "night")
    fail(ledger, "moved", then="queued")
    sent_with(ledger, "moved", "night")
    complete(ledger, "moved")
    sent_with(ledger, "moved", "studio")
    unknown(ledger, "lost")
    sent_with(ledger, "lost", "night")
    job = next(j for j in ledger.unfinished_jobs(["c"]) if j.id == "slot")
    attempt = ledger.begin_attempt(job)
    sent_with(ledger, "slot", "night")
    ledger.attempt_ended(
        job, attempt, state="not_sent", outcome="slot taken", counted=False,
        job_status="queued", http_status=429,
    )  # fmt: skip
    return ledger


# ---------------------------------------------------------------- m007 on a ledger written before

# Ledgers written before m007 and m009 are SQLite files (PostgreSQL came later): their
# migrations are SQLite's alone.


def test_m007_adds_up_an_old_ledgers_attempts_as_sent_with_one_unlabelled_key(
    tmp_path, monkeypatch
):
    path = tmp_path / "old.db"
    # Written by today's code, then m007 taken back out: no key_label column, no labels.
    written_before(
        migrations.m007_key_labels, path, monkeypatch, lambda: every_kind_of_job(path).close()
    )
    before = rows(path, "SELECT * FROM attempts ORDER BY id")

    Ledger(path).close()  # opening for writing migrates

    after = rows(path, "SELECT * FROM attempts ORDER BY id")
    added = ("key_label", "runner_id")  # by m007 and m010
    assert [{k: v for k, v in a.items() if k not in added} for a in after] == before
    assert {a["key_label"] for a in after} == {None}
    assert kept_totals(path) == recomputed_totals(path)
    keys = kept_totals(path)[2]
    assert {label for _, label, _ in keys} == {None} and len(keys) >= 6
    money = json.loads(invoke(path, "status", "--json").output)
    assert money["keys"] == [
        {"label": None, "in_flight": 2, "spent_usd": money["spent_usd"], "refusals": 0}
    ]


READING_COMMANDS = (
    ("status", "--json"),
    ("status",),
    ("report", "--by", "key", "--format", "csv"),
    ("report", "--jobs", "--format", "csv"),
)


def test_a_reading_command_on_a_ledger_before_m007_answers_the_same_without_writing(
    tmp_path, monkeypatch
):
    path = tmp_path / "old.db"
    written_before(
        migrations.m007_key_labels, path, monkeypatch, lambda: every_kind_of_job(path).close()
    )
    answers = [invoke(path, *args).output for args in READING_COMMANDS]
    applied = {r["name"] for r in rows(path, "SELECT name FROM _migrations")}
    assert "m007_key_labels" not in applied  # never migrated by a reading command
    status = json.loads(answers[0])
    assert [k["label"] for k in status["keys"]] == [None]
    assert {j["key"] for j in status["jobs"]} == {None}
    assert f"{UNLABELLED}," in answers[2] and f"{NO_KEY}," in answers[2]

    Ledger(path).close()
    again = [invoke(path, *args).output for args in READING_COMMANDS]
    assert again == answers


# ---------------------------------------------------------------- each key's use, each job's key


def test_each_key_has_its_tasks_in_flight_and_the_money_of_the_attempts_sent_with_it(ledger_at):
    ledger = two_keys(ledger_at)
    use = {key.label: key for key in ledger.key_use()}
    ledger.close()
    assert list(use) == ["night", "studio", None]  # by label, the unlabelled last
    night, studio, old = use["night"], use["studio"], use[None]
    assert (night.in_flight, studio.in_flight, old.in_flight) == (1, 0, 0)
    assert (night.money.spent, night.money.in_flight) == (0, 100_000)
    assert (night.money.unknown, night.money.refunded) == (100_000, 100_000)
    assert (studio.money.spent, old.money.spent) == (200_000, 100_000)


def test_a_campaign_scope_counts_only_its_own_attempts(ledger_at):
    ledger = two_keys(ledger_at)
    ledger.ingest(Campaign("d", "d.yaml", "sha", None), [grok("d1")])
    complete(ledger, "d1", campaign="d")
    sent_with(ledger, "d1", "dawn", campaign="d")
    assert [k.label for k in ledger.key_use(["d"])] == ["dawn"]
    assert [k.label for k in ledger.key_use(["c"])] == ["night", "studio", None]
    assert [k.label for k in ledger.key_use()] == ["dawn", "night", "studio", None]
    ledger.close()


def test_a_jobs_key_is_its_latest_attempts_and_a_request_not_sent_is_no_attempt(ledger_at):
    path = ledger_at
    two_keys(path).close()
    keys = {j["id"]: j["key"] for j in json.loads(invoke(path, "status", "--json").output)["jobs"]}
    assert keys == {
        "old": None,  # sent before labels were kept
        "s1": "studio",
        "n1": "night",
        "moved": "studio",  # its failed task was night's; its current task studio's
        "lost": "night",
        "slot": None,  # a 429 is not an attempt: it was never sent with a key
        "fresh": None,
    }


def test_status_json_keys_add_up_to_the_spend_and_the_tasks_running(ledger_at):
    path = ledger_at
    two_keys(path).close()
    status = json.loads(invoke(path, "status", "--json").output)
    assert status["keys"] == [
        {"label": "night", "in_flight": 1, "spent_usd": "0.00", "refusals": 0},
        {"label": "studio", "in_flight": 0, "spent_usd": "0.20", "refusals": 0},
        {"label": None, "in_flight": 0, "spent_usd": "0.10", "refusals": 0},
    ]
    assert sum(Decimal(k["spent_usd"]) for k in status["keys"]) == Decimal(status["spent_usd"])
    assert sum(k["in_flight"] for k in status["keys"]) == status["counts"]["running"]


# ---------------------------------------------------------------- key_costs, for people


def test_key_costs_gives_each_keys_money_as_report_by_key_does(ledger_at):
    path = ledger_at
    two_keys(path).close()
    view = {r["key_label"]: r for r in rows(path, "SELECT * FROM key_costs")}
    groups = {g["key"]: g for g in report(path, "key")["groups"]}
    assert set(view) == {"night", "studio", None}
    for label_, group in ((k, groups[k or UNLABELLED]) for k in view):
        for column in ("spent_usd", "in_flight_usd", "unknown_usd", "refunded_usd"):
            assert Decimal(str(view[label_][column])).quantize(Decimal("0.01")) == Decimal(
                group[column]
            ), (label_, column)
    assert (view["night"]["attempts"], view["night"]["in_flight"]) == (4, 1)
    assert (view["studio"]["attempts"], view["studio"]["in_flight"]) == (2, 0)


def test_key_costs_is_per_campaign_and_key(ledger_at):
    path = ledger_at
    ledger = two_keys(path)
    ledger.ingest(Campaign("d", "d.yaml", "sha", None), [grok("d1")])
    complete(ledger, "d1", campaign="d")
    sent_with(ledger, "d1", "studio", campaign="d")
    ledger.close()
    found = [(r["campaign"], r["key_label"]) for r in rows(path, "SELECT * FROM key_costs")]
    assert found == [("c", None), ("c", "night"), ("c", "studio"), ("d", "studio")]
    (spent,) = rows(
        path, "SELECT sum(spent_usd) AS spent FROM key_costs WHERE key_label = 'studio'"
    )
    assert round(spent["spent"], 6) == 0.30


# ---------------------------------------------------------------- m009: refusals per key


def refused_on_each_key(path: Path | str) -> Ledger:
    """`two_keys`, and two refusals for content reasons (PRODUCT §2): a 400 on night, a
    task failed for its output on studio (refunded, as every failed task)."""
    ledger = two_keys(path)
    ledger.ingest(Campaign("c", "c.yaml", "sha", None), [grok("said-no"), grok("made-no")])
    job = unfinished(ledger, "said-no")
    attempt = ledger.begin_attempt(job, "night")
    ledger.attempt_ended(
        job, attempt, state="rejected", outcome="refused", counted=True, job_status="failed",
        http_status=400, error="SAFETY.INPUT.TEXT", reason="refused",
    )  # fmt: skip
    job = unfinished(ledger, "made-no")
    attempt = ledger.begin_attempt(job, "studio")
    ledger.attempt_created(job, attempt, 200, "task-made-no")
    ledger.task_failed(job, "SAFETY.OUTPUT.VIDEO", "failed", refused=True)
    return ledger


def test_a_refusal_fails_its_job_with_reason_refused_and_costs_what_a_failed_task_costs(
    ledger_at,
):
    path = ledger_at
    refused_on_each_key(path).close()
    jobs = {
        r["id"]: r
        for r in rows(path, "SELECT id, status, reason, last_error FROM jobs WHERE id LIKE '%-no'")
    }
    assert {j: (r["status"], r["reason"]) for j, r in jobs.items()} == {
        "said-no": ("failed", "refused"),
        "made-no": ("failed", "refused"),
    }
    assert jobs["made-no"]["last_error"] == "task refused: SAFETY.OUTPUT.VIDEO"
    attempts = rows(
        path,
        "SELECT job_id, state, outcome, cost_micro_usd, refunded_micro_usd FROM attempts"
        " WHERE job_id LIKE '%-no' ORDER BY job_id",
    )
    assert attempts == [
        {"job_id": "made-no", "state": "failed", "outcome": "refused", "cost_micro_usd": 0,
         "refunded_micro_usd": 100_000},  # the catalog: failed tasks are refunded
        {"job_id": "said-no", "state": "rejected", "outcome": "refused", "cost_micro_usd": 0,
         "refunded_micro_usd": 0},
    ]  # fmt: skip
    assert kept_totals(path) == recomputed_totals(path)


def test_refusals_are_counted_per_key_in_status_report_and_key_costs(ledger_at):
    path = ledger_at
    refused_on_each_key(path).close()
    status = json.loads(invoke(path, "status", "--json").output)
    assert {k["label"]: k["refusals"] for k in status["keys"]} == {
        "night": 1,
        "studio": 1,
        None: 0,
    }
    human = invoke(path, "status").output
    assert "1 refused for content reasons" in human
    assert "2 refusal(s) for content reasons" in human  # and what to do about them
    by_key = report(path, "key")
    assert by_key["refusals"] == {"night": 1, "studio": 1, UNLABELLED: 0, NO_KEY: 0}
    assert set(by_key["groups"][0]) == set(by_key["totals"])  # the ROW of §7, unchanged
    assert "refusals" not in report(path, "model")
    table = invoke(path, "report", "--by", "key").output
    header = next(line for line in table.splitlines() if "refused" in line)
    total = next(line for line in table.splitlines() if "TOTAL" in line)
    assert total.split()[header.split().index("refused")] == "2"
    csv_header = invoke(path, "report", "--by", "key", "--format", "csv").output.splitlines()[0]
    assert "refus" not in csv_header  # CSV has exactly the ROW's columns (§7)
    view = {r["key_label"]: r["refusals"] for r in rows(path, "SELECT * FROM key_costs")}
    assert view == {"night": 1, "studio": 1, None: 0}


def test_m009_counts_the_refusals_an_old_ledger_holds_and_follows_outcomes_after(
    tmp_path, monkeypatch
):
    """SQLite's alone, as m007's above: a ledger from before m009 is a SQLite file."""
    path = tmp_path / "old.db"
    written_before(migrations.m009_refusals, path, monkeypatch, lambda: two_keys(path).close())
    db = sqlite3.connect(path)
    with db:  # a refusal m007's triggers do not see: m009 must count it from the rows
        db.execute("UPDATE attempts SET outcome = 'refused' WHERE state = 'failed'")
    db.close()
    status = json.loads(invoke(path, "status", "--json").output)
    assert "m009_refusals" not in {r["name"] for r in rows(path, "SELECT name FROM _migrations")}
    assert {k["label"]: k["refusals"] for k in status["keys"]}["night"] == 0  # none before m009

    Ledger(path).close()  # opening for writing migrates
    assert kept_totals(path) == recomputed_totals(path)
    status = json.loads(invoke(path, "status", "--json").output)
    assert {k["label"]: k["refusals"] for k in status["keys"]} == {
        "night": 1,
        "studio": 0,
        None: 0,
    }
    db = sqlite3.connect(path)
    with db:  # the triggers follow a change of outcome now
        db.execute("UPDATE attempts SET outcome = 'refused' WHERE state = 'unknown'")
    db.close()
    assert kept_totals(path) == recomputed_totals(path)

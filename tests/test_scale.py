"""A year of campaigns in one ledger (issue 17): what makes `status` answer at once on a
million jobs must not change a single answer.

- `status --json` streams its jobs from SQLite; its output is byte for byte what
  `json.dumps` of the same object, built the plain way, prints (odd text included);
- the money and review totals that m006 keeps by triggers always equal the sums over the
  rows, whatever writes them (the scheduler's writes, retries, review verdicts, a person
  editing the ledger with SQL), and m006 brings an old ledger's totals up to date;
- job counts from the index and the table's total equal a plain GROUP BY;
- a reading command on a ledger not yet migrated answers the same without writing.
"""

from __future__ import annotations

import csv
import io
import json
import random
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchgen.job import Campaign
from batchgen.ledger import Ledger, migrations
from batchgen.ledger.reads import usd_sql
from batchgen.money import usd
from batchgen.status import status_data
from tests.builders import (
    CDN,
    ODD,
    complete,
    every_kind_of_job,
    fail,
    grok,
    image,
    invoke,
    kept_totals,
    make_ledger,
    recomputed_totals,
    rejected,
    start,
    unknown,
)
from tests.e2e import command_env
from tests.old_ledgers import written_before

# ---------------------------------------------------------------- the plain way, for reference


def plain_status(path: Path, campaigns: list[str] | None = None) -> dict[str, Any]:
    """The `status --json` object built the obvious way: every row read into Python."""
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    names = campaigns or [r[0] for r in db.execute("SELECT name FROM campaigns ORDER BY name")]
    marks = ", ".join("?" * len(names))
    jobs = db.execute(
        f"SELECT * FROM jobs WHERE campaign IN ({marks}) ORDER BY campaign, position", names
    ).fetchall()
    attempts = db.execute(f"SELECT * FROM attempts WHERE campaign IN ({marks})", names).fetchall()
    counts = dict.fromkeys(migrations.JOB_STATUSES, 0)
    columns = {row[1] for row in db.execute("PRAGMA table_info(files)")}
    provenance = "provenance" if "provenance" in columns else "NULL"  # m012
    entries = []
    verdicts = {"approved": 0, "rejected": 0, "unreviewed": 0}
    for job in jobs:
        counts[job["status"]] += 1
        files = db.execute(
            f"SELECT path, {provenance} FROM files WHERE campaign = ? AND job_id = ?"
            " AND error IS NULL AND downloaded_at IS NOT NULL ORDER BY n",
            (job["campaign"], job["id"]),
        ).fetchall()
        verdict = None
        if job["status"] == "completed":
            latest = db.execute(
                "SELECT verdict FROM verdicts WHERE campaign = ? AND job_id = ? AND task_id = ?"
                " ORDER BY id DESC LIMIT 1",
                (job["campaign"], job["id"], job["task_id"]),
            ).fetchone()
            verdict = latest[0] if latest else None
            verdicts[verdict or "unreviewed"] += 1
        sent = [
            a
            for a in attempts
            if (a["campaign"], a["job_id"]) == (job["campaign"], job["id"])
            and a["state"] != "not_sent"
        ]
        entries.append(
            {
                "campaign": job["campaign"],
                "id": job["id"],
                "status": job["status"],
                "model": job["model"],
                "attempts": job["attempts"],
                "task_id": job["task_id"],
                "key": label_of(max(sent, key=lambda a: a["id"])) if sent else None,
                "cost_usd": usd(job["cost_micro_usd"]),
                "result_urls": json.loads(job["result_urls"] or "[]"),
                "files": [f[0] for f in files],
                "provenance": [json.loads(f[1]) if f[1] else None for f in files],
                "verdict": verdict,
                "error": job["last_error"],
            }
        )
    money = plain_money(attempts)
    budgets = [
        r[0]
        for r in db.execute(
            f"SELECT budget_micro_usd FROM campaigns WHERE name IN ({marks})", names
        )
        if r[0] is not None
    ]
    # These ledgers are built with no runner at work: none is listed (an older ledger has
    # no `runners` table at all).
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "runners" not in tables or not db.execute("SELECT 1 FROM runners").fetchall()
    db.close()
    return {
        "counts": counts,
        "spent_usd": usd(money["spent"]),
        "in_flight_usd": usd(money["in_flight"]),
        "unknown_usd": usd(money["unknown"]),
        "budget_usd": usd(sum(budgets)) if budgets else None,
        "keys": plain_keys(attempts),
        "runners": [],
        "verdicts": verdicts,
        "jobs": entries,
    }


def plain_money(attempts: list[sqlite3.Row]) -> dict[str, int]:
    """The money rules of migrations.py, attempt by attempt, in Python."""
    money = dict.fromkeys(("spent", "in_flight", "unknown", "refunded"), 0)
    for a in attempts:
        if a["state"] in ("completed", "failed"):
            money["spent"] += a["cost_micro_usd"]
        elif a["state"] == "running":
            money["in_flight"] += a["cost_micro_usd"]
        elif a["state"] in ("unknown", "sending"):
            money["unknown"] += a["unit_price_micro_usd"]
        money["refunded"] += a["refunded_micro_usd"]
    return money


def label_of(attempt: sqlite3.Row) -> str | None:
    """The label of the key an attempt was sent with (None before m007 kept them)."""
    return attempt["key_label"] if "key_label" in attempt.keys() else None


def plain_keys(attempts: list[sqlite3.Row]) -> list[dict[str, Any]]:
    """Each key's `status --json` entry, attempt by attempt: by label, unlabelled last."""
    labels = {label_of(a) for a in attempts}
    keys = []
    for label in sorted(labels, key=lambda name: (name is None, name or "")):
        mine = [a for a in attempts if label_of(a) == label]
        keys.append(
            {
                "label": label,
                "in_flight": sum(a["state"] == "running" for a in mine),
                "spent_usd": usd(plain_money(mine)["spent"]),
                "refusals": sum(a["outcome"] == "refused" for a in mine),
            }
        )
    return keys


def status_json_command(path: Path, *args: str) -> str:
    result = invoke(path, "status", "--json", *args)
    assert result.exit_code == 0, result.output
    return result.output


# ---------------------------------------------------------------- status --json, streamed


def test_status_json_is_byte_for_byte_what_json_dumps_of_the_plain_object_prints(tmp_path):
    path = tmp_path / "l.db"
    every_kind_of_job(path).close()
    expected = plain_status(path)
    assert {j["status"] for j in expected["jobs"]} == set(migrations.JOB_STATUSES)
    assert expected["verdicts"] == {"approved": 1, "rejected": 1, "unreviewed": 4}
    assert [k["label"] for k in expected["keys"]] == ["night", "studio", None]
    assert {j["key"] for j in expected["jobs"]} == {"night", "studio", None}
    assert status_json_command(path) == json.dumps(expected, ensure_ascii=False) + "\n"
    for scope in (["c"], ["b-second"]):
        text = status_json_command(path, *(a for c in scope for a in ("--campaign", c)))
        assert text == json.dumps(plain_status(path, scope), ensure_ascii=False) + "\n"


def test_status_json_of_an_empty_campaign_and_of_one_job(tmp_path):
    path = tmp_path / "l.db"
    ledger = make_ledger(path, [grok("only")])
    ledger.ingest(Campaign("empty", "e.yaml", "sha", None), [])
    ledger.close()
    for scope in ([], ["empty"], ["c"]):
        args = [a for c in scope for a in ("--campaign", c)]
        text = status_json_command(path, *args)
        assert text == json.dumps(plain_status(path, scope or None), ensure_ascii=False) + "\n"
    assert json.loads(status_json_command(path, "--campaign", "empty"))["jobs"] == []


def test_status_json_written_in_many_pieces_is_one_object(tmp_path, monkeypatch):
    from batchgen import status

    path = tmp_path / "l.db"
    make_ledger(path, [grok(f"j{i}") for i in range(7)]).close()
    monkeypatch.setattr(status, "WRITE_EVERY", 2)
    pieces: list[str] = []
    ledger = Ledger.read_only(path)
    status.write_json(ledger, [], pieces.append)
    ledger.close()
    assert len(pieces) > 3
    assert "".join(pieces) == json.dumps(plain_status(path), ensure_ascii=False)


def test_status_json_read_by_a_reader_that_stops_early_ends_quietly(tmp_path):
    path = tmp_path / "l.db"
    make_ledger(path, [grok(f"clip-{i:05d} {ODD}") for i in range(3000)]).close()
    reader = subprocess.Popen(
        [sys.executable, "-m", "batchgen", "status", "--json"],
        env=command_env(path, None, None),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert reader.stdout is not None and reader.stderr is not None
    reader.stdout.read(100)
    reader.stdout.close()  # like `| head -c 100`
    err = reader.stderr.read().decode()
    assert reader.wait(timeout=60) == 0, err
    assert "Traceback" not in err and err == ""


@given(st.integers(min_value=-(10**13), max_value=10**13))
def test_money_spelled_in_sql_is_money_usd(micros):
    db = sqlite3.connect(":memory:")
    assert db.execute(f"SELECT {usd_sql('?')}".replace("?", str(micros))).fetchone()[0] == usd(
        micros
    )


# ---------------------------------------------------------------- totals kept by triggers


def test_the_totals_equal_the_sums_over_the_rows_after_every_kind_of_write(tmp_path):
    path = tmp_path / "l.db"
    ledger = every_kind_of_job(path)
    assert kept_totals(path) == recomputed_totals(path)
    ledger.requeue(["c"], "failed")
    ledger.requeue(["c"], "held")
    ledger.task_failed(start(ledger, "bad"), "SAFETY.OUTPUT", "failed", refused=True)
    job = start(ledger, "held")
    ledger.task_lost(job, "no answer")
    ledger.task_taken_back(job)
    ledger.task_completed(job, [f"{CDN}/held.mp4"])
    ledger.record_verdict("c", "held", job.task_id or "", "approved", "fine")
    ledger.close()
    assert kept_totals(path) == recomputed_totals(path)
    attempts, verdicts, keys = kept_totals(path)
    assert verdicts[("c", "approved")] == 2 and verdicts[("c", "rejected")] == 1
    assert {label for _, label, _ in keys} == {"studio", "night", None}


def test_a_person_editing_the_ledger_with_sql_keeps_the_totals_right(tmp_path):
    path = tmp_path / "l.db"
    every_kind_of_job(path).close()
    db = sqlite3.connect(path)
    with db:
        db.execute(
            "UPDATE attempts SET cost_micro_usd = cost_micro_usd + 7 WHERE state = 'completed'"
        )
        db.execute(
            "UPDATE attempts SET state = 'failed' WHERE state = 'running' AND campaign = 'c'"
        )
        db.execute("UPDATE attempts SET outcome = 'refused' WHERE state IN ('failed', 'running')")
        db.execute("DELETE FROM attempts WHERE state = 'rejected'")
        db.execute("UPDATE verdicts SET verdict = 'approved' WHERE verdict = 'rejected'")
        db.execute("DELETE FROM verdicts WHERE verdict IS NULL")
        db.execute(
            "INSERT INTO verdicts (campaign, job_id, task_id, verdict, at)"
            " SELECT campaign, id, task_id, 'rejected', 'now' FROM jobs WHERE id = 'done'"
        )
        db.execute("UPDATE verdicts SET job_id = 'two-files' WHERE job_id = 'done'")
        db.execute("UPDATE jobs SET status = 'failed' WHERE id = 'again'")
        db.execute("UPDATE attempts SET key_label = 'night' WHERE key_label = 'studio' AND id % 2")
        db.execute("UPDATE attempts SET key_label = NULL WHERE key_label = 'night' AND id > 6")
        db.execute("UPDATE attempts SET key_label = 'dawn' WHERE key_label IS NULL AND id < 4")
        db.execute(
            "INSERT INTO attempts (campaign, job_id, started_at, fingerprint, key_label,"
            " unit_price_micro_usd, cost_micro_usd, state) VALUES ('c', 'done', 'now', 'f',"
            " 'studio', 100000, 100000, 'completed')"
        )
        db.execute("DELETE FROM files WHERE job_id = 'y'")
        db.execute("DELETE FROM verdicts WHERE job_id = 'y'")
        db.execute("DELETE FROM attempts WHERE job_id = 'y'")
        db.execute("DELETE FROM jobs WHERE id = 'y'")
    db.close()
    assert kept_totals(path) == recomputed_totals(path)


@pytest.mark.parametrize("seed", range(6))
def test_the_totals_stay_right_through_a_random_history_of_runs_and_reviews(tmp_path, seed):
    rng = random.Random(seed)
    path = tmp_path / "l.db"
    ids = [f"j{i}" for i in range(12)]
    ledger = make_ledger(path, [grok(i) for i in ids])
    ledger.ingest(Campaign("d", "d.yaml", "sha", None), [grok(i) for i in ids[:4]])
    for _ in range(60):
        campaign = rng.choice(["c", "d"])
        jobs = {j.id: j for j in ledger.unfinished_jobs([campaign])}
        done = [
            r[0]
            for r in ledger.conn.execute(
                "SELECT id FROM jobs WHERE campaign = ? AND status = 'completed'", (campaign,)
            )
        ]
        step = rng.choice(
            ["complete", "fail", "unknown", "reject", "judge", "judge", "retry", "label"]
        )
        queued_ids = [i for i, j in jobs.items() if j.status == "queued"]
        if step == "complete" and queued_ids:
            complete(ledger, rng.choice(queued_ids), campaign)
        elif step == "fail" and queued_ids:
            fail(ledger, rng.choice(queued_ids), campaign, then=rng.choice(["failed", "queued"]))
        elif step == "unknown" and queued_ids:
            unknown(ledger, rng.choice(queued_ids), campaign, then=rng.choice(["held", "queued"]))
        elif step == "reject" and queued_ids:
            rejected(ledger, rng.choice(queued_ids), campaign)
        elif step == "judge" and done:
            job_id = rng.choice(done)
            task = ledger.conn.execute(
                "SELECT task_id FROM jobs WHERE campaign = ? AND id = ?", (campaign, job_id)
            ).fetchone()[0]
            verdict = rng.choice(["approved", "rejected", None])
            ledger.record_verdict(campaign, job_id, task, verdict, rng.choice([None, "note"]))
        elif step == "label":  # the key of an attempt, as the scheduler records it
            with ledger.transaction() as db:
                db.execute(
                    "UPDATE attempts SET key_label = ? WHERE id = (SELECT MAX(id) FROM attempts)",
                    (rng.choice(["studio", "night", None]),),
                )
        elif step == "retry":
            what = rng.choice(["failed", "held", "rejected"])
            if what == "rejected":
                ledger.requeue_rejected([campaign])
            else:
                ledger.requeue([campaign], what)
        assert kept_totals(path) == recomputed_totals(path), step
    counts = ledger.verdict_counts()
    completed = ledger.counts()["completed"]
    ledger.close()
    assert sum(counts.values()) == completed


def test_job_counts_from_the_index_equal_a_group_by(tmp_path):
    path = tmp_path / "l.db"
    ledger = every_kind_of_job(path)
    for scope in (None, ["c"], ["b-second"], ["c", "b-second"]):
        names = scope or ["c", "b-second"]
        rows = ledger.conn.execute(
            f"SELECT status, COUNT(*) FROM jobs WHERE campaign IN ({', '.join('?' * len(names))})"
            " GROUP BY status",
            names,
        )
        assert ledger.counts(scope) == {**dict.fromkeys(migrations.JOB_STATUSES, 0), **dict(rows)}
    ledger.close()


# ---------------------------------------------------------------- m006 on an old ledger


def test_m006_brings_an_old_ledgers_totals_up_to_date_and_status_reads_it_before_too(
    tmp_path, monkeypatch
):
    path = tmp_path / "old.db"
    written_before(
        migrations.m006_scale_totals, path, monkeypatch, lambda: every_kind_of_job(path).close()
    )
    expected = json.dumps(plain_status(path), ensure_ascii=False) + "\n"

    # A reading command never writes: it reads the old ledger as it is, same answers.
    assert status_json_command(path) == expected
    human = invoke(path, "status")
    assert human.exit_code == 0 and "review: 1 approved, 1 rejected, 4 not yet" in human.output
    db = sqlite3.connect(path)
    assert "m006_scale_totals" not in {r[0] for r in db.execute("SELECT name FROM _migrations")}
    db.close()

    Ledger(path).close()  # opening for writing migrates
    assert kept_totals(path) == recomputed_totals(path)
    assert status_json_command(path) == expected
    assert invoke(path, "status").output == human.output


def test_status_reads_its_head_and_its_jobs_in_one_moment(tmp_path):
    path = tmp_path / "l.db"
    ledger = make_ledger(path, [grok("a"), grok("b")])
    job = start(ledger, "a")
    reader = Ledger.read_only(path)
    entries = reader.status_entries

    def entries_after_a_commit(*args: Any, **kwargs: Any) -> Any:
        ledger.task_completed(job, [f"{CDN}/a.mp4"])  # the runner commits meanwhile
        return entries(*args, **kwargs)

    reader.status_entries = entries_after_a_commit  # type: ignore[method-assign]
    data = status_data(reader, [])
    reader.close()
    ledger.close()
    assert data["counts"]["running"] == 1 and data["in_flight_usd"] == "0.10"
    assert [j["status"] for j in data["jobs"]] == ["running", "queued"]


# ---------------------------------------------------------------- report, streamed


def test_report_totals_are_the_same_whichever_the_grouping(tmp_path):
    from batchgen import report

    path = tmp_path / "l.db"
    ledger = every_kind_of_job(path)
    whole = report._row(ledger.report_groups(None, None)[0])
    for by in ("campaign", "model", "status", "verdict", "tag", "key"):
        data = json.loads(report.render(ledger, [], by, "json", False))
        assert data["totals"] == whole, by
    ledger.close()


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_report_jobs_is_written_in_pieces_that_make_the_whole(tmp_path, fmt):
    from batchgen import report

    path = tmp_path / "l.db"
    ledger = make_ledger(path, [grok(f"clip-{i:05d} {ODD}") for i in range(2000)])
    for i in range(0, 2000, 7):
        complete(ledger, f"clip-{i:05d} {ODD}")
    pieces = list(report.chunks(ledger, [], "campaign", fmt, True))
    ledger.close()
    assert len(pieces) > 3
    text = "".join(pieces)
    result = invoke(path, "report", "--jobs", "--format", fmt)
    assert result.exit_code == 0 and result.output == text
    if fmt == "json":
        jobs = json.loads(text)["jobs"]
        assert len(jobs) == 2000 and jobs[7]["spent_usd"] == "0.10"
    else:
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
        assert len(rows) == 2000 and rows[7]["spent_usd"] == "0.10"
        assert rows[1999]["job_id"] == f"clip-01999 {ODD}"


# ---------------------------------------------------------------- ingest: all or nothing

# `batchgen ingest`, killed with SIGKILL (a kill -9: no cleanup) when every new row is
# written and the transaction is about to be committed: at its `ingested` event.
KILLED_AT_THE_LAST_WRITE = """
import os, signal, sys
from batchgen import cli
from batchgen.ledger.base import LedgerBase

write = LedgerBase._event

def event(self, kind, *args, **kwargs):
    write(self, kind, *args, **kwargs)
    if kind == "ingested":
        os.kill(os.getpid(), signal.SIGKILL)

LedgerBase._event = event
sys.argv = ["batchgen", *sys.argv[1:]]
cli.main()
"""


def dump(path: Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return list(db.iterdump())
    finally:
        db.close()


def test_a_kill_9_mid_ingest_leaves_the_ledger_exactly_as_it_was(tmp_path):
    path = tmp_path / "l.db"
    make_ledger(path, [grok("before"), image("also-before")]).close()
    before = dump(path)
    manifest = tmp_path / "big.yaml"
    manifest.write_text(
        "version: 1\ncampaign: big\n"
        'defaults: {model: grok-video-3, duration: 5, ratio: "1:1"}\n'
        "jobs:\n"
        '  - id: "shot-{n}-{m}"\n'
        '    prompt: "A long enough prompt, so the rows outgrow the page cache: {n} {m}"\n'
        f"    matrix: {{n: {list(range(200))}, m: {list(range(100))}}}\n",
        encoding="utf-8",
    )
    env = command_env(path, None, None)
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_AT_THE_LAST_WRITE, "ingest", str(manifest)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr
    wal = path.with_name(path.name + "-wal")
    assert wal.exists() and wal.stat().st_size > 1_000_000, "the rows never reached the disk"

    assert dump(path) == before  # nothing of the 20,000 jobs, nothing else changed
    assert json.loads(status_json_command(path))["counts"]["queued"] == 2
    again = invoke(path, "ingest", str(manifest))
    assert again.exit_code == 0 and "20000 new job(s)" in again.output


@pytest.mark.parametrize("old", [False, True])
def test_m006_keeps_the_status_rules_spelled_so_they_cost_nothing(tmp_path, monkeypatch, old):
    path = tmp_path / "l.db"
    if old:
        written_before(
            migrations.m006_scale_totals,
            path,
            monkeypatch,
            lambda: make_ledger(path, [grok("a")]).close(),
        )
    Ledger(path).close()
    db = sqlite3.connect(path)
    tables = dict(db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'"))
    assert " IN (" not in tables["jobs"] and "status = 'held'" in tables["jobs"]
    assert " IN (" not in tables["attempts"] and "state = 'not_sent'" in tables["attempts"]
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    db.execute("INSERT OR IGNORE INTO campaigns VALUES ('c', 'c.yaml', 'sha', NULL, 'a', 'b')")
    columns = "campaign, id, position, model, kind, prompt, request, fingerprint, price_micro_usd"
    job = "'c', ?, 9, 'm', 'video', 'p', '{}', 'f', 1, ?, 'a', 'b'"
    for status in migrations.JOB_STATUSES:
        db.execute(f"INSERT INTO jobs ({columns}, status, created_at, updated_at) VALUES ({job})",
                   (f"ok-{status}", status))  # fmt: skip
    with pytest.raises(sqlite3.IntegrityError):
        db.execute(f"INSERT INTO jobs ({columns}, status, created_at, updated_at) VALUES ({job})",
                   ("bad", "Queued"))  # fmt: skip
    with pytest.raises(sqlite3.IntegrityError):
        db.execute(
            "INSERT INTO attempts (campaign, job_id, started_at, fingerprint,"
            " unit_price_micro_usd, state) VALUES ('c', 'ok-queued', 'now', 'f', 1, 'lost')"
        )
    db.close()


# ---------------------------------------------------------------- what a run reads, at any size

BIG = {"jobs", "attempts", "files", "verdicts", "events"}  # and their aliases in our SQL
ALIASES = {"j": "jobs", "a": "attempts", "f": "files", "v": "verdicts"}


def plans(ledger: Ledger, read: Any) -> list[tuple[str, list[str]]]:
    """Each statement `read()` runs, with SQLite's plan for it."""
    statements: list[str] = []
    ledger.conn.set_trace_callback(statements.append)
    try:
        read()
    finally:
        ledger.conn.set_trace_callback(None)
    return [
        (sql, [row[3] for row in ledger.conn.execute("EXPLAIN QUERY PLAN " + sql)])
        for sql in statements
        if not sql.startswith(("BEGIN", "COMMIT", "PRAGMA", "SELECT name FROM sqlite_master"))
    ]


@pytest.mark.parametrize("scope", [None, ["c"], ["c", "b-second"]])
def test_what_status_resume_and_each_tick_read_never_walks_a_whole_table(tmp_path, scope):
    """Start-up and every tick of a run, and `status`, read through indexes or the totals:
    on a year's ledger none of them may read every job, attempt, file or verdict."""
    from batchgen import runner
    from batchgen.ledger.review import ReviewFilters

    ledger = every_kind_of_job(tmp_path / "l.db")
    # The walks allowed: (plan step, what the statement must say for it to be allowed).
    totals = {
        ("SCAN a", "FROM attempt_totals a"),
        ("SCAN j", "FROM verdict_totals j"),
        ("SCAN a", "FROM key_totals a"),
    }
    # SQLite's count of a whole table: it counts the cells of its smallest index's pages
    # and reads no row.
    whole_count = {
        ("SCAN jobs USING COVERING INDEX jobs_by_position", "(SELECT COUNT(*) FROM jobs )")
    }
    # The 5,000 newest attempts (200 for the times other runners saw since the last look),
    # newest first, then stop: not every attempt (the observed ones through the partial
    # index that holds only them).
    newest = {
        ("SCAN attempts", "ORDER BY id DESC LIMIT 5000"),
        ("SCAN attempts USING INDEX attempts_observed", "ORDER BY id DESC LIMIT 5000"),
        ("SCAN a", "LIMIT 5000) a"),
        ("SCAN attempts USING INDEX attempts_observed", "ORDER BY id DESC LIMIT 200"),
        ("SCAN a", "LIMIT 200) a"),
    }
    me = ledger.register_runner("resume", ["k1"], 120.0)
    reads: dict[str, Any] = {
        # Several runners (PRODUCT §6): what a runner reads at start-up and at each beat.
        "orphans taken over": lambda: ledger.take_over(me, scope),
        "its own tasks": lambda: ledger.owned_jobs(me),
        "a key's slots": lambda: ledger.key_in_flight("k1"),
        "money that may come back": lambda: ledger.in_flight_anywhere("c"),
        "other runners' times": lambda: ledger.recent_observations(200),
        "the live runners": ledger.runners,
        "counts": lambda: ledger.counts(scope),
        "money": lambda: ledger.money(scope),
        "money by campaign": lambda: ledger.money_by_campaign(scope),
        "verdict counts": lambda: ledger.verdict_counts(scope),
        "each key's use": lambda: ledger.key_use(scope),
        "the queue, a page at a time": lambda: list(ledger.queued_jobs(scope, page=2)),
        "lost": lambda: ledger.lost_jobs(scope),
        "one job": lambda: ledger.unfinished_job("c", "sent"),
        "reasons": lambda: (ledger.held_reasons(scope), ledger.queued_reasons(scope)),
        "recent failures": lambda: ledger.jobs_in_status(scope, "failed", 10, True),
        "generation times": ledger.generation_seconds,
        "the budget left": lambda: runner._budget(ledger, scope),
        "the review's first page": lambda: ledger.review_page(scope, ReviewFilters(), 3),
    }
    for name, read in reads.items():
        for sql, plan in plans(ledger, read):
            for step in plan:
                if not step.startswith("SCAN "):
                    continue
                if any(step == s and said in sql for s, said in totals | whole_count | newest):
                    continue
                table = step.split()[1]
                assert ALIASES.get(table, table) not in BIG, (name, step, sql)
            if name.startswith("the queue"):  # a sort would read the whole queue first
                assert not any("TEMP B-TREE" in step for step in plan), (name, plan)
    ledger.close()


@pytest.mark.parametrize("scope", [None, ["c"], ["b-second", "c"], ["c", "c"]])
@pytest.mark.parametrize("page", [1, 2, 3, 500])
def test_the_queue_a_page_at_a_time_is_every_queued_job_in_ingestion_order(tmp_path, scope, page):
    ledger = every_kind_of_job(tmp_path / "l.db")
    ledger.ingest(
        Campaign("b-second", "b.yaml", "sha", None), [grok(f"more-{i}") for i in range(4)]
    )
    ledger.ingest(
        Campaign("c", "c.yaml", "sha", 40_000_000), [grok(f"later-{i}") for i in range(3)]
    )
    names = sorted(set(scope or ["c", "b-second"]))
    expected = [
        (c, i)
        for c, i in ledger.conn.execute(
            "SELECT campaign, id FROM jobs WHERE status = 'queued'"
            f" AND campaign IN ({', '.join('?' * len(names))}) ORDER BY campaign, position",
            names,
        )
    ]
    assert len(expected) >= 4
    assert [j.key for j in ledger.queued_jobs(scope, page=page)] == expected
    ledger.close()


def test_status_json_finds_each_jobs_key_on_an_index_among_its_own_attempts(tmp_path):
    """`status --json` reads every job, but for each one only its own attempts, newest
    first, through attempts_by_job_ref: never a walk of the attempts, nor a sort."""
    ledger = every_kind_of_job(tmp_path / "l.db")
    [(sql, plan)] = plans(ledger, lambda: list(ledger.status_entries(None)))
    ledger.close()
    assert "a.job_ref = j.ref" in sql
    search = plan.index("SEARCH a USING INDEX attempts_by_job_ref (job_ref=?)")
    assert "TEMP B-TREE" not in plan[search + 1], plan  # newest first is the index's order
    assert not any(step.split()[:2] == ["SCAN", "a"] for step in plan), plan


@pytest.mark.parametrize("jobs", [False, True])
def test_status_counts_the_whole_ledger_once(tmp_path, jobs):
    """A count of every job is the one read of `status` that grows with the ledger (on
    PostgreSQL, which has no count from an index's cells, 70-120 ms on a million jobs):
    the verdicts' unreviewed count takes the completed jobs from the counts already read."""
    ledger = every_kind_of_job(tmp_path / "l.db")
    statements: list[str] = []
    ledger.conn.set_trace_callback(statements.append)
    data = status_data(ledger, [], jobs=jobs)
    ledger.conn.set_trace_callback(None)
    assert sum("SELECT COUNT(*) FROM jobs" in sql for sql in statements) == 1
    assert data["verdicts"] == ledger.verdict_counts()
    ledger.close()

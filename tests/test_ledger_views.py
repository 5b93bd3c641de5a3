"""The ledger for people (PRODUCT.md §5): views in dollars, and foreign keys that SQL
browsers follow, added by migration m005 (also to ledgers written before it)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from batchgen.job import Campaign
from batchgen.ledger import Ledger, migrations
from tests.builders import complete, fail, grok, make_ledger, report, seedance
from tests.documentation import readme_and_docs
from tests.e2e import FAST, on_sandbox, report_text, rows, write_manifest
from tests.old_ledgers import written_before

MONEY = ("spent_usd", "in_flight_usd", "unknown_usd", "refunded_usd")
COUNTS = ("jobs", "completed", "failed", "queued", "video_seconds", "images")


def dollars(value: Any) -> Decimal:
    """A view's dollar figure (REAL) or a report's (exact text), as an exact amount."""
    return Decimal(str(value)).quantize(Decimal("0.000001"))


def same_money(view_row: dict[str, Any], report_row: dict[str, Any]) -> bool:
    return all(dollars(view_row[k]) == dollars(report_row[k]) for k in MONEY) and all(
        view_row[k] == report_row[k] for k in COUNTS
    )


def summed(view_rows: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    """Rows of a per-campaign view added up per `key` (a model, a tag) over campaigns."""
    sums: dict[str, dict[str, Any]] = defaultdict(lambda: defaultdict(Decimal))
    for row in view_rows:
        for column in (*MONEY, *COUNTS):
            sums[row[key]][column] += dollars(row[column]) if column in MONEY else row[column]
    return sums


# --- the views answer what the report says, in dollars ------------------------------------


def test_each_view_gives_the_reports_money_in_dollars(audit):  # noqa: F811
    by_campaign = report(audit, "campaign")
    [campaign] = rows(audit, "SELECT * FROM campaign_costs")
    assert same_money(campaign, by_campaign["totals"])
    assert campaign["budget_usd"] == 5.0
    spent = sum(dollars(campaign[k]) for k in ("spent_usd", "in_flight_usd", "unknown_usd"))
    assert dollars(campaign["budget_left_usd"]) == Decimal(5) - spent

    for view, by, key in (("model_costs", "model", "model"), ("tag_costs", "tag", "tag")):
        groups = {g["key"]: g for g in report(audit, by)["groups"]}
        assert summed(rows(audit, f"SELECT * FROM {view}"), key) == {
            name: {c: dollars(g[c]) if c in MONEY else g[c] for c in (*MONEY, *COUNTS)}
            for name, g in groups.items()
        }, view

    [day] = rows(audit, "SELECT * FROM daily_costs")
    assert all(dollars(day[k]) == dollars(by_campaign["totals"][k]) for k in MONEY)


def test_job_costs_lists_every_job_in_manifest_order_with_its_own_money(audit):  # noqa: F811
    jobs = rows(audit, "SELECT * FROM job_costs")
    per_job = {job["id"]: job for job in report(audit, per_job=True)["jobs"]}
    assert [job["id"] for job in jobs] == list(per_job)  # manifest (ingestion) order
    for job in jobs:
        assert all(dollars(job[k]) == dollars(per_job[job["id"]][k]) for k in MONEY), job["id"]
        assert job["prompt"] == f"prompt {job['id']}"
        assert job["attempts"] == len(per_job[job["id"]]["attempts"])
    assert sum(dollars(job["spent_usd"]) for job in jobs) == dollars("1.40")


def test_attempt_costs_has_one_row_per_attempt_summing_to_the_totals(audit):  # noqa: F811
    attempts = rows(audit, "SELECT * FROM attempt_costs")
    assert len(attempts) == rows(audit, "SELECT COUNT(*) AS n FROM attempts")[0]["n"]
    totals = report(audit)["totals"]
    for column in MONEY:
        assert sum(dollars(a[column]) for a in attempts) == dollars(totals[column]), column


# --- sums over the views are exact ---------------------------------------------------------

MONEY_VIEWS = ("attempt_costs", "job_costs", "campaign_costs", "model_costs", "tag_costs",
               "daily_costs", "key_costs")  # fmt: skip


def many_attempts(path: Path, n: int, seed: int) -> dict[str, int]:
    """A ledger of `n` attempts of random prices (whole cents and odd micro-dollars) and
    states, on 2 campaigns, 3 models, 3 tags (one or none a job), 3 keys and 5 days,
    written by plain SQL; what each kind of money adds up to, in micro-dollars."""
    import random

    rng = random.Random(seed)
    Ledger(path).close()
    db = sqlite3.connect(path)
    models, tags, keys = ("grok-video-3", "veo3.1", "jimeng-5.0"), ("a", "b", "c"), "xyz"
    states = ("completed", "failed", "running", "unknown", "sending", "rejected", "error")
    totals = dict.fromkeys(("spent", "in_flight", "unknown", "refunded"), 0)
    with db:
        for campaign in ("c1", "c2"):
            db.execute(
                "INSERT INTO campaigns VALUES (?, 'm.yaml', 'sha', 99000000, 'now', 'now')",
                (campaign,),
            )
        jobs = [(rng.choice(("c1", "c2")), f"j{i}") for i in range(n // 5)]
        db.executemany(
            "INSERT INTO jobs (campaign, id, position, model, kind, prompt, tags, request,"
            " fingerprint, price_micro_usd, status, created_at, updated_at) VALUES"
            " (?, ?, ?, ?, 'video', 'p', ?, '{}', 'f', 0, ?, 'now', 'now')",
            [
                (
                    c,
                    i,
                    p,
                    rng.choice(models),
                    json.dumps(rng.choice([[], [rng.choice(tags)]])),
                    rng.choice(("completed", "failed", "queued", "held")),
                )
                for p, (c, i) in enumerate(jobs)
            ],  # fmt: skip
        )
        attempts = []
        for _ in range(n):
            campaign, job = rng.choice(jobs)
            price = rng.choice((rng.randrange(1, 2000) * 10_000, rng.randrange(1, 20_000_000)))
            state = rng.choice(states)
            cost = price if state in ("completed", "running") else 0
            refunded = price if state == "failed" else 0
            totals["spent"] += cost if state == "completed" else 0
            totals["in_flight"] += cost if state == "running" else 0
            totals["unknown"] += price if state in ("unknown", "sending") else 0
            totals["refunded"] += refunded
            day = f"2026-01-0{rng.randrange(1, 6)}T12:00:00Z"
            attempts.append(
                (campaign, job, day, day, price, cost, refunded, state, rng.choice(keys))
            )
        db.executemany(
            "INSERT INTO attempts (campaign, job_id, started_at, answered_at, fingerprint,"
            " unit_price_micro_usd, cost_micro_usd, refunded_micro_usd, state, key_label)"
            " VALUES (?, ?, ?, ?, 'f', ?, ?, ?, ?, ?)",
            attempts,
        )
    db.close()
    return totals


def test_every_views_money_sums_exactly_over_10000_attempts_of_random_prices(tmp_path):
    path = tmp_path / "many.db"
    totals = many_attempts(path, 10_000, seed=21)
    for view in MONEY_VIEWS:
        view_rows = rows(path, f"SELECT * FROM {view}")
        for kind, micros in totals.items():
            column = f"{kind}_micro_usd"
            # each row: its dollars are its exact micro-dollars divided once
            assert all(r[f"{kind}_usd"] == r[column] / 1e6 for r in view_rows), (view, kind)
            # a sum over rows, as the README says to sum: exact, in micro-dollars and dollars
            [summed] = rows(path, f"SELECT sum({column}) AS m, sum({column}) / 1e6 AS usd"
                                  f" FROM {view}")  # fmt: skip
            assert summed["m"] == micros, (view, kind)
            assert Decimal(summed["usd"]) == Decimal(float(Decimal(micros) / 10**6)), (view, kind)
            assert dollars(summed["usd"]) == Decimal(micros) / 10**6, (view, kind)


# --- Datasette, on a ledger from a real run -----------------------------------------------


@pytest.fixture
def ran(make_sandbox, tmp_path):
    """A real run on the sandbox: two campaigns, four models, tags, failed tasks and 500s
    (so retries and failed jobs), files saved."""
    sandbox = make_sandbox(time_scale=0.01, seed=5, fail_rate=0.35, submit_500_rate=0.2)
    ledger = tmp_path / "batchgen.db"
    for campaign in ("alpha", "beta"):
        manifest = write_manifest(
            tmp_path / f"{campaign}.yaml",
            f"""
            version: 1
            campaign: {campaign}
            defaults: {{model: grok-video-3, tags: [{campaign}]}}
            jobs:
              - id: "clip-{{n}}"
                prompt: "clip {{n}}"
                matrix: {{n: [1, 2, 3, 4, 5, 6]}}
                tags: [clips, {campaign}]
              - {{id: poster, model: jimeng-5.0, prompt: A poster}}
              - {{id: veo, model: veo3.1, variant: veo3.1-fast, prompt: A ship}}
              - {{id: dance, model: jimeng-video-seedance-2.0-fast, duration: 4, prompt: A cat}}
            """,
        )
        result = on_sandbox(
            sandbox, "run", str(manifest), *FAST, "--max-attempts", "2",
            "--download", str(tmp_path / "out"), ledger=ledger,
        )  # fmt: skip
        assert result.returncode in (0, 1), result.stderr
    failed = rows(ledger, "SELECT COUNT(*) AS n FROM jobs WHERE status = 'failed'")[0]["n"]
    retried = rows(ledger, "SELECT COUNT(*) AS n FROM jobs WHERE attempts > 1")[0]["n"]
    assert failed > 0 and retried > 0, "the run should have had failures and retries"
    return ledger


def datasette_get(ledger: Path, *paths: str) -> list[Any]:
    """GET each path from Datasette serving `ledger` (its own API, no server)."""
    from datasette.app import Datasette

    async def get() -> list[Any]:
        datasette = Datasette([str(ledger)])
        answers = []
        for path in paths:
            response = await datasette.client.get(path)
            assert response.status_code == 200, (path, response.text[:300])
            answers.append(response.json())
        return answers

    return asyncio.run(get())


def test_datasette_shows_the_views_with_the_reports_dollars(ran):
    by_campaign = json.loads(report_text(ran, "--format", "json"))
    by_model = json.loads(report_text(ran, "--format", "json", "--by", "model"))
    campaigns, models, jobs = datasette_get(
        ran,
        "/batchgen/campaign_costs.json?_shape=array",
        "/batchgen/model_costs.json?_shape=array&_size=max",
        "/batchgen/job_costs.json?_shape=array&_size=max",
    )
    reported = {g["key"]: g for g in by_campaign["groups"]}
    assert [c["campaign"] for c in campaigns] == ["alpha", "beta"]
    for row in campaigns:
        assert same_money(row, reported[row["campaign"]]), row
        assert row["budget_usd"] is None and row["budget_left_usd"] is None  # no budget set
    assert summed(models, "model") == {
        g["key"]: {c: dollars(g[c]) if c in MONEY else g[c] for c in (*MONEY, *COUNTS)}
        for g in by_model["groups"]
    }
    # each job: its prompt, status, money and the files saved for it, in manifest order
    assert [(j["campaign"], j["position"]) for j in jobs] == sorted(
        (j["campaign"], j["position"]) for j in jobs
    )
    assert sum(dollars(j["spent_usd"]) for j in jobs) == dollars(by_campaign["totals"]["spent_usd"])
    for job in jobs:
        files = json.loads(job["files"])
        assert (job["status"] == "completed") == bool(files), job
        assert all(Path(path).is_file() for path in files)
        assert job["prompt"]


def test_datasette_follows_attempts_and_files_to_their_job(ran):
    attempts, files, job = datasette_get(
        ran,
        "/batchgen/attempts.json?_labels=on&_shape=objects&_size=max",
        "/batchgen/files.json?_extra=expandable_columns&_size=1",
        "/batchgen/jobs/1.json?_extras=foreign_key_tables",
    )
    link = {"column": "job_ref", "other_table": "jobs", "other_column": "ref"}
    assert [link, None] in attempts["expandable_columns"]
    assert [link, None] in files["expandable_columns"]
    refs = {(r["campaign"], r["id"]): r["ref"] for r in rows(ran, "SELECT * FROM jobs")}
    for attempt in attempts["rows"]:
        # expanded: the value is the job's ref, the job named by (campaign, job_id)
        assert attempt["job_ref"]["value"] == refs[(attempt["campaign"], attempt["job_id"])]
    incoming = {t["other_table"]: t for t in job["foreign_key_tables"]}
    assert incoming["attempts"]["other_column"] == incoming["files"]["other_column"] == "job_ref"
    first = rows(ran, "SELECT COUNT(*) AS n FROM attempts WHERE job_ref = 1")[0]["n"]
    assert incoming["attempts"]["count"] == first >= 1


# --- migration m005 on a ledger written before it -----------------------------------------


BEFORE_M005 = migrations.MIGRATIONS[: migrations.MIGRATIONS.index(migrations.m005_views)]


def old_ledger(path: Path, monkeypatch) -> None:
    """A ledger as batchgen wrote it before m005: jobs, attempts (retries, a failure), files."""

    def write() -> None:
        ledger = make_ledger(path, [grok("g1"), seedance("s1"), grok("g2")], campaign="c")
        ledger.ingest(Campaign("d", "d.yaml", "sha", None), [grok("g1"), grok("d2")])
        fail(ledger, "g1", then="queued")
        complete(ledger, "g1")
        complete(ledger, "s1")
        complete(ledger, "g1", campaign="d")
        ledger.file_saved("c", "g1", 0, "https://x/g1.mp4", "out/c/g1.mp4", 10, "ab" * 32)
        ledger.file_saved("d", "g1", 0, "https://x/d-g1.mp4", "out/d/g1.mp4", 11, "cd" * 32)
        ledger.close()

    written_before(migrations.m005_views, path, monkeypatch, write)


def table(path: Path, name: str, *without: str) -> list[dict[str, Any]]:
    """A table's rows, without the columns named (those later migrations added)."""
    found = rows(path, f"SELECT rowid AS _rowid, * FROM {name} ORDER BY rowid")
    return [{k: v for k, v in row.items() if k not in (*without, "_rowid")} for row in found]


def test_m005_keeps_every_row_and_links_each_attempt_and_file_to_its_job(tmp_path, monkeypatch):
    path = tmp_path / "old.db"
    old_ledger(path, monkeypatch)
    before = {name: table(path, name) for name in ("jobs", "attempts", "files", "events")}
    old_rowids = rows(path, "SELECT rowid, campaign, id FROM jobs")
    assert not any(r["name"] == "ref" for r in rows(path, "PRAGMA table_info(jobs)"))

    Ledger(path).close()  # opening migrates

    assert table(path, "jobs", "ref") == before["jobs"]
    # m007 adds each attempt's key_label: NULL, the key of that time had none (m010 its
    # runner_id: NULL, no runner follows a finished attempt)
    assert table(path, "attempts", "job_ref", "key_label", "runner_id") == before["attempts"]
    assert {r["key_label"] for r in rows(path, "SELECT key_label FROM attempts")} == {None}
    # m012 adds each file's provenance: NULL, not read yet (download reads it)
    assert table(path, "files", "job_ref", "provenance") == before["files"]
    assert table(path, "events") == before["events"]
    refs = {(r["campaign"], r["id"]): r["ref"] for r in rows(path, "SELECT * FROM jobs")}
    assert refs == {(r["campaign"], r["id"]): r["rowid"] for r in old_rowids}
    for name in ("attempts", "files"):
        for row in rows(path, f"SELECT * FROM {name}"):
            assert row["job_ref"] == refs[(row["campaign"], row["job_id"])], (name, row)
    assert rows(path, "PRAGMA foreign_key_check") == []
    assert rows(path, "PRAGMA integrity_check")[0]["integrity_check"] == "ok"
    indexes = {r["name"] for r in rows(path, "SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"jobs_by_status", "jobs_by_position", "attempts_by_job_ref"} <= indexes
    applied = [r["name"] for r in rows(path, "SELECT name FROM _migrations")]
    assert applied == [m.__name__ for m in migrations.MIGRATIONS]  # each once, in order


def test_rows_written_after_m005_are_linked_whoever_writes_them(tmp_path):
    path = tmp_path / "new.db"
    ledger = make_ledger(path, [grok("a"), grok("b")])
    complete(ledger, "b")
    ledger.file_saved("c", "b", 0, "https://x/b.mp4", "out/c/b.mp4", 10, "ab" * 32)
    ledger.close()
    db = sqlite3.connect(path)  # another program, naming the job the old way
    with db:
        db.execute(
            "INSERT INTO attempts (campaign, job_id, started_at, fingerprint,"
            " unit_price_micro_usd, state) VALUES ('c', 'a', 'now', 'f', 100000, 'error')"
        )
    db.close()
    refs = {r["id"]: r["ref"] for r in rows(path, "SELECT * FROM jobs")}
    assert [(r["job_id"], r["job_ref"]) for r in rows(path, "SELECT * FROM attempts")] == [
        ("b", refs["b"]),
        ("a", refs["a"]),
    ]
    assert [r["job_ref"] for r in rows(path, "SELECT * FROM files")] == [refs["b"]]


def test_a_migration_that_fails_leaves_the_ledger_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "old.db"
    old_ledger(path, monkeypatch)
    schema_before = rows(path, "SELECT * FROM sqlite_master ORDER BY name")
    jobs_before = table(path, "jobs")

    def m005_then_fails(db: sqlite3.Connection) -> None:
        migrations.m005_views(db)
        raise OSError("disk full, say")

    m005_then_fails.__name__ = "m005_views"
    monkeypatch.setattr(migrations, "MIGRATIONS", [*BEFORE_M005, m005_then_fails])
    with pytest.raises(OSError):
        migrations.migrate(sqlite3.connect(path, isolation_level=None))
    assert rows(path, "SELECT * FROM sqlite_master ORDER BY name") == schema_before
    assert table(path, "jobs") == jobs_before


# --- migration m008 on a ledger written before it -----------------------------------------


def test_m008_gives_an_old_ledgers_views_the_same_rows_and_dollars_and_their_exact_twins(
    tmp_path, monkeypatch
):
    path = tmp_path / "old.db"

    def write() -> None:
        ledger = make_ledger(path, [grok("g1"), seedance("s1"), grok("g2")], budget=5_000_000)
        fail(ledger, "g1", then="queued")
        complete(ledger, "g1")
        complete(ledger, "s1")
        ledger.close()

    written_before(migrations.m008_exact_dollar_views, path, monkeypatch, write)
    before = {view: rows(path, f"SELECT * FROM {view}") for view in MONEY_VIEWS}
    assert "spent_micro_usd" not in before["job_costs"][0]

    Ledger(path).close()  # opening migrates

    for view in MONEY_VIEWS:
        after = rows(path, f"SELECT * FROM {view}")
        assert len(after) == len(before[view]), view
        kept = [{k: r[k] for k in old} for r, old in zip(after, before[view], strict=True)]
        assert kept == before[view], view
        for row in after:
            for column in (c for c in row if c.endswith("_micro_usd")):
                twin = row[column.removesuffix("_micro_usd") + "_usd"]
                assert row[column] is None if twin is None else twin == row[column] / 1e6
    [campaign] = rows(path, "SELECT * FROM campaign_costs")
    spent = rows(path, "SELECT SUM(cost_micro_usd) AS m FROM attempts WHERE state = 'completed'")
    assert (campaign["budget_micro_usd"], campaign["spent_micro_usd"]) == (5_000_000, spent[0]["m"])
    applied = [r["name"] for r in rows(path, "SELECT name FROM _migrations")]
    assert "m008_exact_dollar_views" in applied


def test_the_docs_examples_over_the_views_run_and_add_money_up_exactly(tmp_path):
    import re

    path = tmp_path / "many.db"
    totals = many_attempts(path, 500, seed=3)
    docs = readme_and_docs()  # the examples are in docs/ledger.md
    examples = re.findall(r'^sqlite-utils batchgen\.db "(.+)"$', docs, re.MULTILINE)
    assert len(examples) >= 7
    for sql in examples:
        found = rows(path, sql.replace("'spring-launch'", "'c1'"))
        if "sum(spent_micro_usd) / 1e6 as spent_usd" in sql:
            exact = Decimal(totals["spent"]) / 10**6
            assert sum(Decimal(str(r["spent_usd"])) for r in found) == exact, sql

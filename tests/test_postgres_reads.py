"""The reading commands give the same answers on a PostgreSQL ledger as on a SQLite one
(issue 23; PRODUCT.md §5, §7): the same content is written through the Ledger API to a
SQLite file and to a PostgreSQL database, then the real `batchgen status`, `report`,
`plan` and `download` run on each, and what they print is compared byte for byte, the
ledger's own location aside.

The PostgreSQL server: the tests' throwaway cluster (tests/postgres.py), a new database
of it per ledger (`new_database`) that sorts text as people do (ICU's en-US: `alpha`
before `Zeta`), where SQLite compares bytes (`Zeta` first): the ledger's columns are
collated "C", so its order is SQLite's.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from batchgen.job import Campaign
from batchgen.ledger import Ledger, base, claims, ingest, reads, recovery, review, scheduling
from batchgen.ledger.reads import usd_sql
from batchgen.money import usd
from tests.builders import (
    CDN,
    ODD,
    complete,
    fail,
    grok,
    image,
    label_keys,
    make_ledger,
    queued_task,
    rejected,
    seedance,
    sending,
    start,
    unknown,
    veo,
)
from tests.e2e import batchgen, write_manifest

# The ledger's clock while a test writes the content: a second per reading from a moment
# in 2100, so both ledgers hold the same times and `status` ages them 0s whenever it runs.
EPOCH = datetime(2100, 1, 1, tzinfo=UTC)
CLOCKED = (base, claims, ingest, reads, recovery, review, scheduling)  # modules calling now()
ONE_JOB = """
    version: 1
    campaign: c
    jobs: [{id: one, model: grok-video-3, duration: 5, prompt: one}]
    """
BY = ("campaign", "model", "tag", "status", "key", "verdict", "reviewer")
FORMATS = ("table", "csv", "json")


# ---------------------------------------------------------------- the PostgreSQL server


@pytest.fixture(scope="module")
def postgres_server(postgres_cluster) -> str:
    """The URL of the cluster's `postgres` database, where databases are made."""
    return str(postgres_cluster.url("postgres"))


@contextmanager
def new_database(server: str) -> Iterator[str]:
    """A new, empty database on the server, sorting text by ICU's en-US, dropped
    afterwards: its URL."""
    name = f"reads_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(
            f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
        )
    try:
        yield urlunsplit(urlsplit(server)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# ---------------------------------------------------------------- the same content on both


@contextmanager
def fixed_clock() -> Iterator[None]:
    """The ledger's timestamps from EPOCH, a second later at each reading."""
    ticks = itertools.count()

    def now() -> str:
        return (EPOCH + timedelta(seconds=next(ticks))).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    with pytest.MonkeyPatch.context() as patch:
        for module in CLOCKED:
            patch.setattr(module, "now", now)
        yield


def team_ledger(location: str) -> None:
    """What a team's ledger holds after some work: three campaigns; jobs in every status,
    odd text in ids, prompts, errors and notes; tags (several on a job, one listed twice);
    names that bytes and people sort apart (Zeta, b-second; Zed, a; adam, Ana);
    a result of two files, one saved with its marks, a download that failed, a URL with
    non-ASCII characters; verdicts by named reviewers and by nobody; attempts sent with
    two keys and before labels were kept, one refused for content reasons."""
    odd = f"odd {ODD}"
    ledger = make_ledger(
        location,
        [
            grok("done", tags=["a", "b"]),
            seedance(odd, fast=True, tags=[ODD, "a"]),
            grok("two-files", tags=["a", "a", "Zed"]),
            image("judged", tags=["b"]),
            grok("later"),
            grok("bad", tags=["b"]),
            grok("refused"),
            seedance("run"),
            veo("held", tags=["a"]),
            grok("sent"),
            grok("wait", 10, tags=["a"]),
            grok("bad-400"),
        ],
        budget=40_000_000,
    )
    ledger.ingest(
        Campaign("b-second", "b.yaml", "sha", None),
        [veo("x", variant="veo3.1-fast"), grok("y", 10)],
    )
    ledger.ingest(Campaign("Zeta", "z.yaml", "sha", 1_000_000), [image("z", tags=["Zed"])])
    complete(ledger, "done", observed=40.0)
    complete(ledger, odd, urls=[f"{CDN}/caf\u00e9 {ODD}.mp4"])
    complete(ledger, "two-files", urls=[f"{CDN}/a.mp4", f"{CDN}/b.mp4"], observed=50.0)
    complete(ledger, "judged", urls=[f"{CDN}/judged.png"])
    complete(ledger, "later")
    marks = {"c2pa": None, "xmp": {"description": ODD}, "labels": [], "marked": False}
    ledger.file_saved("c", "two-files", 1, f"{CDN}/b.mp4", f"out/c/two {ODD}.mp4", 3, "ab", marks)
    ledger.file_saved("c", "two-files", 0, f"{CDN}/a.mp4", "out/c/two-files.mp4", 3, "cd")
    ledger.file_failed("c", "done", 0, f"{CDN}/done.mp4", f"HTTP 404 {ODD}")
    for job_id, verdict, note, reviewer in (
        ("done", "approved", None, "Ana"),
        (odd, "rejected", ODD, "Bo"),
        ("two-files", "rejected", "too dark", "Ana"),
        ("judged", "approved", None, None),
        ("later", "approved", None, "adam"),
    ):
        ledger.record_verdict("c", job_id, queued_task(ledger, job_id), verdict, note, reviewer)
    fail(ledger, "bad", why=f"Generation failed: {ODD}")
    refused = start(ledger, "refused")
    ledger.task_failed(refused, "content policy", "failed", refused=True)
    start(ledger, "run")
    unknown(ledger, "held")
    sending(ledger, "sent")
    rejected(ledger, "bad-400")
    complete(ledger, "y", campaign="b-second")
    complete(ledger, "z", campaign="Zeta", urls=[f"{CDN}/z.png"])
    start(ledger, "x", campaign="b-second")
    label_keys(ledger)
    ledger.close()


@pytest.fixture(scope="module")
def ledgers(tmp_path_factory, postgres_server) -> Iterator[tuple[str, str]]:
    """The team's ledger as a SQLite file and as a PostgreSQL database (read only)."""
    path = str(tmp_path_factory.mktemp("reads") / "team.db")
    with new_database(postgres_server) as url:
        for location in (path, url):
            with fixed_clock():
                team_ledger(location)
        yield path, url


def answer(location: str, *args: str, out: Path | None = None) -> tuple[int, str, str]:
    """The real command on the ledger at `location`: its exit code, stdout and stderr, the
    location (and the `out` folder) written as LEDGER (and OUT) in them."""
    result = batchgen(*args, ledger=location)
    texts = [result.stdout, result.stderr]
    for place, name in ((location, "LEDGER"), (str(out), "OUT")):
        texts = [text.replace(place, name) for text in texts]
    return result.returncode, *texts  # type: ignore[return-value]


# ---------------------------------------------------------------- the reading commands

STATUS = [
    ("status",),
    ("status", "--json"),
    ("status", "--campaign", "b-second"),
    ("status", "--json", "--campaign", "c"),
]
REPORTS = [
    *(("report", "--by", by, "--format", fmt) for by in BY for fmt in FORMATS),
    *(("report", "--jobs", "--format", fmt) for fmt in FORMATS),
    ("report", "--by", "tag", "--campaign", "c", "--format", "json"),
    ("report", "--jobs", "--campaign", "c", "--format", "csv"),
]
UNKNOWN = [("status", "--campaign", "nope"), ("report", "--campaign", "c", "--campaign", "nope")]


@pytest.mark.parametrize("args", UNKNOWN, ids=" ".join)
def test_an_unknown_campaign_is_the_same_error_on_both(ledgers, args):
    on_sqlite, on_postgres = (answer(location, *args) for location in ledgers)
    assert on_sqlite[0] == 1 and "nope" in on_sqlite[2] and on_sqlite[1] == "", on_sqlite
    assert on_postgres == on_sqlite


@pytest.mark.parametrize("args", [*STATUS, *REPORTS], ids=" ".join)
def test_status_and_report_say_the_same_on_postgresql_as_on_sqlite(ledgers, args):
    on_sqlite, on_postgres = (answer(location, *args) for location in ledgers)
    assert on_sqlite[0] == 0 and on_sqlite[1], on_sqlite
    assert on_postgres == on_sqlite


def test_status_shows_the_runners_at_work_alike_on_both(ledgers):
    # A runner's times are the database server's clock on PostgreSQL: left out here.
    registered = []
    for location in ledgers:
        ledger = Ledger(location)
        registered.append((ledger, ledger.register_runner("resume", ["studio", None], 30.0)))
    try:
        texts, runners = [], []
        for location in ledgers:
            code, out, err = answer(location, "status")
            assert code == 0 and "runners (1):" in out, err
            texts.append(re.sub(r"since \S+, heartbeat \S+ ago", "since T", out))
            status = json.loads(answer(location, "status", "--json")[1])
            runners.append([{**r, "since": "T", "heartbeat": "T"} for r in status["runners"]])
        assert texts[1] == texts[0]
        assert runners[1] == runners[0] and runners[0][0]["keys"] == ["studio", None]
    finally:
        for ledger, runner in registered:
            ledger.unregister_runner(runner)
            ledger.close()


def test_plan_against_a_postgresql_ledger_says_what_it_says_against_sqlite(ledgers, tmp_path):
    manifest = write_manifest(
        tmp_path / "spring.yaml",
        """
        version: 1
        campaign: c
        budget_usd: 40
        defaults: {model: grok-video-3, duration: 5}
        jobs:
          - {id: done, prompt: "prompt done", tags: [a, b]}
          - {id: wait, prompt: "prompt wait", tags: [a]}
          - {id: bad, prompt: "prompt bad", tags: [b]}
          - {id: later, prompt: "changed since"}
          - {id: new-one, prompt: "new"}
        """,
    )
    for args in (("plan", str(manifest)), ("plan", str(manifest), "--json")):
        on_sqlite, on_postgres = (answer(location, *args) for location in ledgers)
        assert on_sqlite[0] == 0 and "LEDGER" in on_sqlite[1], on_sqlite
        assert on_postgres == on_sqlite
    plan = json.loads(answer(ledgers[1], "plan", str(manifest), "--json")[1])["ledger"]
    assert (plan["found"], plan["done"], plan["changed"], plan["new"]) == (True, 1, 2, 1)


def test_plan_against_an_empty_postgresql_database_counts_every_job_new(postgres_url, tmp_path):
    manifest = write_manifest(tmp_path / "m.yaml", ONE_JOB)
    code, out, err = answer(postgres_url, "plan", str(manifest))
    assert code == 0, err
    assert "no ledger at LEDGER: every job is new" in out


def test_a_password_in_the_url_is_not_shown_by_plan(ledgers, tmp_path):
    manifest = write_manifest(tmp_path / "m.yaml", ONE_JOB)
    parts = urlsplit(ledgers[1])
    secret = f"{parts.username}:hunter2@{parts.hostname}:{parts.port}"
    with_password = urlunsplit(parts._replace(netloc=secret))
    code, out, err = answer(with_password, "plan", str(manifest), "--json")
    assert code == 0 and "hunter2" not in out + err, err
    assert json.loads(out)["ledger"]["path"] == with_password.replace("hunter2", "***")


def test_money_spelled_in_postgresql_sql_is_money_usd(ledgers):
    amounts = [0, 1, 9, 10, 999, 1_000, 9_999, 10_000, 100_000, 123_456, 1_000_000]
    amounts += [1_234_567, 40_000_000, 10**13, 10**13 + 1]
    ledger = Ledger.read_only(ledgers[1])
    try:
        for micros in [*amounts, *(-m for m in amounts)]:
            sql = f"SELECT {usd_sql(f'({micros})', ledger.dialect)}"
            assert ledger.conn.execute(sql).fetchone()[0] == usd(micros), micros
    finally:
        ledger.close()


def test_the_report_groups_add_up_to_the_same_cents_on_postgresql(ledgers):
    def totals(location: str, by: str) -> dict[str, str]:
        report = json.loads(answer(location, "report", "--by", by, "--format", "json")[1])
        return {k: v for k, v in report["totals"].items() if k.endswith("_usd")}

    on_sqlite = totals(ledgers[0], "campaign")
    assert on_sqlite["spent_usd"] != "0.00" and on_sqlite["refunded_usd"] != "0.00"
    for by in ("campaign", "key", "status", "verdict"):
        assert totals(ledgers[1], by) == on_sqlite


def test_a_stream_reads_the_rows_and_columns_a_query_reads(ledgers):
    # status --json and report --jobs read their rows as a stream on PostgreSQL (a million
    # jobs never held at once); its rows and columns are the query's, none included.
    ledger = Ledger.read_only(ledgers[1])
    try:
        for where in ("", " WHERE id = ?", " WHERE false"):
            sql = f"SELECT campaign, id, position FROM jobs{where} ORDER BY ref"
            params = ["later"] if "?" in where else []
            whole = ledger.conn.execute(sql, params)
            stream = ledger.conn.stream(sql, params)
            rows = list(stream)
            assert rows == whole.fetchall() and (rows or where == " WHERE false")
            if rows:
                assert [c[0] for c in stream.description] == ["campaign", "id", "position"]
        assert ledger.conn.execute("SELECT 1").fetchone() == (1,)  # once read, free again
    finally:
        ledger.close()


def test_names_are_in_sqlites_byte_order_on_a_database_that_sorts_otherwise(ledgers):
    def keys(by: str) -> list[str]:
        report = json.loads(answer(ledgers[1], "report", "--by", by, "--format", "json")[1])
        return [group["key"] for group in report["groups"]]

    assert keys("campaign") == ["Zeta", "b-second", "c"]
    assert keys("tag")[:3] == ["(none)", "Zed", "a"]
    assert keys("reviewer")[:4] == ["(no result)", "(unnamed)", "(unreviewed)", "Ana"]
    assert keys("reviewer")[4:] == ["Bo", "adam"]
    jobs = json.loads(answer(ledgers[1], "status", "--json")[1])["jobs"]
    assert [job["campaign"] for job in jobs][:2] == ["Zeta", "b-second"]


# ---------------------------------------------------------------- download


class Files:
    """Result files served on 127.0.0.1: path -> bytes."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        files = self.files

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def add(self, path: str, body: bytes) -> str:
        self.files[path] = body
        return self.url + path


@pytest.fixture
def served() -> Iterator[Files]:
    files = Files()
    yield files
    files.httpd.shutdown()
    files.httpd.server_close()


def downloadable(location: str, served: Files) -> None:
    """Completed jobs whose results are served: ids differing only by case (their files
    are named with a hash; by a non-ASCII letter's case, not: SQLite lower-cases ASCII
    only), a job of two results, an id a file name cannot keep."""
    ids = ["TEA-02", "tea-02", "two", f"odd {ODD}", "Solo", "\u00c9CLAIR", "\u00e9clair"]
    ledger = make_ledger(
        location,
        [grok(job_id) for job_id in ids],
    )
    for k, job_id in enumerate(ids):
        urls = [served.add(f"/r/{k}.mp4", job_id.encode() * 40)]
        if job_id == "two":
            urls.append(served.add("/r/two-b.png", b"second take" * 30))
        complete(ledger, job_id, urls=urls)
    ledger.close()


def test_download_saves_the_same_files_under_the_same_names_from_either_ledger(
    tmp_path, postgres_server, served
):
    path = str(tmp_path / "l.db")
    with new_database(postgres_server) as url:
        results, trees, statuses, exported = [], [], [], []
        for n, location in enumerate((path, url)):
            with fixed_clock():
                downloadable(location, served)
            out = tmp_path / f"out{n}"
            results.append(answer(location, "download", "--out", str(out), out=out))
            trees.append(
                {
                    str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
                    for p in sorted(out.rglob("*"))
                    if p.is_file()
                }
            )
            status = answer(location, "status", "--json", out=out)[1]
            statuses.append([(job["id"], job["files"]) for job in json.loads(status)["jobs"]])
            ledger = Ledger.read_only(location)  # what `export` hands on
            exported.append(
                [
                    {**f, "path": Path(f["path"]).relative_to(out)}
                    for f in ledger.exported_files(None, False)
                ]
            )
            ledger.close()
    assert results[0][0] == 0 and len(trees[0]) == 8, results[0]
    assert results[1] == results[0]
    assert trees[1] == trees[0]
    assert statuses[1] == statuses[0]
    assert exported[1] == exported[0] and len(exported[0]) == 8

"""A year of campaigns in one ledger: 1,000,000 jobs, built in seconds, for bench/scale.py.

The ledger is created and migrated by batchgen itself (`Ledger(path)`), so it has the real
schema, indexes, triggers and views; its rows are then written by bulk SQL (INSERT ...
SELECT over a generated sequence, in one transaction), as a year of runs would have left
them:

- CAMPAIGNS weekly campaigns (`y2026-w00` ...) of equal size, the jobs of each cycling
  through the catalog's models (grok-video-3 at 5/10/15 s, Seedance 2.0 and its Fast
  variant, Veo 3.1 Fast, jimeng-5.0 images), with tags;
- every campaign but the last two finished: 97.5 % completed (one completed attempt with
  its task, result URL, saved file and `submitted`/`completed` events; one in 20 after a
  refunded failed task, one in 50 after a 500), 2 % failed (a refunded failed task, then a
  400), 0.3 % held after an unknown outcome, 0.02 % held with a lost task (reason `lost`);
- the second to last is halfway: its first 40 % as above, then 3 running tasks, one job
  left `submitting` by a crash (its attempt `sending`), 200 jobs waiting for the balance
  (a `not_sent` 402 attempt, reason `balance`), the rest queued;
- the last was just ingested: every job queued;
- half the completed results have a verdict (one in 20 of those rejected with a note), a
  tenth of those changed once (two rows of history).

Money is exact integer micro-dollars, priced as the catalog prices each job. Built once per
layout into a cache folder (`cached_ledger`) and reused by later runs.

On PostgreSQL (`postgres_ledger`, for `--postgres`): the same ledger, built on SQLite as
above and moved by `batchgen ledger copy`, into a database named after the cached file
(kept on a server given by URL, and reused while its name matches).
"""

from __future__ import annotations

import hashlib
import inspect
import os
import re
import sqlite3
import tempfile
import time
from pathlib import Path

import common  # noqa: F401, I001  (puts the repository on sys.path first)

from batchgen.ledger import Ledger, migrations
from batchgen.ledger.migrations import MIGRATIONS

JOBS = 1_000_000
CAMPAIGNS = 50
LAYOUT_VERSION = 1  # bump when the rows written below change

# p = the job's position in its campaign. Per p % 10: the model, its duration, ratio,
# variant, resolution, kind and price in micro-dollars.
_SHAPE = """
    CASE p % 10 WHEN 0 THEN 'grok-video-3' WHEN 1 THEN 'grok-video-3' WHEN 2 THEN 'grok-video-3'
      WHEN 3 THEN 'jimeng-video-seedance-2.0-fast' WHEN 4 THEN 'jimeng-video-seedance-2.0-fast'
      WHEN 5 THEN 'jimeng-video-seedance-2.0' WHEN 6 THEN 'veo3.1'
      ELSE 'jimeng-5.0' END AS model,
    CASE WHEN p % 10 < 3 THEN 5 * (1 + p % 3) WHEN p % 10 < 6 THEN 5 * (1 + p % 2)
      ELSE NULL END AS duration,
    CASE WHEN p % 10 < 3 THEN '1:1' WHEN p % 10 < 7 THEN '16:9' ELSE '3:4' END AS ratio,
    CASE WHEN p % 10 = 6 THEN 'veo3.1-fast' END AS variant,
    CASE WHEN p % 10 >= 7 THEN '2k' END AS resolution,
    CASE WHEN p % 10 >= 7 THEN 'image' ELSE 'video' END AS kind,
    CASE WHEN p % 10 < 3 THEN 20000 * 5 * (1 + p % 3)
      WHEN p % 10 < 5 THEN 80000 * 5 * (1 + p % 2)
      WHEN p % 10 = 5 THEN 120000 * 5 * (1 + p % 2)
      WHEN p % 10 = 6 THEN 100000 ELSE 200000 END AS price"""

# The job's status and reason, by its campaign k and position p (see the module docstring).
_STATUS = """
    CASE
      WHEN k = :last THEN 'queued'
      WHEN k = :last - 1 AND p >= :half + 204 THEN 'queued'
      WHEN k = :last - 1 AND p >= :half + 4 THEN 'queued'
      WHEN k = :last - 1 AND p = :half + 3 THEN 'submitting'
      WHEN k = :last - 1 AND p >= :half THEN 'running'
      WHEN p % 1000 < 20 THEN 'failed'
      WHEN p % 1000 < 23 OR p % 5000 = 23 THEN 'held'
      ELSE 'completed' END AS status,
    CASE
      WHEN k = :last - 1 AND p >= :half + 4 AND p < :half + 204 THEN 'balance'
      WHEN k < :last - 1 OR (k = :last - 1 AND p < :half) THEN
        CASE WHEN p % 1000 BETWEEN 20 AND 22 THEN 'unknown outcome'
             WHEN p % 5000 = 23 THEN 'lost' END
      END AS reason"""


def _stamp(expression: str) -> str:
    """SQL for a ledger timestamp (batchgen's `now()` spelling) `expression` seconds after
    the campaign's start."""
    return (
        "strftime('%Y-%m-%dT%H:%M:%S', '2026-01-05', '+' || (k * 7) || ' days',"
        f" '+' || ({expression}) || ' seconds') || '.000000Z'"
    )


def build(path: Path, jobs: int = JOBS, campaigns: int = CAMPAIGNS) -> dict[str, int]:
    """Write the year ledger at `path` (a new file): its row counts per table."""
    Ledger(path).close()  # created and migrated by batchgen itself
    db = sqlite3.connect(path, isolation_level=None)
    # Building, not running: no journal, no fsync; the file is switched back to WAL after.
    db.execute("PRAGMA journal_mode=DELETE")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-1000000")
    db.execute("PRAGMA temp_store=MEMORY")
    per = jobs // campaigns
    params = {"n": per * campaigns, "per": per, "last": campaigns - 1, "half": per * 4 // 10}
    db.execute("BEGIN")
    db.execute(
        "CREATE TEMP TABLE plan AS WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL"
        " SELECT i + 1 FROM s WHERE i + 1 < :n)"
        " SELECT i + 1 AS ref, i / :per AS k, i % :per AS p,"
        " printf('y2026-w%02d', i / :per) AS campaign FROM s",
        params,
    )
    db.execute(
        "CREATE TEMP TABLE j AS SELECT plan.*, printf('shot-%06d', p) AS id,"
        f" {_SHAPE}, {_STATUS} FROM plan",
        params,
    )
    db.execute(
        "INSERT INTO campaigns (name, manifest_path, manifest_sha256, budget_micro_usd,"
        " created_at, updated_at)"
        f" SELECT campaign, 'campaigns/' || campaign || '.yaml', printf('%064x', k),"
        f" CASE WHEN k % 3 = 0 THEN NULL ELSE 8000000000 END, {_stamp('0')}, {_stamp('0')}"
        " FROM j WHERE p = 0 ORDER BY k"
    )
    prompt = "printf('Product %d of week %d on a marble table, slow pan', p / 4, k)"
    db.execute(
        "INSERT INTO jobs (ref, campaign, id, position, model, kind, prompt, duration, ratio,"
        " variant, ref_mode, resolution, media, tags, request, fingerprint, price_micro_usd,"
        " status, reason, task_id, progress, result_urls, cost_micro_usd, attempts, last_error,"
        " created_at, updated_at, submitted_at, finished_at)"
        f" SELECT ref, campaign, id, p, model, kind, {prompt}, duration, ratio, variant, NULL,"
        " resolution, NULL,"
        " json_array('catalog', printf('week-%02d', k), printf('take-%d', p % 4 + 1)),"
        # the request body as sent: sorted keys, only the fields the model takes
        f" CASE WHEN variant IS NOT NULL THEN json_object('model', model, 'prompt', {prompt},"
        "   'ratio', ratio, 'variant', variant)"
        f" WHEN resolution IS NOT NULL THEN json_object('model', model, 'prompt', {prompt},"
        "   'ratio', ratio, 'resolution', resolution)"
        f" ELSE json_object('duration', duration, 'model', model, 'prompt', {prompt},"
        "   'ratio', ratio) END,"
        " printf('%064x', ref), price, status, reason,"
        " CASE WHEN status IN ('completed', 'running') OR reason = 'lost'"
        "   THEN printf('task-%07d', ref) END,"
        " CASE status WHEN 'completed' THEN 100 WHEN 'running' THEN 40 END,"
        " CASE WHEN status = 'completed' THEN json_array(printf('https://cdn.okaypic.example/%s/%s.%s',"
        "   campaign, id, CASE kind WHEN 'image' THEN 'png' ELSE 'mp4' END)) END,"
        " CASE WHEN status = 'completed' THEN price ELSE 0 END,"
        " CASE WHEN status = 'failed' THEN 2 WHEN status IN ('queued', 'submitting') THEN 0"
        "   WHEN status = 'completed' AND (p % 20 = 0 OR p % 50 = 1) THEN 2 ELSE 1 END,"
        " CASE WHEN status = 'failed' THEN 'rejected: content policy'"
        "   WHEN reason = 'unknown outcome' THEN 'ReadTimeout: no answer'"
        "   WHEN reason = 'lost' THEN 'lost: no usable answer for 1h00m' END,"
        f" {_stamp('0')}, {_stamp('60 + p * 30 + 200')},"
        f" CASE WHEN status IN ('completed', 'running') THEN {_stamp('60 + p * 30')} END,"
        f" CASE WHEN status IN ('completed', 'failed') THEN {_stamp('60 + p * 30 + 200')} END"
        " FROM j ORDER BY ref"
    )
    # Attempts: a refunded failed task before one in 20 completed jobs and before every
    # failed job's 400; a 500 before one in 50 completed jobs; a 402 before the jobs
    # waiting for the balance (not counted).
    attempt = (
        "INSERT INTO attempts (campaign, job_id, job_ref, started_at, answered_at, fingerprint,"
        " http_status, outcome, counted, task_id, unit_price_micro_usd, cost_micro_usd,"
        " refunded_micro_usd, state, error, finished_at)"
    )
    fp = "printf('%064x', ref)"
    db.execute(
        f"{attempt} SELECT campaign, id, ref, {_stamp('p * 30')}, {_stamp('p * 30 + 1')}, {fp},"
        " 200, 'created', 1, printf('task-%07d-0', ref), price, 0, price, 'failed',"
        f" 'Generation failed', {_stamp('p * 30 + 50')}"
        " FROM j WHERE (status = 'completed' AND p % 20 = 0) OR status = 'failed'"
        " ORDER BY ref"
    )
    db.execute(
        f"{attempt} SELECT campaign, id, ref, {_stamp('p * 30 + 55')}, {_stamp('p * 30 + 56')},"
        f" {fp}, 500, 'server error', 1, NULL, price, 0, 0, 'error', 'HTTP 500',"
        f" {_stamp('p * 30 + 56')} FROM j WHERE status = 'completed' AND p % 50 = 1 ORDER BY ref"
    )
    db.execute(
        f"{attempt} SELECT campaign, id, ref, {_stamp('p * 30 + 59')}, {_stamp('p * 30 + 59')},"
        f" {fp}, 402, 'insufficient balance', 0, NULL, price, 0, 0, 'not_sent',"
        f" 'HTTP 402: insufficient balance', {_stamp('p * 30 + 59')}"
        " FROM j WHERE reason = 'balance' ORDER BY ref"
    )
    db.execute(
        f"{attempt} SELECT campaign, id, ref, {_stamp('60 + p * 30')},"
        f" CASE WHEN status <> 'submitting' THEN {_stamp('60 + p * 30 + 1')} END, {fp},"
        " CASE WHEN status IN ('completed', 'running') OR reason = 'lost' THEN 200"
        "   WHEN status = 'failed' THEN 400 END,"
        " CASE WHEN status IN ('completed', 'running') THEN 'created'"
        "   WHEN status = 'failed' THEN 'rejected' WHEN reason = 'lost' THEN 'lost'"
        "   WHEN reason = 'unknown outcome' THEN 'unknown' END,"
        " 1, CASE WHEN status IN ('completed', 'running') OR reason = 'lost'"
        "   THEN printf('task-%07d', ref) END, price,"
        " CASE WHEN status IN ('completed', 'running', 'held') THEN price ELSE 0 END, 0,"
        " CASE status WHEN 'completed' THEN 'completed' WHEN 'running' THEN 'running'"
        "   WHEN 'failed' THEN 'rejected' WHEN 'held' THEN 'unknown' ELSE 'sending' END,"
        " CASE WHEN status = 'failed' THEN 'content policy'"
        "   WHEN reason = 'unknown outcome' THEN 'ReadTimeout: no answer'"
        "   WHEN reason = 'lost' THEN 'no usable answer for 1h00m' END,"
        f" CASE WHEN status IN ('completed', 'failed', 'held') THEN {_stamp('60 + p * 30 + 200')}"
        "   END"
        " FROM j WHERE status IN ('completed', 'failed', 'held', 'running', 'submitting')"
        " ORDER BY ref"
    )
    db.execute(
        "INSERT INTO files (campaign, job_id, job_ref, n, url, path, size, sha256,"
        " downloaded_at, error)"
        " SELECT j.campaign, j.id, ref, 0, json_extract(jobs.result_urls, '$[0]'),"
        " CASE WHEN p % 200 <> 7 THEN printf('out/%s/%s.%s', j.campaign, j.id,"
        "   CASE j.kind WHEN 'image' THEN 'png' ELSE 'mp4' END) END,"
        " CASE WHEN p % 200 <> 7 THEN 2000000 + p END,"
        " CASE WHEN p % 200 <> 7 THEN printf('%064x', ref * 7) END,"
        f" CASE WHEN p % 200 <> 7 THEN {_stamp('60 + p * 30 + 205')} END,"
        " CASE WHEN p % 200 = 7 THEN 'HTTP 404 from the result URL' END"
        " FROM j JOIN jobs USING (ref) WHERE j.status = 'completed' ORDER BY ref"
    )
    verdict = (
        "INSERT INTO verdicts (campaign, job_id, job_ref, task_id, attempt_id, verdict, note, at)"
        " SELECT j.campaign, j.id, j.ref, printf('task-%07d', j.ref), a.id, {verdict}, {note},"
        " {at} FROM j JOIN attempts a ON a.job_ref = j.ref AND a.state = 'completed'"
        " WHERE j.status = 'completed' AND j.p % 2 = 0 {extra} ORDER BY j.ref"
    )
    db.execute(  # a tenth of the verdicts changed once: the first row of their history
        verdict.format(
            verdict="'approved'",
            note="NULL",
            at=_stamp("86400"),
            extra="AND j.p % 20 = 2",
        )
    )
    db.execute(
        verdict.format(
            verdict="CASE WHEN j.p % 40 = 0 THEN 'rejected' ELSE 'approved' END",
            note="CASE WHEN j.p % 40 = 0 THEN 'the product is cut off at the edge' END",
            at=_stamp("86400 + 600"),
            extra="",
        )
    )
    event = "INSERT INTO events (at, campaign, job_id, kind, detail)"
    db.execute(
        f"{event} SELECT {_stamp('0')}, campaign, NULL, 'ingested',"
        " json_object('new', :per, 'unchanged', 0, 'replaced', 0) FROM j WHERE p = 0",
        params,
    )
    for kind, offset in (("submitted", "60 + p * 30 + 1"), ("completed", "60 + p * 30 + 200")):
        db.execute(
            f"{event} SELECT {_stamp(offset)}, campaign, id, '{kind}',"
            " json_object('task_id', printf('task-%07d', ref)) FROM j"
            " WHERE status = 'completed' ORDER BY ref"
        )
    db.execute("DROP TABLE temp.plan")
    db.execute("DROP TABLE temp.j")
    db.execute("COMMIT")
    counts = {
        table: db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        for table in ("jobs", "attempts", "files", "verdicts", "events")
    }
    db.execute("PRAGMA journal_mode=WAL")  # as batchgen keeps it
    db.close()
    return counts


def cached_ledger(
    folder: Path | None = None, jobs: int = JOBS, campaigns: int = CAMPAIGNS
) -> tuple[Path, float | None]:
    """The year ledger, built into `folder` (default: a batchgen-bench folder in the
    system's temp dir) unless a ledger of the same layout and schema is there already:
    (its path, the seconds the build took, or None when it was reused)."""
    folder = folder or Path(tempfile.gettempdir()) / "batchgen-bench-scale"
    folder.mkdir(parents=True, exist_ok=True)
    schema = ",".join(m.__name__ for m in MIGRATIONS)
    # what the rows depend on: the building code (not the rest of this file) and the schema
    code = "".join(inspect.getsource(f) for f in (build, _stamp)) + _SHAPE + _STATUS
    source = code.encode() + Path(migrations.__file__).read_bytes()
    key = hashlib.sha256(f"{jobs}/{campaigns}/{schema}/{LAYOUT_VERSION}".encode() + source)
    path = folder / f"year-{jobs}-{key.hexdigest()[:12]}.db"
    if path.exists():
        return path, None
    building = path.with_suffix(".building")
    for leftover in folder.glob(f"year-{jobs}-*"):
        leftover.unlink()
    started = time.perf_counter()
    build(building, jobs, campaigns)
    os.replace(building, path)
    return path, time.perf_counter() - started


def database_name(path: Path) -> str:
    """The PostgreSQL database of the cached SQLite ledger at `path` (its layout's key)."""
    return path.stem.replace("-", "_")


def postgres_ledger(server: common.Postgres, path: Path) -> tuple[str, float | None]:
    """The year ledger of `path` as a database of `server`, copied there unless it is
    there already: (its URL, the seconds the copy took, or None when it was reused).

    The copy is the real `batchgen ledger copy SQLITE URL`, into a database of its own
    renamed when done (a copy cut short is never taken for the ledger), then VACUUM
    ANALYZE, the state autovacuum leaves a ledger in: planner statistics, and a
    visibility map for index-only scans.
    """
    name = database_name(path)
    if server.exists(name):
        return server.url(name), None
    prefix = name.rsplit("_", 1)[0]  # year_JOBS: older layouts (and a copy cut short) go
    for (old,) in server.admin("SELECT datname FROM pg_database"):
        if re.fullmatch(rf"{prefix}_[0-9a-f]+(_building)?", old):
            server.drop(old)
    building = f"{name}_building"
    server.admin(f"CREATE DATABASE {building}")
    started = time.perf_counter()
    result, _ = common.batchgen(
        "ledger", "copy", str(path), server.url(building), ledger=path, timeout=3600
    )
    common.check(result)
    import psycopg

    with psycopg.connect(server.url(building), autocommit=True) as connection:
        connection.execute("VACUUM (ANALYZE)")
    server.admin(f"ALTER DATABASE {building} RENAME TO {name}")
    return server.url(name), time.perf_counter() - started


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Build (or find) the year ledger.")
    parser.add_argument("--jobs", type=int, default=JOBS)
    parser.add_argument("--campaigns", type=int, default=CAMPAIGNS)
    common.add_postgres_option(parser)
    args = parser.parse_args()
    found, seconds = cached_ledger(jobs=args.jobs, campaigns=args.campaigns)
    how = f"built in {seconds:.1f} s" if seconds is not None else "reused"
    print(f"{found} ({found.stat().st_size / 2**20:.0f} MB), {how}")
    server = common.postgres_server(args.postgres)
    if server is not None:
        try:
            url, seconds = postgres_ledger(server, found)
            how = f"copied in {seconds:.1f} s" if seconds is not None else "reused"
            print(f"{url} ({server.size(database_name(found))}), {how}")
        finally:
            server.close()

"""The ledger: batchgen's SQLite file, and the only module that speaks SQL.

Every write is one `BEGIN IMMEDIATE` transaction on a WAL database with
`synchronous=FULL`, so a kill -9 at any moment leaves the last committed state, which is
always one the scheduler can resume from. Table and column meanings are in the README.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import socket
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from batchgen import catalog
from batchgen.errors import JobConflict, LedgerBusy, LedgerError
from batchgen.job import Campaign, Job, canonical_json
from batchgen.job import fingerprint as job_fingerprint
from batchgen.migrations import migrate

if TYPE_CHECKING:
    import sqlite_utils

DEFAULT_PATH = "batchgen.db"
UNFINISHED = ("queued", "submitting", "running")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class LedgerJob:
    """A job as the scheduler sees it: enough to submit and poll it."""

    campaign: str
    id: str
    model: str
    kind: str
    request: dict[str, Any]
    fingerprint: str
    price_micros: int
    duration: int | None
    status: str
    task_id: str | None
    attempts: int
    submitted_at: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.campaign, self.id)


@dataclass
class Money:
    """Sums over attempts, in micro-dollars (see the README for each meaning)."""

    spent: int = 0
    in_flight: int = 0
    unknown: int = 0
    refunded: int = 0


@dataclass
class IngestResult:
    new: int
    unchanged: int
    replaced: int


class Ledger:
    def __init__(self, path: str | Path, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.exists():
            raise LedgerError(f"{self.path}: no ledger here (run `batchgen ingest` or `run` first)")
        try:
            self.conn = sqlite3.connect(
                self.path, isolation_level=None, timeout=30, check_same_thread=False
            )
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self.conn.execute("PRAGMA busy_timeout=30000")
            migrate(self.conn)
        except sqlite3.DatabaseError as e:
            raise LedgerError(f"{self.path}: cannot open the ledger: {e}") from e
        self._db: sqlite_utils.Database | None = None

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Read several things as of one moment: in WAL mode every statement of a read
        transaction sees the same committed state, whatever a runner commits meanwhile."""
        self.conn.execute("BEGIN")
        try:
            yield
        finally:
            self.conn.execute("COMMIT")

    def _event(
        self, kind: str, campaign: str | None = None, job_id: str | None = None, **detail: Any
    ) -> None:
        self.conn.execute(
            "INSERT INTO events (at, campaign, job_id, kind, detail) VALUES (?, ?, ?, ?, ?)",
            (now(), campaign, job_id, kind, canonical_json(detail) if detail else None),
        )

    @property
    def db(self) -> sqlite_utils.Database:
        """sqlite-utils on the ledger's connection, imported on first use: its imports
        (numpy among them) take 0.1 s, which no command needs to pay before answering."""
        if self._db is None:
            import sqlite_utils

            self._db = sqlite_utils.Database(self.conn)
        return self._db

    def query(self, sql: str, params: Iterable[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        return list(
            _dicts(self.conn.execute(sql, params if isinstance(params, dict) else list(params)))
        )

    # ---------------------------------------------------------------- ingest

    def existing_fingerprints(self, campaign: str) -> dict[str, tuple[str, str]]:
        """id -> (fingerprint, status) of every job already in the campaign."""
        rows = self.conn.execute(
            "SELECT id, fingerprint, status FROM jobs WHERE campaign = ?", (campaign,)
        )
        return {job_id: (fp, status) for job_id, fp, status in rows}

    def ingest(
        self, campaign: Campaign, jobs: Iterable[Job], replace: bool = False
    ) -> IngestResult:
        """Add the campaign's new jobs; a job whose content changed is an error unless `replace`.

        All or nothing: on a conflict no row is written.
        """
        existing = self.existing_fingerprints(campaign.name)
        stamp = now()
        rows = _JobRows(stamp)
        new_rows: list[tuple[Any, ...]] = []
        changed: list[tuple[Job, str, int, dict[str, Any]]] = []
        unchanged = 0
        for job in jobs:
            row = rows.row(job)
            fingerprint = row[12]
            old = existing.get(job.id)
            if old is None:
                new_rows.append(row)
            elif old[0] == fingerprint:
                unchanged += 1
            else:
                request = job.request()
                changed.append((job, fingerprint, catalog.price_micros(request), request))
        if changed and not replace:
            names = ", ".join(job.id for job, *_ in changed[:5])
            more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
            raise JobConflict(
                f"campaign {campaign.name}: job {names}{more} changed under the same id "
                "(give it a new id, or ingest with --replace)"
            )
        busy = [job.id for job, *_ in changed if existing[job.id][1] in ("submitting", "running")]
        if busy:
            raise JobConflict(
                f"campaign {campaign.name}: job {busy[0]} is in flight and cannot "
                "be replaced now; wait for it to finish"
            )
        with self.transaction() as db:
            db.execute(
                "INSERT INTO campaigns (name, manifest_path, manifest_sha256, budget_micro_usd,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET manifest_path = excluded.manifest_path,"
                " manifest_sha256 = excluded.manifest_sha256,"
                " budget_micro_usd = excluded.budget_micro_usd, updated_at = excluded.updated_at",
                (
                    campaign.name,
                    campaign.manifest_path,
                    campaign.manifest_sha256,
                    campaign.budget_micros,
                    stamp,
                    stamp,
                ),
            )
            start = db.execute(
                "SELECT COALESCE(MAX(position), -1) + 1 FROM jobs WHERE campaign = ?",
                (campaign.name,),
            ).fetchone()[0]
            db.executemany(
                f"INSERT INTO jobs ({', '.join(JOB_INSERT_COLUMNS)}) VALUES "
                f"({', '.join('?' * len(JOB_INSERT_COLUMNS))})",
                ((campaign.name, start + i, *row) for i, row in enumerate(new_rows)),
            )
            for job, fingerprint, price, request in changed:
                db.execute(
                    "UPDATE jobs SET model=?, kind=?, prompt=?, duration=?, ratio=?, variant=?,"
                    " ref_mode=?, resolution=?, media=?, tags=?, request=?, fingerprint=?,"
                    " price_micro_usd=?, status='queued', reason=NULL, task_id=NULL,"
                    " progress=NULL, result_urls=NULL, cost_micro_usd=0, attempts=0,"
                    " last_error=NULL, updated_at=?, submitted_at=NULL, finished_at=NULL"
                    " WHERE campaign=? AND id=?",
                    (
                        *_job_row(job, request, fingerprint, price, stamp)[1:13],
                        stamp,
                        campaign.name,
                        job.id,
                    ),
                )
                db.execute(
                    "DELETE FROM files WHERE campaign=? AND job_id=?", (campaign.name, job.id)
                )
                self._event("replaced", campaign.name, job.id, fingerprint=fingerprint)
            self._event(
                "ingested",
                campaign.name,
                new=len(new_rows),
                unchanged=unchanged,
                replaced=len(changed),
            )
        return IngestResult(len(new_rows), unchanged, len(changed))

    def campaign_names(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT name FROM campaigns ORDER BY name")]

    def campaign(self, name: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM campaigns WHERE name = ?", [name])
        return rows[0] if rows else None

    # ---------------------------------------------------------------- the runner lock

    def acquire_runner(self, command: str) -> None:
        """Become the ledger's only runner, or raise LedgerBusy naming the live one."""
        host, pid = socket.gethostname(), os.getpid()
        with self.transaction() as db:
            row = db.execute("SELECT pid, host, command, started_at FROM runner").fetchone()
            if row and not (row[0] == pid and row[1] == host) and _alive(row[0], row[1]):
                raise LedgerBusy(
                    f"{self.path}: another batchgen `{row[2]}` is running on this ledger "
                    f"(pid {row[0]} on {row[1]}, since {row[3]}); wait for it or stop it"
                )
            if row:
                self._event("runner_taken_over", pid=row[0], host=row[1], since=row[3])
            db.execute(
                "INSERT OR REPLACE INTO runner VALUES (1, ?, ?, ?, ?)", (pid, host, command, now())
            )

    def release_runner(self) -> None:
        with self.transaction() as db:
            db.execute(
                "DELETE FROM runner WHERE pid = ? AND host = ?", (os.getpid(), socket.gethostname())
            )

    # ---------------------------------------------------------------- scheduling

    _LEDGER_JOB = (
        "SELECT campaign, id, model, kind, request, fingerprint, price_micro_usd, duration,"
        " status, task_id, attempts, submitted_at, position FROM jobs"
    )

    def unfinished_jobs(
        self, campaigns: list[str] | None = None, statuses: tuple[str, ...] = UNFINISHED
    ) -> list[LedgerJob]:
        """Jobs still to take to an end (or in `statuses`), in ingestion order."""
        where, params = _campaign_filter(campaigns)
        rows = self.conn.execute(
            f"{self._LEDGER_JOB} WHERE status IN ({', '.join('?' * len(statuses))}) {where}"
            " ORDER BY campaign, position",
            [*statuses, *params],
        )
        return [_ledger_job(row) for row in rows]

    def queued_jobs(
        self, campaigns: list[str] | None = None, page: int = 500
    ) -> Iterator[LedgerJob]:
        """Queued jobs in ingestion order, read `page` at a time as they are wanted, so a
        run starts at once on a 100,000-job ledger and holds one page, not all of them.

        Each page is a fresh query after the last (campaign, position) read (the
        jobs_by_status index): jobs this run has moved on are behind it, and jobs
        ingested meanwhile are picked up at the end.
        """
        where, params = _campaign_filter(campaigns)
        after: tuple[str, int] = ("", -1)
        while True:
            rows = self.conn.execute(
                f"{self._LEDGER_JOB} WHERE status = 'queued' {where}"
                " AND (campaign, position) > (?, ?) ORDER BY campaign, position LIMIT ?",
                [*params, *after, page],
            ).fetchall()
            yield from (_ledger_job(row) for row in rows)
            if len(rows) < page:
                return
            after = (rows[-1][0], rows[-1][-1])

    def count_held(self, campaigns: list[str] | None = None) -> int:
        where, params = _campaign_filter(campaigns)
        return int(
            self.conn.execute(
                f"SELECT COUNT(*) FROM jobs WHERE status = 'held' {where}", params
            ).fetchone()[0]
        )

    def begin_attempt(self, job: LedgerJob) -> int:
        """Commit the intent to submit before the request is sent: a crash after sending
        must leave a trace, which resume reads as an attempt of unknown outcome."""
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO attempts (campaign, job_id, started_at, fingerprint,"
                " unit_price_micro_usd, state) VALUES (?, ?, ?, ?, ?, 'sending')",
                (job.campaign, job.id, now(), job.fingerprint, job.price_micros),
            )
            db.execute(
                "UPDATE jobs SET status='submitting', reason=NULL, updated_at=?"
                " WHERE campaign=? AND id=?",
                (now(), job.campaign, job.id),
            )
        job.status = "submitting"
        return int(cursor.lastrowid or 0)

    def attempt_created(
        self, job: LedgerJob, attempt_id: int, http_status: int, task_id: str
    ) -> None:
        stamp = now()
        with self.transaction() as db:
            db.execute(
                "UPDATE attempts SET state='running', outcome='created', http_status=?,"
                " task_id=?, answered_at=?, cost_micro_usd=unit_price_micro_usd WHERE id=?",
                (http_status, task_id, stamp, attempt_id),
            )
            db.execute(
                "UPDATE jobs SET status='running', task_id=?, progress=0, attempts=attempts+1,"
                " submitted_at=?, updated_at=? WHERE campaign=? AND id=?",
                (task_id, stamp, stamp, job.campaign, job.id),
            )
            self._event("submitted", job.campaign, job.id, task_id=task_id, attempt=attempt_id)
        job.status, job.task_id, job.submitted_at = "running", task_id, stamp
        job.attempts += 1

    def attempt_ended(
        self,
        job: LedgerJob,
        attempt_id: int,
        *,
        state: str,
        outcome: str,
        counted: bool,
        job_status: str,
        http_status: int | None = None,
        error: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Close an attempt that created no known task (not_sent, error, rejected, unknown)
        and move its job on to `job_status` (queued, held or failed)."""
        stamp = now()
        possible = state == "unknown"
        with self.transaction() as db:
            db.execute(
                "UPDATE attempts SET state=?, outcome=?, counted=?, http_status=?, error=?,"
                " answered_at=?, finished_at=?,"
                " cost_micro_usd = CASE WHEN ? THEN unit_price_micro_usd ELSE 0 END WHERE id=?",
                (
                    state,
                    outcome,
                    int(counted),
                    http_status,
                    error,
                    stamp,
                    stamp,
                    possible,
                    attempt_id,
                ),
            )
            db.execute(
                "UPDATE jobs SET status=?, reason=?, attempts=attempts+?,"
                " last_error=COALESCE(?, last_error), updated_at=?,"
                " finished_at=CASE WHEN ?='failed' THEN ? ELSE finished_at END"
                " WHERE campaign=? AND id=?",
                (
                    job_status,
                    reason,
                    int(counted),
                    error,
                    stamp,
                    job_status,
                    stamp,
                    job.campaign,
                    job.id,
                ),
            )
            if counted or job_status != "queued":
                self._event(
                    f"attempt_{state}",
                    job.campaign,
                    job.id,
                    attempt=attempt_id,
                    http_status=http_status,
                    error=error,
                    job_status=job_status,
                )
        job.status = job_status
        job.attempts += int(counted)

    def interrupted_submissions(
        self, campaigns: list[str] | None = None
    ) -> list[tuple[int, str, str]]:
        """(attempt id, campaign, job id) of attempts left `sending` by a process that died
        between committing its intent and recording the answer: their outcome is unknown."""
        where, params = _campaign_filter(campaigns)
        rows = self.conn.execute(
            f"SELECT id, campaign, job_id FROM attempts WHERE state = 'sending' {where}"
            " ORDER BY id",
            params,
        )
        return [(a, c, j) for a, c, j in rows]

    def task_progress(self, job: LedgerJob, progress: int) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET progress=?, updated_at=? WHERE campaign=? AND id=?",
                (progress, now(), job.campaign, job.id),
            )

    def task_completed(self, job: LedgerJob, result_urls: list[str]) -> None:
        stamp = now()
        with self.transaction() as db:
            db.execute(
                "UPDATE attempts SET state='completed', finished_at=? WHERE campaign=?"
                " AND job_id=? AND task_id=? AND state='running'",
                (stamp, job.campaign, job.id, job.task_id),
            )
            db.execute(
                "UPDATE jobs SET status='completed', reason=NULL, progress=100, result_urls=?,"
                " cost_micro_usd=(SELECT COALESCE(SUM(cost_micro_usd), 0) FROM attempts"
                "   WHERE campaign=? AND job_id=? AND state='completed'),"
                " updated_at=?, finished_at=? WHERE campaign=? AND id=?",
                (json.dumps(result_urls), job.campaign, job.id, stamp, stamp, job.campaign, job.id),
            )
            self._event("completed", job.campaign, job.id, task_id=job.task_id)
        job.status = "completed"

    def task_failed(self, job: LedgerJob, message: str, job_status: str) -> None:
        """The service says the task failed: refunded (catalog), then queued again or failed."""
        refunded = catalog.load().failed_tasks_refunded
        stamp = now()
        with self.transaction() as db:
            db.execute(
                "UPDATE attempts SET state='failed', error=?, finished_at=?,"
                " refunded_micro_usd = CASE WHEN ? THEN cost_micro_usd ELSE 0 END,"
                " cost_micro_usd = CASE WHEN ? THEN 0 ELSE cost_micro_usd END"
                " WHERE campaign=? AND job_id=? AND task_id=? AND state='running'",
                (message, stamp, refunded, refunded, job.campaign, job.id, job.task_id),
            )
            db.execute(
                "UPDATE jobs SET status=?, task_id=NULL, progress=NULL, last_error=?,"
                " updated_at=?, finished_at=CASE WHEN ?='failed' THEN ? ELSE NULL END"
                " WHERE campaign=? AND id=?",
                (
                    job_status,
                    f"task failed: {message}",
                    stamp,
                    job_status,
                    stamp,
                    job.campaign,
                    job.id,
                ),
            )
            self._event(
                "task_failed",
                job.campaign,
                job.id,
                task_id=job.task_id,
                error=message,
                job_status=job_status,
            )
        job.status, job.task_id = job_status, None

    def set_reason(self, keys: list[tuple[str, str]], reason: str | None) -> None:
        """Say why queued jobs wait (e.g. budget), all in one transaction."""
        stamp = now()
        with self.transaction() as db:
            db.executemany(
                "UPDATE jobs SET reason=?, updated_at=? WHERE campaign=? AND id=?"
                " AND status='queued'",
                ((reason, stamp, campaign, job_id) for campaign, job_id in keys),
            )

    def log(
        self, kind: str, campaign: str | None = None, job_id: str | None = None, **detail: Any
    ) -> None:
        with self.transaction():
            self._event(kind, campaign, job_id, **detail)

    def fail_job(self, job: LedgerJob, error: str) -> None:
        """Give up on a job that has used all its attempts."""
        stamp = now()
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET status='failed', reason=NULL,"
                " last_error=? || COALESCE('; last error: ' || last_error, ''), updated_at=?,"
                " finished_at=? WHERE campaign=? AND id=?",
                (error, stamp, stamp, job.campaign, job.id),
            )
            self._event("failed", job.campaign, job.id, error=error)
        job.status = "failed"

    RECENT_TASKS = 5000  # how many completed tasks generation_seconds averages over

    def generation_seconds(self) -> dict[tuple[str, int | None], float]:
        """Mean seconds from task creation to seen completion, per (model, duration), over
        the RECENT_TASKS most recently started completed tasks: how the service runs now,
        read in milliseconds on any ledger (not a join over every attempt ever made)."""
        rows = self.conn.execute(
            "SELECT j.model, j.duration,"
            " AVG((julianday(a.finished_at) - julianday(a.answered_at)) * 86400)"
            # `+state`: walk attempts newest first and stop at the limit, rather than
            # sort every completed attempt found through attempts_by_state.
            " FROM (SELECT campaign, job_id, answered_at, finished_at FROM attempts"
            "   WHERE +state = 'completed' ORDER BY id DESC LIMIT ?) a"
            " JOIN jobs j ON j.campaign = a.campaign AND j.id = a.job_id"
            " GROUP BY j.model, j.duration",
            (self.RECENT_TASKS,),
        )
        return {(model, duration): float(mean) for model, duration, mean in rows if mean}

    # ---------------------------------------------------------------- money and status

    def money(self, campaigns: list[str] | None = None) -> Money:
        """Spent, in flight, unknown and refunded over the selected campaigns' attempts."""
        where, params = _campaign_filter(campaigns, "a.campaign")
        sums = ", ".join(f"COALESCE(SUM({expr}), 0)" for expr in self._ATTEMPT_MONEY)
        row = self.conn.execute(f"SELECT {sums} FROM attempts a WHERE 1=1 {where}", params)
        return Money(*row.fetchone())

    def budget_micros(self, campaign: str) -> int | None:
        row = self.conn.execute(
            "SELECT budget_micro_usd FROM campaigns WHERE name=?", (campaign,)
        ).fetchone()
        return None if row is None else row[0]

    def counts(self, campaigns: list[str] | None = None) -> dict[str, int]:
        where, params = _campaign_filter(campaigns)
        counts = dict.fromkeys(
            ("queued", "submitting", "running", "completed", "failed", "held"), 0
        )
        for status, n in self.conn.execute(
            f"SELECT status, COUNT(*) FROM jobs WHERE 1=1 {where} GROUP BY status", params
        ):
            counts[status] = n
        return counts

    # ---------------------------------------------------------------- reports and results (read side)  # noqa: E501
    # What status, report, plan and download read, and the few writes they own (file records,
    # requeue). Money follows the attempt-state rules in migrations.py, written once here.

    _ATTEMPT_MONEY = (
        "CASE WHEN a.state IN ('completed', 'failed') THEN a.cost_micro_usd ELSE 0 END",
        "CASE WHEN a.state = 'running' THEN a.cost_micro_usd ELSE 0 END",
        "CASE WHEN a.state IN ('unknown', 'sending') THEN a.unit_price_micro_usd ELSE 0 END",
        "a.refunded_micro_usd",
    )

    @classmethod
    def read_only(cls, path: str | Path) -> Ledger:
        """Open an existing ledger without migrating or writing anything (SQLite mode=ro).

        SQLite may leave its empty `-wal`/`-shm` companions beside a WAL ledger; the
        ledger's content is never changed.
        """
        ledger = cls.__new__(cls)
        ledger.path = Path(path)
        if not ledger.path.is_file():
            raise LedgerError(f"{ledger.path}: no ledger here")
        uri = f"file:{quote(str(ledger.path.resolve()))}?mode=ro"
        try:
            ledger.conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30)
            ledger.conn.execute("PRAGMA busy_timeout=30000")
            ledger.conn.execute("SELECT 1 FROM jobs LIMIT 1").fetchall()
        except sqlite3.DatabaseError as e:
            raise LedgerError(f"{ledger.path}: cannot read the ledger: {e}") from e
        ledger._db = None
        return ledger

    def select_campaigns(self, campaigns: list[str] | None) -> list[str]:
        """The campaigns named (all of them when none is): an unknown name is an error."""
        known = self.campaign_names()
        if not campaigns:
            return known
        unknown = [c for c in campaigns if c not in known]
        if unknown:
            raise LedgerError(
                f"{self.path}: no campaign named {', '.join(unknown)} "
                f"(known: {', '.join(known) or 'none'})"
            )
        return list(dict.fromkeys(campaigns))

    def budgets(self, campaigns: list[str] | None = None) -> dict[str, int | None]:
        """campaign -> budget in micro-dollars (None: no cap)."""
        where, params = _campaign_filter(campaigns, "name")
        rows = self.conn.execute(
            f"SELECT name, budget_micro_usd FROM campaigns WHERE 1=1 {where} ORDER BY name",
            params,
        )
        return {name: budget for name, budget in rows}

    def money_by_campaign(self, campaigns: list[str] | None = None) -> dict[str, Money]:
        """Money (see `money`) of each campaign that has attempts."""
        where, params = _campaign_filter(campaigns, "a.campaign")
        sums = ", ".join(f"SUM({expr})" for expr in self._ATTEMPT_MONEY)
        rows = self.conn.execute(
            f"SELECT a.campaign, {sums} FROM attempts a WHERE 1=1 {where} GROUP BY a.campaign",
            params,
        )
        return {campaign: Money(*sums_) for campaign, *sums_ in rows}

    def status_jobs(self, campaigns: list[str] | None = None) -> list[dict[str, Any]]:
        """Every job, in ingestion order, as the `status --json` entry (campaign, id, status,
        model, attempts, task_id, cost_usd, result_urls, files, error) except that cost_usd is
        still integer micro-dollars: the job's `cost_micro_usd`. Saved files are the paths
        `download` recorded without error.

        SQLite builds the whole array in one query and Python parses it in one call: about
        3x faster on 100,000 jobs than building the entries row by row.
        """
        where, params = _campaign_filter(campaigns)
        (text,) = self.conn.execute(
            "WITH f AS (SELECT campaign, job_id, json_group_array(path) AS paths"
            "   FROM (SELECT campaign, job_id, path FROM files"
            f"    WHERE error IS NULL AND downloaded_at IS NOT NULL {where}"
            "     ORDER BY campaign, job_id, n)"
            "   GROUP BY campaign, job_id)"
            " SELECT json_group_array(json_object('campaign', j.campaign, 'id', j.id,"
            " 'status', j.status, 'model', j.model, 'attempts', j.attempts,"
            " 'task_id', j.task_id, 'cost_usd', j.cost_micro_usd,"
            " 'result_urls', json(COALESCE(j.result_urls, '[]')),"
            " 'files', json(COALESCE(f.paths, '[]')), 'error', j.last_error))"
            f" FROM (SELECT * FROM jobs WHERE 1=1 {where} ORDER BY campaign, position) j"
            " LEFT JOIN f ON f.campaign = j.campaign AND f.job_id = j.id",
            [*params, *params],
        ).fetchone()
        with _collector_paused():
            jobs: list[dict[str, Any]] = json.loads(text)
        return jobs

    def queued_reasons(self, campaigns: list[str] | None = None) -> dict[str | None, int]:
        """reason -> number of queued jobs waiting for it (None: nothing in the way)."""
        where, params = _campaign_filter(campaigns)
        rows = self.conn.execute(
            f"SELECT reason, COUNT(*) FROM jobs WHERE status = 'queued' {where} GROUP BY reason",
            params,
        )
        return {reason: n for reason, n in rows}

    def jobs_in_status(
        self, campaigns: list[str] | None, status: str, limit: int, recent_first: bool = False
    ) -> list[dict[str, Any]]:
        """Up to `limit` jobs in `status`: in ingestion order, or most recently changed first."""
        where, params = _campaign_filter(campaigns)
        order = "updated_at DESC" if recent_first else "campaign, position"
        return self.query(
            "SELECT campaign, id, model, task_id, progress, reason, attempts, last_error,"
            " submitted_at, updated_at, finished_at"
            f" FROM jobs WHERE status = ? {where} ORDER BY {order} LIMIT ?",
            [status, *params, limit],
        )

    def runner(self) -> dict[str, Any] | None:
        """The runner that holds the ledger, if it is alive."""
        rows = self.query("SELECT pid, host, command, started_at FROM runner")
        if rows and _alive(rows[0]["pid"], rows[0]["host"]):
            return rows[0]
        return None

    def report_groups(self, campaigns: list[str] | None, by: str | None) -> list[dict[str, Any]]:
        """One row of sums per value of `by` (campaign, model, tag, status), sorted by key;
        `by=None`: one row of totals. A job with several tags counts in each tag's group.

        Columns: key, jobs, completed, failed, queued, spent, in_flight, unknown, refunded
        (micro-dollars), video_seconds, images.
        """
        where, params = _campaign_filter(campaigns, "j.campaign")
        attempt_where, attempt_params = _campaign_filter(campaigns, "a.campaign")
        spent, in_flight, unknown, refunded = self._ATTEMPT_MONEY
        tagged, tag_join, group = "", "", "GROUP BY key ORDER BY key"
        tag_params: list[Any] = []
        if by is None:
            key, group = "'TOTAL'", ""
        elif by == "tag":
            key = "COALESCE(k.tag, '(none)')"
            # DISTINCT: a tag listed twice on one job counts once.
            tagged = (
                ", k AS (SELECT DISTINCT j.campaign, j.id AS job_id, t.value AS tag"
                f" FROM jobs j, json_each(j.tags) t WHERE 1=1 {where})"
            )
            tag_params = params
            tag_join = " LEFT JOIN k ON k.campaign = j.campaign AND k.job_id = j.id"
        elif by in ("campaign", "model", "status"):
            key = f"j.{by}"
        else:
            raise ValueError(f"cannot group by {by!r}")
        return self.query(
            "WITH m AS (SELECT a.campaign, a.job_id,"
            f" SUM({spent}) AS spent, SUM({in_flight}) AS in_flight,"
            f" SUM({unknown}) AS unknown, SUM({refunded}) AS refunded"
            f" FROM attempts a WHERE 1=1 {attempt_where} GROUP BY a.campaign, a.job_id){tagged}"
            f" SELECT {key} AS key, COUNT(*) AS jobs,"
            " COALESCE(SUM(j.status = 'completed'), 0) AS completed,"
            " COALESCE(SUM(j.status = 'failed'), 0) AS failed,"
            " COALESCE(SUM(j.status = 'queued'), 0) AS queued,"
            " COALESCE(SUM(m.spent), 0) AS spent, COALESCE(SUM(m.in_flight), 0) AS in_flight,"
            " COALESCE(SUM(m.unknown), 0) AS unknown, COALESCE(SUM(m.refunded), 0) AS refunded,"
            " COALESCE(SUM(CASE WHEN j.status = 'completed' AND j.kind = 'video'"
            "   THEN COALESCE(j.duration, 0) ELSE 0 END), 0) AS video_seconds,"
            " COALESCE(SUM(j.status = 'completed' AND j.kind = 'image'), 0) AS images"
            " FROM jobs j LEFT JOIN m ON m.campaign = j.campaign AND m.job_id = j.id"
            f"{tag_join} WHERE 1=1 {where} {group}",
            [*attempt_params, *tag_params, *params],
        )

    def job_attempts(self, campaigns: list[str] | None = None) -> Iterator[dict[str, Any]]:
        """Every job with each of its attempts (one row per attempt; a job without attempts
        gives one row whose attempt columns are NULL), in ingestion then attempt order.

        Per attempt: spent, in_flight, unknown, refunded (its money, by the rules; 0 when
        the job has no attempt).
        """
        where, params = _campaign_filter(campaigns, "j.campaign")
        spent, in_flight, unknown, refunded = self._ATTEMPT_MONEY
        return _dicts(
            self.conn.execute(
                "SELECT j.campaign, j.id, j.model, j.status, j.tags, j.duration, j.variant,"
                " j.price_micro_usd, j.task_id AS job_task_id, j.last_error,"
                " a.id AS attempt_id, a.started_at, a.http_status, a.outcome, a.state,"
                " a.task_id, a.unit_price_micro_usd, a.cost_micro_usd, a.refunded_micro_usd,"
                " a.error,"
                f" {spent} AS spent, {in_flight} AS in_flight, {unknown} AS unknown,"
                f" COALESCE({refunded}, 0) AS refunded"
                " FROM jobs j LEFT JOIN attempts a ON a.campaign = j.campaign AND a.job_id = j.id"
                f" WHERE 1=1 {where} ORDER BY j.campaign, j.position, a.id",
                params,
            )
        )

    def result_files(
        self, campaigns: list[str] | None = None, job: tuple[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """One row per result URL of each completed job (or of one job), with what the
        `files` table recorded for it: campaign, job_id, n (index in result_urls), count
        (of the job's URLs), url, saved_url, path, size, sha256, downloaded_at."""
        where, params = _campaign_filter(campaigns, "j.campaign")
        if job is not None:
            where, params = "AND j.campaign = ? AND j.id = ?", list(job)
        return self.query(
            "SELECT j.campaign, j.id AS job_id, u.key AS n,"
            " json_array_length(j.result_urls) AS count, u.value AS url, f.url AS saved_url,"
            " f.path, f.size, f.sha256, f.downloaded_at"
            " FROM jobs j JOIN json_each(j.result_urls) u"
            " LEFT JOIN files f ON f.campaign = j.campaign AND f.job_id = j.id AND f.n = u.key"
            f" WHERE j.status = 'completed' AND j.result_urls IS NOT NULL {where}"
            " ORDER BY j.campaign, j.position, u.key",
            params,
        )

    def file_saved(
        self, campaign: str, job_id: str, n: int, url: str, path: str, size: int, sha256: str
    ) -> None:
        """Record a result file saved (or found intact) at `path`."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO files (campaign, job_id, n, url, path, size, sha256, downloaded_at,"
                " error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)"
                " ON CONFLICT (campaign, job_id, n) DO UPDATE SET url = excluded.url,"
                " path = excluded.path, size = excluded.size, sha256 = excluded.sha256,"
                " downloaded_at = excluded.downloaded_at, error = NULL",
                (campaign, job_id, n, url, path, size, sha256, now()),
            )

    def file_failed(self, campaign: str, job_id: str, n: int, url: str, error: str) -> None:
        """Record a download that failed: `download` tries it again, generation never does."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO files (campaign, job_id, n, url, error) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (campaign, job_id, n) DO UPDATE SET url = excluded.url,"
                " path = NULL, size = NULL, sha256 = NULL, downloaded_at = NULL,"
                " error = excluded.error",
                (campaign, job_id, n, url, error),
            )

    def requeue(self, campaigns: list[str] | None, status: str) -> int:
        """Put `failed` (or `held`) jobs back to `queued` with fresh attempts; their old
        attempts stay in the audit, and each requeue is an event."""
        if status not in ("failed", "held"):
            raise ValueError(f"only failed or held jobs can be requeued, not {status!r}")
        where, params = _campaign_filter(self.select_campaigns(campaigns) if campaigns else None)
        stamp = now()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO events (at, campaign, job_id, kind, detail)"
                " SELECT ?, campaign, id, 'requeued', json_object('attempts', attempts,"
                " 'from', status, 'last_error', last_error)"
                f" FROM jobs WHERE status = ? {where} ORDER BY campaign, position",
                (stamp, status, *params),
            )
            cursor = db.execute(
                "UPDATE jobs SET status = 'queued', attempts = 0, reason = NULL, task_id = NULL,"
                " progress = NULL, last_error = NULL, submitted_at = NULL, finished_at = NULL,"
                f" updated_at = ? WHERE status = ? {where}",
                (stamp, status, *params),
            )
        return cursor.rowcount


JOB_INSERT_COLUMNS = (
    "campaign",
    "position",
    "id",
    "model",
    "kind",
    "prompt",
    "duration",
    "ratio",
    "variant",
    "ref_mode",
    "resolution",
    "media",
    "tags",
    "request",
    "fingerprint",
    "price_micro_usd",
    "created_at",
    "updated_at",
)


class _JobRows:
    """The `jobs` rows of expanded jobs (JOB_INSERT_COLUMNS from `id` on), fast.

    100,000 jobs usually come in a handful of shapes (model, duration, ratio, ...) that
    differ only in their prompt: the request body, its price and its canonical JSON
    around the prompt are worked out once per shape, and the fingerprint is hashed from
    that text. Rows are exactly what `_job_row` makes (bench/ingest.py checks it); jobs
    with media (URLs are per job) take `_job_row`'s way.
    """

    _PROMPT = "\x00batchgen-prompt\x00"  # stands for the prompt while a shape is spelled

    def __init__(self, stamp: str):
        self.stamp = stamp
        self.catalog = catalog.load()
        self.shapes: dict[tuple[Any, ...], tuple[Any, ...] | None] = {}
        self.tags: dict[tuple[str, ...], tuple[str, str]] = {}
        self.encode = json.JSONEncoder(ensure_ascii=False).encode  # canonical_json's strings

    def row(self, job: Job) -> tuple[Any, ...]:
        shape = self._shape(job) if not job.media and isinstance(job.prompt, str) else None
        if shape is None:
            request = job.request()
            fingerprint = job_fingerprint(request, job.tags)
            price = catalog.price_micros(request, self.catalog)
            return _job_row(job, request, fingerprint, price, self.stamp)
        kind, before, after, price, values = shape
        request_json = before + self.encode(job.prompt) + after
        tags = self.tags.get(tuple(job.tags))
        if tags is None:
            tags = self.tags[tuple(job.tags)] = (
                json.dumps(job.tags),
                canonical_json(sorted(job.tags)),
            )
        # canonical_json({"request": request, "tags": sorted(tags)}), spelled from its parts
        content = '{"request":' + request_json + ',"tags":' + tags[1] + "}"
        fingerprint = hashlib.sha256(content.encode()).hexdigest()
        return (
            job.id,
            job.model,
            kind,
            job.prompt,
            *values,
            None,
            tags[0],
            request_json,
            fingerprint,
            price,
            self.stamp,
            self.stamp,
        )

    def _shape(self, job: Job) -> tuple[Any, ...] | None:
        key = (
            job.model,
            job.duration,
            type(job.duration),
            job.ratio,
            job.variant,
            job.ref_mode,
            job.resolution,
        )
        if key not in self.shapes:
            self.shapes[key] = self._spell(job)
        return self.shapes[key]

    def _spell(self, job: Job) -> tuple[Any, ...] | None:
        model = self.catalog.model(job.model)
        if model is None:
            return None
        request = Job(
            job.campaign,
            job.id,
            job.model,
            self._PROMPT,
            job.duration,
            job.ratio,
            job.variant,
            job.ref_mode,
            job.resolution,
        ).request()
        text = canonical_json(request)
        marker = self.encode(self._PROMPT)
        if text.count(marker) != 1:
            return None
        before, after = text.split(marker)
        values = tuple(
            request.get(f) for f in ("duration", "ratio", "variant", "ref_mode", "resolution")
        )
        return model.kind, before, after, catalog.price_micros(request, self.catalog), values


def _job_row(
    job: Job, request: dict[str, Any], fingerprint: str, price: int, stamp: str
) -> tuple[Any, ...]:
    model = catalog.load().model(job.model)
    assert model is not None
    return (
        job.id,
        job.model,
        model.kind,
        job.prompt,
        request.get("duration"),
        request.get("ratio"),
        request.get("variant"),
        request.get("ref_mode"),
        request.get("resolution"),
        json.dumps(request["media"]) if "media" in request else None,
        json.dumps(job.tags),
        canonical_json(request),
        fingerprint,
        price,
        stamp,
        stamp,
    )


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a burst of objects without cycles is
    built (100,000 parsed dicts): it would otherwise rescan every live object again and
    again meanwhile, doubling the time. Whatever it would have freed, it frees after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _dicts(cursor: sqlite3.Cursor) -> Iterator[dict[str, Any]]:
    """The rows of a query as dicts by column name (as sqlite-utils' `query` gives them)."""
    keys = [column[0] for column in cursor.description]
    return (dict(zip(keys, row, strict=True)) for row in cursor)


def _ledger_job(row: tuple[Any, ...]) -> LedgerJob:
    """A row of `Ledger._LEDGER_JOB` as a LedgerJob."""
    c, i, m, k, r, fp, p, d, s, t, a, sa, _ = row
    return LedgerJob(c, i, m, k, json.loads(r), fp, p, d, s, t, a, sa)


def _campaign_filter(
    campaigns: list[str] | None, column: str = "campaign"
) -> tuple[str, list[Any]]:
    if not campaigns:
        return "", []
    return f"AND {column} IN ({', '.join('?' * len(campaigns))})", list(campaigns)


def _alive(pid: int, host: str) -> bool:
    if host != socket.gethostname():
        return True  # cannot tell from here: assume it lives
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

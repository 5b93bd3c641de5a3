"""What the scheduler reads and writes: the runner lock, the jobs to run, each attempt's
intent and outcome, and the money, counts and timings it decides by."""

from __future__ import annotations

import json
import os
import socket
import statistics
from collections.abc import Iterator
from typing import Any

from batchgen import catalog
from batchgen.errors import LedgerBusy
from batchgen.ledger.base import (
    UNFINISHED,
    LedgerBase,
    LedgerJob,
    Money,
    _alive,
    _campaign_filter,
    now,
)


class SchedulingMixin(LedgerBase):
    """The ledger's runner lock, scheduling writes, money and counts."""

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

    def task_completed(
        self, job: LedgerJob, result_urls: list[str], observed_seconds: float | None = None
    ) -> None:
        """The task completed; `observed_seconds` is its generation time when this process
        followed it from its submission (None when it was taken over on resume)."""
        stamp = now()
        with self.transaction() as db:
            db.execute(
                "UPDATE attempts SET state='completed', finished_at=?, observed_seconds=?"
                " WHERE campaign=? AND job_id=? AND task_id=? AND state='running'",
                (stamp, observed_seconds, job.campaign, job.id, job.task_id),
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

    RECENT_TASKS = 5000  # how many observed generation times are read, newest first

    def observed_times(self) -> dict[tuple[str, int | None], list[float]]:
        """Generation times per (model, duration), oldest first, of the RECENT_TASKS most
        recent tasks a process followed from submission to completion (never one taken
        over on resume, whose time includes the time no process ran): how the service
        runs now, read in milliseconds on any ledger."""
        rows = self.conn.execute(
            "SELECT j.model, j.duration, a.observed_seconds"
            " FROM (SELECT id, campaign, job_id, observed_seconds FROM attempts"
            "   WHERE observed_seconds IS NOT NULL ORDER BY id DESC LIMIT ?) a"
            " JOIN jobs j ON j.campaign = a.campaign AND j.id = a.job_id"
            " ORDER BY a.id",
            (self.RECENT_TASKS,),
        )
        times: dict[tuple[str, int | None], list[float]] = {}
        for model, duration, seconds in rows:
            times.setdefault((model, duration), []).append(float(seconds))
        return times

    def generation_seconds(self) -> dict[tuple[str, int | None], float]:
        """The median observed generation time per (model, duration) (see observed_times):
        a median, so a few odd tasks do not move it."""
        return {key: statistics.median(times) for key, times in self.observed_times().items()}

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

    def queued_shapes(
        self, campaigns: list[str] | None = None
    ) -> dict[tuple[str, int | None], int]:
        """How many jobs wait to be submitted, per (model, duration): for the run's ETA."""
        where, params = _campaign_filter(campaigns)
        rows = self.conn.execute(
            "SELECT model, duration, COUNT(*) FROM jobs"
            f" WHERE status IN ('queued', 'submitting') {where} GROUP BY model, duration",
            params,
        )
        return {(model, duration): n for model, duration, n in rows}

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


def _ledger_job(row: tuple[Any, ...]) -> LedgerJob:
    """A row of `Ledger._LEDGER_JOB` as a LedgerJob."""
    c, i, m, k, r, fp, p, d, s, t, a, sa, _ = row
    return LedgerJob(c, i, m, k, json.loads(r), fp, p, d, s, t, a, sa)

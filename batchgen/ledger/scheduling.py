"""What the scheduler reads and writes: the jobs to run, each attempt's intent and outcome,
and the money, counts and timings it decides by.

Several runners may write at once (claims.py): every change of a job's state is
conditional on the state it expects, so a runner that lost a race changes nothing and
learns so from the returned value."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator
from typing import Any

from batchgen import catalog
from batchgen.ledger.base import (
    UNFINISHED,
    LedgerBase,
    LedgerJob,
    Money,
    _campaign_filter,
    job_counts,
    now,
)
from batchgen.ledger.db import Connection


class SchedulingMixin(LedgerBase):
    """The scheduling writes, money and counts."""

    # ---------------------------------------------------------------- scheduling

    _LEDGER_JOB = (
        "SELECT campaign, id, model, kind, request, fingerprint, price_micro_usd, duration,"
        " status, task_id, attempts, submitted_at, position FROM jobs"
    )
    # The same, with the label of the key that created the job's task: for jobs that have
    # one (running, lost), whose polls must go with that key.
    _LEDGER_JOB_WITH_KEY = _LEDGER_JOB.replace(
        " FROM jobs",
        ", (SELECT a.key_label FROM attempts a WHERE a.campaign = jobs.campaign"
        " AND a.job_id = jobs.id AND a.task_id = jobs.task_id ORDER BY a.id DESC LIMIT 1)"
        " FROM jobs",
    )

    def unfinished_jobs(
        self, campaigns: list[str] | None = None, statuses: tuple[str, ...] = UNFINISHED
    ) -> list[LedgerJob]:
        """Jobs still to take to an end (or in `statuses`), in ingestion order."""
        where, params = _campaign_filter(campaigns)
        rows = self.conn.execute(
            f"{self._LEDGER_JOB_WITH_KEY} WHERE status IN ({', '.join('?' * len(statuses))})"
            f" {where}"
            " ORDER BY campaign, position",
            [*statuses, *params],
        )
        return [_ledger_job(row) for row in rows]

    def unfinished_job(self, campaign: str, job_id: str) -> LedgerJob | None:
        """One job, if it is still to take to an end."""
        row = self.conn.execute(
            f"{self._LEDGER_JOB_WITH_KEY} WHERE campaign = ? AND id = ?"
            f" AND status IN ({', '.join('?' * len(UNFINISHED))})",
            (campaign, job_id, *UNFINISHED),
        ).fetchone()
        return None if row is None else _ledger_job(row)

    def queued_jobs(
        self, campaigns: list[str] | None = None, page: int = 500
    ) -> Iterator[LedgerJob]:
        """Queued jobs in ingestion order, read `page` at a time as they are wanted, so a
        run starts at once on a 100,000-job ledger and holds one page, not all of them.

        Each page is a fresh query after the last (campaign, position) read (the
        jobs_by_status index): jobs this run has moved on are behind it, and jobs
        ingested meanwhile are picked up at the end. Named campaigns are read one after
        the other (in name order, as the whole ledger is): a page then reads its own
        campaign's queue only, not every queued job of the others.
        """
        for campaign in sorted(set(campaigns)) if campaigns else [None]:
            yield from self._queued_pages(campaign, page)

    def _queued_pages(self, campaign: str | None, page: int) -> Iterator[LedgerJob]:
        """Queued jobs of one campaign (None: every one), `page` at a time, each page after
        the last row read (keyset paging on jobs_by_status, in (campaign, position) order)."""
        if campaign is None:
            after, last = "(campaign, position) > (?, ?)", ["", -1]
        else:
            after, last = "campaign = ? AND position > ?", [campaign, -1]
        while True:
            rows = self.conn.execute(
                f"{self._LEDGER_JOB} WHERE status = 'queued' AND {after}"
                " ORDER BY campaign, position LIMIT ?",
                [*last, page],
            ).fetchall()
            yield from (_ledger_job(row) for row in rows)
            if len(rows) < page:
                return
            last = [rows[-1][0], rows[-1][-1]]

    def begin_attempt(self, job: LedgerJob, key_label: str | None = None) -> int:
        """Commit the intent to submit, with the label of the key it goes with, before the
        request is sent: a crash after sending must leave a trace, which resume reads as an
        attempt of unknown outcome, and the task it may create is polled with that key."""
        with self.transaction() as db:
            (attempt_id,) = db.execute(
                "INSERT INTO attempts (campaign, job_id, started_at, fingerprint,"
                " unit_price_micro_usd, state, key_label) VALUES (?, ?, ?, ?, ?, 'sending', ?)"
                " RETURNING id",
                (job.campaign, job.id, now(), job.fingerprint, job.price_micros, key_label),
            ).fetchone()
            db.execute(
                "UPDATE jobs SET status='submitting', reason=NULL, updated_at=?"
                " WHERE campaign=? AND id=?",
                (now(), job.campaign, job.id),
            )
        job.status = "submitting"
        return int(attempt_id)

    def attempt_created(
        self,
        job: LedgerJob,
        attempt_id: int,
        http_status: int,
        task_id: str,
        answered_at: str | None = None,
        runner_id: str | None = None,
    ) -> bool:
        """The service created `task_id`: the attempt is charged, the job follows it, and
        `runner_id` follows the task. False when the job does not follow this task: the
        attempt was settled meanwhile (by a runner that took this one for dead), and
        another attempt has the job now; the task id is kept on the attempt for the audit.
        (If a recovery file was applied meanwhile, it is recorded already: True.)"""
        stamp = answered_at or now()
        with self.transaction() as db:
            self._record_created(
                db,
                job.campaign,
                job.id,
                attempt_id,
                http_status,
                task_id,
                stamp,
                late=True,
                runner_id=runner_id,
            )
            row = db.execute(
                "SELECT status, task_id, attempts FROM jobs WHERE campaign = ? AND id = ?",
                (job.campaign, job.id),
            ).fetchone()
        if row is None or row[0] != "running" or row[1] != task_id:
            return False
        job.status, job.task_id, job.submitted_at, job.attempts = "running", task_id, stamp, row[2]
        return True

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
    ) -> bool:
        """Close an attempt that created no known task (not_sent, error, rejected, unknown)
        and move its job on to `job_status` (queued, held or failed). False when the
        attempt is no longer `sending` (another runner settled it): nothing changes."""
        error = self.redact.text(error)
        stamp = now()
        possible = state == "unknown"
        with self.transaction() as db:
            # A flag parameter reaches either engine as 0 or 1 (PgConnection sends a bool as
            # an integer), which PostgreSQL's CASE WHEN does not take as a condition: `? = 1`.
            cursor = db.execute(
                "UPDATE attempts SET state=?, outcome=?, counted=?, http_status=?, error=?,"
                " answered_at=?, finished_at=?,"
                " cost_micro_usd = CASE WHEN ? = 1 THEN unit_price_micro_usd ELSE 0 END"
                " WHERE id=? AND state='sending'",
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
            if not cursor.rowcount:
                return False
            db.execute(
                "UPDATE jobs SET attempts=attempts+?, last_error=COALESCE(?, last_error),"
                " updated_at=? WHERE campaign=? AND id=?",
                (int(counted), error, stamp, job.campaign, job.id),
            )
            # The job moves on only if it waits for this answer: `submitting`, and no other
            # attempt of it on its way (a claim by another runner, after this one was
            # settled as unknown, owns the job now).
            db.execute(
                "UPDATE jobs SET status=?, reason=?,"
                " finished_at=CASE WHEN ?='failed' THEN ? ELSE finished_at END"
                " WHERE campaign=? AND id=? AND status='submitting' AND NOT EXISTS"
                " (SELECT 1 FROM attempts o WHERE o.campaign=jobs.campaign"
                " AND o.job_id=jobs.id AND o.state='sending')",
                (job_status, reason, job_status, stamp, job.campaign, job.id),
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
        return True

    def task_progress(self, job: LedgerJob, progress: int) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET progress=?, updated_at=? WHERE campaign=? AND id=?",
                (progress, now(), job.campaign, job.id),
            )

    def task_completed(
        self,
        job: LedgerJob,
        result_urls: list[str],
        *,
        at: str | None = None,
        observed_seconds: float | None = None,
    ) -> bool:
        """The task completed (answered `at`); `observed_seconds` is its generation time
        when this process followed it from its submission (None when it was taken over on
        resume). False when it was recorded already (by another runner)."""
        assert job.task_id is not None
        with self.transaction() as db:
            recorded = self._record_completed(
                db, job.campaign, job.id, job.task_id, result_urls, at or now(), observed_seconds
            )
        job.status = "completed"
        return recorded

    def task_failed(
        self, job: LedgerJob, message: str, job_status: str, *, refused: bool = False
    ) -> bool:
        """The service says the task failed: refunded (catalog), then queued again or failed.
        `refused`: for content reasons (PRODUCT §2): the attempt's outcome and the job's
        reason are `refused`, counted per key (key_totals). False when it was recorded
        already (by another runner): nothing changes."""
        refunded = catalog.load().failed_tasks_refunded
        message = self.redact(message)
        stamp = now()
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE attempts SET state='failed', error=?, finished_at=?,"
                " outcome = CASE WHEN ? = 1 THEN 'refused' ELSE outcome END,"
                " refunded_micro_usd = CASE WHEN ? = 1 THEN cost_micro_usd ELSE 0 END,"
                " cost_micro_usd = CASE WHEN ? = 1 THEN 0 ELSE cost_micro_usd END"
                " WHERE campaign=? AND job_id=? AND task_id=? AND state='running'",
                (message, stamp, refused, refunded, refunded, job.campaign, job.id, job.task_id),
            )
            if not cursor.rowcount:
                return False
            db.execute(
                "UPDATE jobs SET status=?, task_id=NULL, progress=NULL, last_error=?,"
                " reason = CASE WHEN ? = 1 THEN 'refused' ELSE reason END,"
                " updated_at=?, finished_at=CASE WHEN ?='failed' THEN ? ELSE NULL END"
                " WHERE campaign=? AND id=? AND task_id=?",
                (
                    job_status,
                    f"task {'refused' if refused else 'failed'}: {message}",
                    refused,
                    stamp,
                    job_status,
                    stamp,
                    job.campaign,
                    job.id,
                    job.task_id,
                ),
            )
            self._event(
                "task_refused" if refused else "task_failed",
                job.campaign,
                job.id,
                task_id=job.task_id,
                error=message,
                job_status=job_status,
            )
        job.status, job.task_id = job_status, None
        return True

    def task_lost(self, job: LedgerJob, message: str) -> bool:
        """Give up on a task that answered nothing usable for too long (PRODUCT.md §2): the
        job is `held` (reason `lost`) and keeps its task id, so the next resume polls it
        once more; its attempt's cost counts as unknown, not in flight. False when the
        task was recorded otherwise meanwhile (by another runner)."""
        stamp = now()
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE attempts SET state='unknown', outcome='lost', error=?, finished_at=?"
                " WHERE campaign=? AND job_id=? AND task_id=? AND state='running'",
                (message, stamp, job.campaign, job.id, job.task_id),
            )
            if not cursor.rowcount:
                return False
            db.execute(
                "UPDATE jobs SET status='held', reason='lost', last_error=?, updated_at=?"
                " WHERE campaign=? AND id=? AND task_id=?",
                (f"lost: {message}", stamp, job.campaign, job.id, job.task_id),
            )
            self._event("task_lost", job.campaign, job.id, task_id=job.task_id, error=message)
        job.status = "held"
        return True

    def lost_jobs(self, campaigns: list[str] | None = None) -> list[LedgerJob]:
        """Held jobs whose task was given up as lost, to poll once more."""
        where, params = _campaign_filter(campaigns)
        rows = self.conn.execute(
            f"{self._LEDGER_JOB_WITH_KEY} WHERE status = 'held' AND reason = 'lost'"
            f" AND task_id IS NOT NULL {where} ORDER BY campaign, position",
            params,
        )
        return [_ledger_job(row) for row in rows]

    def task_taken_back(self, job: LedgerJob, runner_id: str | None = None) -> bool:
        """A lost task answered after all: its job follows it again (`runner_id` follows
        it), its cost is in flight. False when another runner took it back first."""
        stamp = now()
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE attempts SET state='running', outcome='created', finished_at=NULL,"
                " runner_id=? WHERE campaign=? AND job_id=? AND task_id=? AND state='unknown'"
                " AND outcome='lost'",
                (runner_id, job.campaign, job.id, job.task_id),
            )
            if not cursor.rowcount:
                return False
            db.execute(
                "UPDATE jobs SET status='running', reason=NULL, last_error=NULL, updated_at=?"
                " WHERE campaign=? AND id=? AND task_id=?",
                (stamp, job.campaign, job.id, job.task_id),
            )
            self._event("task_taken_back", job.campaign, job.id, task_id=job.task_id)
        job.status = "running"
        return True

    def task_id_unusable(
        self, job: LedgerJob, problem: str, job_status: str, reason: str | None
    ) -> None:
        """A recorded task id that cannot be polled (written by an older batchgen): its
        attempt has an unknown outcome, like a fresh answer with that id (PRODUCT.md §2);
        the id is kept in the error, in printable form, not as a task id."""
        stamp = now()
        error = f"unusable task id {ascii(job.task_id)[:80]} ({problem})"
        with self.transaction() as db:
            db.execute(
                "UPDATE attempts SET state='unknown', outcome='unknown', task_id=NULL, error=?,"
                " finished_at=? WHERE campaign=? AND job_id=? AND task_id=? AND state='running'",
                (error, stamp, job.campaign, job.id, job.task_id),
            )
            db.execute(
                "UPDATE jobs SET status=?, reason=?, task_id=NULL, progress=NULL, last_error=?,"
                " updated_at=?, finished_at=CASE WHEN ?='failed' THEN ? ELSE NULL END"
                " WHERE campaign=? AND id=?",
                (job_status, reason, error, stamp, job_status, stamp, job.campaign, job.id),
            )
            self._event("attempt_unknown", job.campaign, job.id, error=error, job_status=job_status)
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

    def fail_job(self, job: LedgerJob, error: str) -> bool:
        """Give up on a queued job that has used all its attempts (False: it is not queued
        any more, another runner has it)."""
        error = self.redact(error)
        stamp = now()
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET status='failed', reason=NULL,"
                " last_error=? || COALESCE('; last error: ' || last_error, ''), updated_at=?,"
                " finished_at=? WHERE campaign=? AND id=? AND status='queued'",
                (error, stamp, stamp, job.campaign, job.id),
            )
            if not cursor.rowcount:
                return False
            self._event("failed", job.campaign, job.id, error=error)
        job.status = "failed"
        return True

    RECENT_TASKS = 5000  # how many observed generation times are read, newest first

    def observed_times(self) -> dict[tuple[str, int | None], list[float]]:
        """Generation times per (model, duration), oldest first, of the RECENT_TASKS most
        recent tasks a process followed from submission to completion (never one taken
        over on resume, whose time includes the time no process ran): how the service
        runs now, read in milliseconds on any ledger."""
        return observed_times(self.recent_observations(self.RECENT_TASKS))

    def recent_observations(self, limit: int) -> list[tuple[int, str, int | None, float, str]]:
        """The `limit` most recent observed generation times, newest first, each with its
        attempt id and the runner that saw it: what other runners on the ledger learn."""
        rows = self.conn.execute(
            "SELECT a.id, j.model, j.duration, a.observed_seconds, COALESCE(a.runner_id, '')"
            " FROM (SELECT id, campaign, job_id, observed_seconds, runner_id FROM attempts"
            "   WHERE observed_seconds IS NOT NULL ORDER BY id DESC LIMIT ?) a"
            " JOIN jobs j ON j.campaign = a.campaign AND j.id = a.job_id ORDER BY a.id DESC",
            (limit,),
        )
        return [(i, m, d, float(s), r) for i, m, d, s, r in rows]

    def generation_seconds(self) -> dict[tuple[str, int | None], float]:
        """The median observed generation time per (model, duration) (see observed_times):
        a median, so a few odd tasks do not move it."""
        return {key: statistics.median(times) for key, times in self.observed_times().items()}

    # ---------------------------------------------------------------- money and status

    def money(self, campaigns: list[str] | None = None) -> Money:
        """Spent, in flight, unknown and refunded over the selected campaigns' attempts
        (from `attempt_totals`, kept by triggers: at once on any ledger)."""
        where, params = _campaign_filter(campaigns, "a.campaign")
        sums = ", ".join(f"COALESCE(SUM({expr}), 0)" for expr in self._ATTEMPT_MONEY)
        row = self.conn.execute(
            f"SELECT {sums} FROM {self._money_table} a WHERE 1=1 {where}", params
        )
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
        """Jobs per status (see base.job_counts: at once on a million jobs)."""
        return job_counts(self.conn, campaigns)

    def held_reasons(self, campaigns: list[str] | None = None) -> dict[str | None, int]:
        """Held jobs by reason: `lost` tasks, `unknown outcome` attempts."""
        where, params = _campaign_filter(campaigns)
        rows = self.conn.execute(
            f"SELECT reason, COUNT(*) FROM jobs WHERE status = 'held' {where} GROUP BY reason",
            params,
        )
        return {reason: n for reason, n in rows}

    # The two answers a recovery file may hold (recovery.py) are recorded by the same SQL
    # whether they come in time or late.

    def _record_created(
        self,
        db: Connection,
        campaign: str,
        job_id: str,
        attempt_id: int,
        http_status: int,
        task_id: str,
        stamp: str,
        late: bool = False,
        runner_id: str | None = None,
    ) -> bool:
        """The service created `task_id` for this attempt: the attempt is running (charged),
        followed by `runner_id`, and the job follows that task. False when already
        recorded.

        Late (from a recovery file, or an answer that came after another runner took this
        one for dead), the attempt may have been settled as unknown: if the job waits
        (queued or held, no task, no other attempt on its way), it takes this task back;
        otherwise the attempt keeps the task id, for the audit, at its unknown cost."""
        states = ("sending", "unknown") if late else ("sending",)
        row = db.execute(
            "SELECT state, task_id FROM attempts WHERE id = ? AND campaign = ? AND job_id = ?",
            (attempt_id, campaign, job_id),
        ).fetchone()
        if row is None or row[0] not in states or row[1] is not None:
            return False
        was_counted = row[0] == "unknown"
        job = db.execute(
            "SELECT status, task_id FROM jobs WHERE campaign = ? AND id = ?", (campaign, job_id)
        ).fetchone()
        waiting = ("queued", "held") if was_counted else ("queued", "submitting", "held")
        free = job is not None and job[1] is None and job[0] in waiting
        if late and not free:
            db.execute(
                "UPDATE attempts SET task_id = ?, outcome = 'created (recorded late)',"
                " http_status = ? WHERE id = ?",
                (task_id, http_status, attempt_id),
            )
            self._event("task_recorded_late", campaign, job_id, task_id=task_id)
            return True
        db.execute(
            "UPDATE attempts SET state='running', outcome='created', http_status=?, task_id=?,"
            " answered_at=?, finished_at=NULL, error=NULL, counted=1,"
            " cost_micro_usd=unit_price_micro_usd, runner_id=? WHERE id=?",
            (http_status, task_id, stamp, runner_id, attempt_id),
        )
        db.execute(
            "UPDATE jobs SET status='running', reason=NULL, task_id=?, progress=0,"
            " attempts=attempts+?, submitted_at=?, updated_at=?, finished_at=NULL"
            " WHERE campaign=? AND id=?",
            (task_id, 0 if was_counted else 1, stamp, now(), campaign, job_id),
        )
        self._event("submitted", campaign, job_id, task_id=task_id, attempt=attempt_id)
        return True

    def _record_completed(
        self,
        db: Connection,
        campaign: str,
        job_id: str,
        task_id: str,
        result_urls: list[str],
        stamp: str,
        observed_seconds: float | None = None,
    ) -> bool:
        """The job's running task completed with these result URLs. False when the job
        does not follow that task any more (already recorded)."""
        cursor = db.execute(
            "UPDATE attempts SET state='completed', finished_at=?, observed_seconds=?"
            " WHERE campaign=? AND job_id=? AND task_id=? AND state='running'",
            (stamp, observed_seconds, campaign, job_id, task_id),
        )
        if cursor.rowcount == 0:
            return False
        db.execute(
            # A completed job has no error: what went wrong before (a 429, a failed task)
            # stays in its attempts and events.
            "UPDATE jobs SET status='completed', reason=NULL, last_error=NULL, progress=100,"
            " result_urls=?,"
            " cost_micro_usd=(SELECT COALESCE(SUM(cost_micro_usd), 0) FROM attempts"
            "   WHERE campaign=? AND job_id=? AND state='completed'),"
            " updated_at=?, finished_at=? WHERE campaign=? AND id=? AND task_id=?",
            (json.dumps(result_urls), campaign, job_id, stamp, stamp, campaign, job_id, task_id),
        )
        self._event("completed", campaign, job_id, task_id=task_id)
        return True


def observed_times(
    observations: list[tuple[int, str, int | None, float, str]],
) -> dict[tuple[str, int | None], list[float]]:
    """Observations (newest first, as `recent_observations` reads them) as times per
    (model, duration), oldest first."""
    times: dict[tuple[str, int | None], list[float]] = {}
    for _, model, duration, seconds, _ in reversed(observations):
        times.setdefault((model, duration), []).append(seconds)
    return times


def _ledger_job(row: tuple[Any, ...]) -> LedgerJob:
    """A row of `Ledger._LEDGER_JOB` (or `_LEDGER_JOB_WITH_KEY`) as a LedgerJob."""
    c, i, m, k, r, fp, p, d, s, t, a, sa, _, *label = row
    return LedgerJob(c, i, m, k, json.loads(r), fp, p, d, s, t, a, sa, *label)

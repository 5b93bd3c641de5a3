"""The morning review's reads and writes (PRODUCT §12): the results as the review page shows
them, verdicts and notes, and `retry --rejected`.

A verdict is about one result: the task a job had when the reviewer judged it. History is
kept (every approval, rejection, note and withdrawal is a row of `verdicts`); the view
`current_verdicts` holds each result's latest row. A job's verdict is the current verdict
of its current result, so a job generated again after a rejection is unreviewed until
someone looks at its new result, while the rejected one keeps its verdict in the audit.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from batchgen.errors import LedgerError
from batchgen.ledger.base import _campaign_filter, job_counts, now
from batchgen.ledger.db import SQLITE_DIALECT, Dialect, dialect_of
from batchgen.ledger.migrations import VERDICTS
from batchgen.ledger.reads import CURRENT_VERDICT, JOB_VERDICT_JOIN, ReadsMixin

MAX_NOTE = 2000  # characters: a note is a sentence or two, not a file
MAX_REVIEWER = 60  # characters of a reviewer's name


class VerdictRefused(LedgerError):
    """A verdict that cannot be recorded: `reason` is "unknown" (no such job or result),
    "stale" (the job has another result by now) or "invalid" (a bad verdict or note)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# The id of the latest verdict row on the job `j`'s current result (NULL when it has none
# or is not completed), read on the verdicts_by_result index.
CURRENT_VERDICT_ID = (
    "(SELECT v.id FROM verdicts v WHERE j.status = 'completed' AND v.campaign = j.campaign"
    " AND v.job_id = j.id AND v.task_id = j.task_id ORDER BY v.id DESC LIMIT 1)"
)


@dataclass(frozen=True)
class ReviewFilters:
    """What the review page narrows its results to (None: any)."""

    campaign: str | None = None
    status: str | None = None
    model: str | None = None
    tag: str | None = None
    verdict: str | None = None  # approved, rejected, or unreviewed (completed, no verdict)
    reviewer: str | None = None  # who gave the current verdict
    text: str | None = None  # in the prompt or the id, whatever the case (ASCII letters)
    # a saved file's marks (PRODUCT §13): valid, invalid, none, or unread (saved before
    # they were read), as batchgen.provenance.marks.verdict says
    marks: str | None = None

    def sql(
        self, provenance: str = "f.provenance", dialect: Dialect = SQLITE_DIALECT
    ) -> tuple[str, list[Any]]:
        """The conditions on the job `j` (and its current verdict `cv`), as SQL and values;
        `provenance` is the files' (`f`) column of marks (NULL on a ledger without it)."""
        conditions, values = [], []
        for column in ("status", "model"):
            value = getattr(self, column)
            if value is not None:
                conditions.append(f"j.{column} = ?")
                values.append(value)
        if self.tag is not None:
            tags = dialect.json_values("j.tags")
            conditions.append(f"EXISTS (SELECT 1 FROM {tags} WHERE value = ?)")
            values.append(self.tag)
        if self.verdict == "unreviewed":
            # The verdict read for the job's own row, not the joined one's: PostgreSQL then
            # reads the jobs in order and stops at the page's end, as SQLite does.
            conditions.append(f"j.status = 'completed' AND {CURRENT_VERDICT} IS NULL")
        elif self.verdict is not None:
            conditions.append("cv.verdict = ?")
            values.append(self.verdict)
        if self.reviewer is not None:
            conditions.append("cv.verdict IS NOT NULL AND cv.reviewer = ?")
            values.append(self.reviewer)
        if self.text:
            prompt, job_id = (dialect.contains_text(column, "?") for column in ("j.prompt", "j.id"))
            conditions.append(f"({prompt} OR {job_id})")
            values += [self.text] * 2
        if self.marks is not None:
            conditions.append(
                "EXISTS (SELECT 1 FROM files f WHERE f.job_ref = j.ref"
                " AND f.downloaded_at IS NOT NULL AND f.error IS NULL"
                f" AND {marks_state(provenance, dialect)} = ?)"
            )
            values.append(self.marks)
        return "".join(f" AND {c}" for c in conditions), values


def marks_state(provenance: str, dialect: Dialect = SQLITE_DIALECT) -> str:
    """SQL for a file's marks state from its provenance record: what
    batchgen.provenance.marks.verdict says of it, or "unread" when none was recorded."""
    d = dialect
    return (
        f"CASE WHEN {provenance} IS NULL OR NOT {d.json_valid(provenance)} THEN 'unread'"
        f" WHEN {d.json_value(provenance, '$.error')} IS NOT NULL"
        f" OR {d.json_value(provenance, '$.c2pa.state')} = 'invalid' THEN 'invalid'"
        f" WHEN {d.json_true(provenance, '$.marked')} THEN 'valid' ELSE 'none' END"
    )


class ReviewMixin(ReadsMixin):
    """The ledger's verdicts and the review page's reads."""

    def record_verdict(
        self,
        campaign: str,
        job_id: str,
        task_id: str,
        verdict: str | None,
        note: str | None,
        reviewer: str | None = None,
    ) -> dict[str, Any]:
        """Record a verdict (None withdraws it) and note on the job's current result
        `task_id`, given by `reviewer` (a name; None: nobody named).

        The result must be the job's current one: a page open since before the job was
        generated again must not judge the new result by the old one's looks.
        """
        for name, text in (("campaign", campaign), ("job id", job_id), ("task id", task_id),
                           ("note", note), ("reviewer", reviewer)):  # fmt: skip
            if text is not None and not _unicode(text):
                raise VerdictRefused("invalid", f"the {name} is not valid Unicode text")
        if verdict is not None and verdict not in VERDICTS:
            raise VerdictRefused("invalid", f"a verdict is one of {', '.join(VERDICTS)} or null")
        note = (note or "").strip() or None
        if note is not None and len(note) > MAX_NOTE:
            raise VerdictRefused("invalid", f"a note has at most {MAX_NOTE} characters")
        if reviewer is not None:
            reviewer = reviewer_name(reviewer)
        with self.transaction() as db:
            row = db.execute(
                "SELECT status, task_id FROM jobs WHERE campaign = ? AND id = ?",
                (campaign, job_id),
            ).fetchone()
            if row is None:
                raise VerdictRefused("unknown", f"no job {campaign}/{job_id}")
            status, current = row
            if status != "completed" or current != task_id:
                raise VerdictRefused(
                    "stale",
                    f"{campaign}/{job_id} has no completed result {task_id} now "
                    f"(status {status}); reload the page",
                )
            attempt = db.execute(
                "SELECT MAX(id) FROM attempts WHERE campaign = ? AND job_id = ? AND task_id = ?"
                " AND state = 'completed'",
                (campaign, job_id, task_id),
            ).fetchone()[0]
            stamp = now()
            db.execute(
                "INSERT INTO verdicts (campaign, job_id, task_id, attempt_id, verdict, note, at,"
                " reviewer) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (campaign, job_id, task_id, attempt, verdict, note, stamp, reviewer),
            )
        return {"verdict": verdict, "note": note, "at": stamp, "reviewer": reviewer}

    def reviewers(self) -> list[str]:
        """Every name that gave a verdict, sorted (read on verdicts_by_reviewer)."""
        rows = self.conn.execute(
            "SELECT DISTINCT reviewer FROM verdicts WHERE reviewer IS NOT NULL ORDER BY reviewer"
        )
        return [name for (name,) in rows]

    def verdict_counts(
        self, campaigns: list[str] | None = None, completed: int | None = None
    ) -> dict[str, int]:
        """Completed jobs by the verdict of their current result: approved, rejected,
        unreviewed (from `verdict_totals`, kept by triggers, and the job counts: at once on
        any ledger). `completed`: the completed jobs, when the caller has just counted
        them in the same moment (a count of every job is not free on PostgreSQL)."""
        where, params = _campaign_filter(campaigns, "j.campaign")
        if self._money_table == "attempt_totals":  # m006's totals are there
            source = f"SELECT verdict, SUM(results) FROM verdict_totals j WHERE 1=1 {where}"
        else:  # a ledger not yet migrated, read without writing: count the verdicts
            source = (
                f"SELECT cv.verdict, COUNT(*) FROM jobs j {JOB_VERDICT_JOIN}"
                f" WHERE j.status = 'completed' AND cv.verdict IS NOT NULL {where}"
            )
        judged = dict.fromkeys(VERDICTS, 0)
        for verdict, results in self.conn.execute(f"{source} GROUP BY verdict", params):
            judged[verdict] = results
        if completed is None:
            completed = job_counts(self.conn, campaigns)["completed"]
        return {**judged, "unreviewed": completed - sum(judged.values())}

    def change_marker(self) -> str:
        """A cheap marker that changes whenever the ledger changes: a commit by another
        program (SQLite's data_version) or by this connection (its total changes). Read
        in the same time on a million jobs as on ten."""
        return self.dialect.data_version(self.conn)

    def review_page(
        self, campaigns: list[str] | None, filters: ReviewFilters, limit: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """The first `limit` jobs the review page shows under `filters`, and whether there
        are more: the newest campaign first (the one a run filled last night), each in
        ingestion order. Each with its request fields, status, cost (micro-dollars),
        attempts made, result URLs, the files saved for them (n, path, size, and provenance:
        the marks read on save, or None) and the current verdict and note of its result.

        Read a campaign at a time on its index until the page is full, so the first page
        costs the same on a million jobs as on a hundred (a filter that matches few jobs
        reads further)."""
        where, params = _campaign_filter(campaigns, "name")
        names = [
            name
            for (name,) in self.conn.execute(
                f"SELECT name FROM campaigns WHERE 1=1 {where} ORDER BY created_at DESC, name",
                params,
            )
            if filters.campaign is None or name == filters.campaign
        ]
        conditions, values = filters.sql(self._provenance, self.dialect)
        d, provenance = self.dialect, self._provenance
        # each saved file, with the marks read on save (m012) as JSON (null: not read)
        file = d.json_object(
            "'n', f.n, 'url', f.url, 'path', f.path, 'size', f.size, 'provenance',"
            f" CASE WHEN {d.json_valid(provenance)} THEN {d.json(provenance)} END"
        )
        verdict = d.json_object(
            "'verdict', h.verdict, 'note', h.note, 'reviewer', h.reviewer, 'at', h.at"
        )
        rows: list[dict[str, Any]] = []
        for name in names:
            wanted = limit + 1 - len(rows)
            if wanted <= 0:
                break
            rows += self.query(
                "SELECT j.campaign, j.id, j.position, j.model, j.kind, j.prompt, j.duration,"
                " j.ratio, j.variant, j.resolution, j.tags, j.status, j.reason, j.progress,"
                " j.task_id, j.result_urls, j.cost_micro_usd, j.last_error, j.finished_at,"
                " (SELECT COUNT(*) FROM attempts a WHERE a.job_ref = j.ref AND a.counted <> 0)"
                "   AS attempts,"
                f" (SELECT {d.json_array_agg(file, 'f.n')} FROM files f WHERE f.job_ref = j.ref"
                "   AND f.downloaded_at IS NOT NULL AND f.error IS NULL) AS files,"
                " cv.verdict, cv.note, cv.at AS verdict_at, cv.reviewer,"
                # the result's verdicts, newest first: its history (a few rows, on
                # verdicts_by_result)
                f" (SELECT {d.json_array_agg(verdict, 'h.id DESC')} FROM (SELECT * FROM verdicts h"
                "   WHERE j.status = 'completed' AND h.campaign = j.campaign AND h.job_id = j.id"
                "   AND h.task_id = j.task_id ORDER BY h.id DESC) h) AS history"
                f" FROM jobs j LEFT JOIN verdicts cv ON cv.id = {CURRENT_VERDICT_ID}"
                f" WHERE j.campaign = ? {conditions} ORDER BY j.position LIMIT ?",
                [name, *values, wanted],
            )
        for row in rows:
            row["tags"] = json.loads(row["tags"] or "[]")
            row["result_urls"] = json.loads(row["result_urls"] or "[]")
            row["files"] = json.loads(row["files"] or "[]")
            row["history"] = json.loads(row["history"] or "[]")
        return rows[:limit], len(rows) > limit

    def saved_file(self, campaign: str, job_id: str, n: int) -> dict[str, Any] | None:
        """What the ledger records of result file `n` of a job's current result, if it was
        saved: url, path, size, sha256."""
        rows = self.query(
            "SELECT f.url, f.path, f.size, f.sha256 FROM files f JOIN jobs j"
            " ON j.campaign = f.campaign AND j.id = f.job_id"
            " WHERE f.campaign = ? AND f.job_id = ? AND f.n = ? AND f.downloaded_at IS NOT NULL"
            " AND f.error IS NULL AND f.path IS NOT NULL",
            (campaign, job_id, n),
        )
        return rows[0] if rows else None

    def requeue_rejected(self, campaigns: list[str] | None) -> int:
        """Put completed jobs whose current result was rejected back to `queued`, with fresh
        attempts. Their attempts, cost and verdicts stay; the result (task, URLs, saved
        files) is kept in the `requeued` event, and its files stay on disk (the next
        result is saved under another name)."""
        selected = self.select_campaigns(campaigns) if campaigns else None
        where, params = _campaign_filter(selected, "j.campaign")
        stamp = now()

        # The same jobs in each statement: jobs change only in the last one.
        def rejected(campaign: str, job_id: str) -> str:
            return (
                f"({campaign}, {job_id}) IN (SELECT j.campaign, j.id FROM jobs j"
                f"{JOB_VERDICT_JOIN} WHERE j.status = 'completed' AND cv.verdict = 'rejected'"
                f" {where})"
            )

        with self.transaction() as db:
            return _requeue(db, rejected, params, stamp)

    def requeue_jobs(self, job_ids: list[str], campaigns: list[str] | None) -> list[str]:
        """Put the jobs named back to `queued` with fresh attempts (`retry --job`): failed
        and held ones as `retry` does, completed ones as a re-roll (a new result; the old
        one, its files and its cost stay in the audit, as with `retry --rejected`). All or
        nothing: a name that matches no job, or jobs of several campaigns, or a job that
        is queued or being run, is a LedgerError and no job changes. Returns the jobs
        requeued, as `campaign/id`."""
        selected = self.select_campaigns(campaigns) if campaigns else None
        where, params = _campaign_filter(selected)
        stamp = now()
        with self.transaction(patient=True) as db:  # checked and changed in one moment
            chosen: list[tuple[str, str]] = []
            for job_id in dict.fromkeys(job_ids):
                found = db.execute(
                    f"SELECT campaign, status FROM jobs WHERE id = ? {where} ORDER BY campaign",
                    [job_id, *params],
                ).fetchall()
                chosen.append(_one_job(job_id, found, selected))
            pairs = ", ".join("(?, ?)" for _ in chosen)
            values = [value for pair in chosen for value in pair]

            def named(campaign: str, job_id: str) -> str:
                return f"({campaign}, {job_id}) IN (VALUES {pairs})"

            _requeue(db, named, values, stamp)
        return [f"{campaign}/{job_id}" for campaign, job_id in chosen]


def _unicode(text: str) -> bool:
    """Whether `text` can be stored: JSON may carry a lone surrogate (`"\\ud800"`), which
    no UTF-8 database takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def reviewer_name(text: str) -> str:
    """A reviewer's name as recorded (surrounding spaces dropped), or VerdictRefused: 1 to
    MAX_REVIEWER characters starting with a letter or a digit (so no name can look like a
    `report --by reviewer` group such as `(unreviewed)`), no control characters."""
    name = text.strip()
    if not name or len(name) > MAX_REVIEWER or not name[0].isalnum():
        raise VerdictRefused(
            "invalid",
            f"a reviewer's name has 1 to {MAX_REVIEWER} characters and starts with a letter "
            "or a digit",
        )
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise VerdictRefused("invalid", "a reviewer's name has no control characters")
    return name


RETRIED_BY_JOB = ("failed", "held", "completed")  # what `retry --job` may put back in the queue


def _one_job(job_id: str, found: list[Any], campaigns: list[str] | None) -> tuple[str, str]:
    """The job `retry --job ID` means, from the jobs of that id (campaign, status)."""
    where = f" in campaign {', '.join(campaigns)}" if campaigns else ""
    if not found:
        raise LedgerError(f"no job {job_id!r}{where}: nothing was queued again")
    if len(found) > 1:
        names = ", ".join(campaign for campaign, _ in found)
        raise LedgerError(
            f"job {job_id!r} is in several campaigns ({names}): say which with --campaign; "
            "nothing was queued again"
        )
    [(campaign, status)] = found
    if status not in RETRIED_BY_JOB:
        why = (
            "queued already: `batchgen resume` runs it"
            if status == "queued"
            else f"{status}: retry it once it has ended (`batchgen status` shows it)"
        )
        raise LedgerError(f"job {campaign}/{job_id} is {why}; nothing was queued again")
    return campaign, job_id


def _requeue(db: Any, chosen: Callable[[str, str], str], params: list[Any], stamp: str) -> int:
    """Put the jobs `chosen(campaign_column, id_column)` selects back to `queued` with fresh
    attempts. Their attempts, cost and verdicts stay; their last result (task, URLs, saved
    files) and error are kept in a `requeued` event, and files stay on disk (the next
    result is saved under another name). The same jobs in each statement: jobs change only
    in the last one."""
    d = dialect_of(db)
    file = d.json_object(
        "'n', f.n, 'url', f.url, 'path', f.path, 'size', f.size, 'sha256', f.sha256"
    )
    urls = d.json("COALESCE(j.result_urls, '[]')")
    detail = d.json_object(
        "'from', j.status, 'verdict', cv.verdict, 'note', cv.note, 'attempts', j.attempts,"
        " 'last_error', j.last_error,"
        f" 'task_id', j.task_id, 'result_urls', {urls},"
        f" 'files', (SELECT {d.json_array_value(file, 'f.n')} FROM files f"
        "   WHERE f.campaign = j.campaign AND f.job_id = j.id)"
    )
    db.execute(
        "INSERT INTO events (at, campaign, job_id, kind, detail)"
        f" SELECT ?, j.campaign, j.id, 'requeued', {detail}"
        f" FROM jobs j {JOB_VERDICT_JOIN}"
        f" WHERE {chosen('j.campaign', 'j.id')}"
        " ORDER BY j.campaign, j.position",
        [stamp, *params],
    )
    db.execute(f"DELETE FROM files WHERE {chosen('campaign', 'job_id')}", params)
    cursor = db.execute(
        "UPDATE jobs SET status = 'queued', attempts = 0, reason = NULL, task_id = NULL,"
        " progress = NULL, result_urls = NULL, last_error = NULL, submitted_at = NULL,"
        f" finished_at = NULL, updated_at = ? WHERE {chosen('campaign', 'id')}",
        [stamp, *params],
    )
    return int(cursor.rowcount)

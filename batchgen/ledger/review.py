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
from typing import Any

from batchgen.errors import LedgerError
from batchgen.ledger.base import _campaign_filter, job_counts, now
from batchgen.ledger.reads import JOB_VERDICT_JOIN, ReadsMixin
from batchgen.migrations import VERDICTS

MAX_NOTE = 2000  # characters: a note is a sentence or two, not a file


class VerdictRefused(LedgerError):
    """A verdict that cannot be recorded: `reason` is "unknown" (no such job or result),
    "stale" (the job has another result by now) or "invalid" (a bad verdict or note)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ReviewMixin(ReadsMixin):
    """The ledger's verdicts and the review page's reads."""

    def record_verdict(
        self, campaign: str, job_id: str, task_id: str, verdict: str | None, note: str | None
    ) -> dict[str, Any]:
        """Record a verdict (None withdraws it) and note on the job's current result `task_id`.

        The result must be the job's current one: a page open since before the job was
        generated again must not judge the new result by the old one's looks.
        """
        if verdict is not None and verdict not in VERDICTS:
            raise VerdictRefused("invalid", f"a verdict is one of {', '.join(VERDICTS)} or null")
        note = (note or "").strip() or None
        if note is not None and len(note) > MAX_NOTE:
            raise VerdictRefused("invalid", f"a note has at most {MAX_NOTE} characters")
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
                "INSERT INTO verdicts (campaign, job_id, task_id, attempt_id, verdict, note, at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (campaign, job_id, task_id, attempt, verdict, note, stamp),
            )
        return {"verdict": verdict, "note": note, "at": stamp}

    def verdict_counts(self, campaigns: list[str] | None = None) -> dict[str, int]:
        """Completed jobs by the verdict of their current result: approved, rejected,
        unreviewed (from `verdict_totals`, kept by triggers, and the job counts: at once on
        any ledger)."""
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
        completed = job_counts(self.conn, campaigns)["completed"]
        return {**judged, "unreviewed": completed - sum(judged.values())}

    def review_version(self, campaigns: list[str] | None = None) -> str:
        """A cheap marker that changes whenever what the review page shows changes."""
        where, params = _campaign_filter(campaigns)
        row = self.conn.execute(
            "SELECT (SELECT COUNT(*) || '/' || COALESCE(MAX(updated_at), '')"
            f"   FROM jobs WHERE 1=1 {where}),"
            f" (SELECT COALESCE(MAX(id), 0) FROM verdicts WHERE 1=1 {where}),"
            " (SELECT COUNT(*) || '/' || COALESCE(MAX(downloaded_at), '') || '/'"
            f"   || COALESCE(SUM(error IS NOT NULL), 0) FROM files WHERE 1=1 {where})",
            [*params, *params, *params],
        ).fetchone()
        return "|".join(str(part) for part in row)

    def review_jobs(self, campaigns: list[str] | None = None) -> list[dict[str, Any]]:
        """Every job of the campaigns, in ingestion order, as the review page shows it: its
        request fields, status, cost (micro-dollars), attempts made, result URLs, the files
        saved for them (n, path, size) and the current verdict and note of its result."""
        where, params = _campaign_filter(campaigns, "j.campaign")
        rows = self.query(
            "SELECT j.campaign, j.id, j.position, j.model, j.kind, j.prompt, j.duration,"
            " j.ratio, j.variant, j.resolution, j.tags, j.status, j.reason, j.progress,"
            " j.task_id, j.result_urls, j.cost_micro_usd, j.last_error, j.finished_at,"
            " (SELECT COUNT(*) FROM attempts a WHERE a.campaign = j.campaign"
            "   AND a.job_id = j.id AND a.counted) AS attempts,"
            " (SELECT json_group_array(json_object('n', f.n, 'url', f.url, 'path', f.path,"
            "   'size', f.size)) FROM files f WHERE f.campaign = j.campaign AND f.job_id = j.id"
            "   AND f.downloaded_at IS NOT NULL AND f.error IS NULL) AS files,"
            " cv.verdict, cv.note, cv.at AS verdict_at"
            f" FROM jobs j {JOB_VERDICT_JOIN} WHERE 1=1 {where} ORDER BY j.campaign, j.position",
            params,
        )
        for row in rows:
            row["tags"] = json.loads(row["tags"] or "[]")
            row["result_urls"] = json.loads(row["result_urls"] or "[]")
            row["files"] = json.loads(row["files"] or "[]")
        return rows

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
            db.execute(
                "INSERT INTO events (at, campaign, job_id, kind, detail)"
                " SELECT ?, j.campaign, j.id, 'requeued', json_object('from', j.status,"
                " 'verdict', 'rejected', 'note', cv.note, 'attempts', j.attempts,"
                " 'task_id', j.task_id, 'result_urls', json(COALESCE(j.result_urls, '[]')),"
                " 'files', (SELECT json_group_array(json_object('n', f.n, 'url', f.url,"
                "   'path', f.path, 'size', f.size, 'sha256', f.sha256)) FROM files f"
                "   WHERE f.campaign = j.campaign AND f.job_id = j.id))"
                f" FROM jobs j {JOB_VERDICT_JOIN}"
                f" WHERE {rejected('j.campaign', 'j.id')}"
                " ORDER BY j.campaign, j.position",
                [stamp, *params],
            )
            db.execute(f"DELETE FROM files WHERE {rejected('campaign', 'job_id')}", params)
            cursor = db.execute(
                "UPDATE jobs SET status = 'queued', attempts = 0, reason = NULL, task_id = NULL,"
                " progress = NULL, result_urls = NULL, last_error = NULL, submitted_at = NULL,"
                f" finished_at = NULL, updated_at = ? WHERE {rejected('campaign', 'id')}",
                [stamp, *params],
            )
        return cursor.rowcount

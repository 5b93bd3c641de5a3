"""The read side: what status, report, plan and download read, and the few writes they
own (file records, requeue)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from batchgen.errors import LedgerError
from batchgen.ledger.base import (
    LedgerBase,
    Money,
    _campaign_filter,
    _dicts,
    now,
)
from batchgen.ledger.db import SQLITE_DIALECT, Dialect, PgConnection

# The current verdict of each job's current result, as SQL joined to `jobs j` (the view
# `current_verdicts` is made by migration m004_verdicts).
JOB_VERDICT_JOIN = (
    " LEFT JOIN current_verdicts cv ON cv.campaign = j.campaign AND cv.job_id = j.id"
    " AND cv.task_id = j.task_id AND j.status = 'completed'"
)
# The same verdict as one value for the job `j` (the latest verdict row of its current
# result), read on the verdicts_by_result index: for one job at a time, as a stream needs.
CURRENT_VERDICT = (
    "(SELECT v.verdict FROM verdicts v WHERE j.status = 'completed' AND v.campaign = j.campaign"
    " AND v.job_id = j.id AND v.task_id = j.task_id ORDER BY v.id DESC LIMIT 1)"
)
NO_RESULT = "(no result)"  # the `report --by verdict` group of jobs not completed
# `report --by reviewer` groups that are not a name (a name starts with a letter or a digit):
UNREVIEWED = "(unreviewed)"  # completed jobs whose current result has no verdict
UNNAMED = "(unnamed)"  # verdicts given before reviewers were named (m011)
# `report --by key` groups that are not a key's label (a label starts with a letter or a
# digit, so neither can be one):
UNLABELLED = "(unlabelled)"  # attempts recorded before batchgen kept key labels (m007)
NO_KEY = "(none)"  # jobs with no attempt: never sent with any key


@dataclass
class KeyUse:
    """What one key did in the ledger: tasks in flight now, and the money of every attempt
    sent with it. `label` is None for attempts recorded before labels were kept (all sent
    with the one key of that time)."""

    label: str | None
    in_flight: int
    money: Money
    refusals: int = 0  # attempts refused for content reasons (PRODUCT §2)


def usd_sql(micros: str, dialect: Dialect = SQLITE_DIALECT) -> str:
    """SQL spelling the integer micro-dollars `micros` as money.usd does ('0.40',
    '0.001234', '-1.50'); whole cents, the usual amount, the short way."""
    digits = f"rtrim({dialect.zero_padded(f'abs({micros}) % 1000000', 6)}, '0')"
    cents = dialect.zero_padded(f"{micros} / 10000 % 100", 2)
    return (
        f"(CASE WHEN {micros} >= 0 AND {micros} % 10000 = 0"
        f" THEN ({micros} / 1000000) || '.' || {cents}"
        f" ELSE CASE WHEN {micros} < 0 THEN '-' ELSE '' END || (abs({micros}) / 1000000) || '.'"
        f" || CASE WHEN length({digits}) < 2 THEN substr({digits} || '00', 1, 2)"
        f" ELSE {digits} END END)"
    )


class ReadsMixin(LedgerBase):
    """The ledger's reports and results."""

    @classmethod
    def read_only(cls, path: str | Path, notify: Callable[[str], None] | None = None) -> Self:
        """Open an existing ledger for reading commands (status, report, plan): SQLite's
        mode=ro, so nothing is migrated, switched or written. A file that is not a
        batchgen ledger, or one written by a newer batchgen, is refused.

        SQLite may leave its empty `-wal`/`-shm` companions beside a WAL ledger; the
        ledger's content is never changed.
        """
        # Not cls(...): a subclass's own opening (Ledger applies the recovery file) writes.
        ledger = cls.__new__(cls)
        LedgerBase.__init__(ledger, path, create=False, notify=notify, read_only=True)
        return ledger

    def attempt_count(self) -> int:
        """How many attempts the ledger records, over every campaign."""
        return int(self.conn.execute("SELECT COUNT(*) FROM attempts").fetchone()[0])

    def campaign_names(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT name FROM campaigns ORDER BY name")]

    def select_campaigns(self, campaigns: list[str] | None) -> list[str]:
        """The campaigns named (all of them when none is): an unknown name is an error."""
        known = self.campaign_names()
        if not campaigns:
            return known
        unknown = [c for c in campaigns if c not in known]
        if unknown:
            raise LedgerError(
                f"{self.name}: no campaign named {', '.join(unknown)} "
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

    def manifest_paths(self, campaigns: list[str] | None = None) -> dict[str, str]:
        """campaign -> the manifest file it was last ingested from, as it was given then."""
        where, params = _campaign_filter(campaigns, "name")
        rows = self.conn.execute(
            f"SELECT name, manifest_path FROM campaigns WHERE 1=1 {where} ORDER BY name", params
        )
        return {name: path for name, path in rows}

    def money_by_campaign(self, campaigns: list[str] | None = None) -> dict[str, Money]:
        """Money (see `money`) of each campaign that has attempts."""
        where, params = _campaign_filter(campaigns, "a.campaign")
        sums = ", ".join(f"SUM({expr})" for expr in self._ATTEMPT_MONEY)
        rows = self.conn.execute(
            f"SELECT a.campaign, {sums} FROM {self._money_table} a WHERE 1=1 {where}"
            " GROUP BY a.campaign",
            params,
        )
        return {campaign: Money(*sums_) for campaign, *sums_ in rows}

    @functools.cached_property
    def _key_labels_kept(self) -> bool:
        """Whether attempts record their key's label (m007; a reading command may find a
        ledger not yet migrated, whose attempts were all sent with one unlabelled key)."""
        return "key_label" in self.dialect.columns(self.conn, "attempts")

    @functools.cached_property
    def _provenance(self) -> str:
        """The files' provenance column (m012), or NULL on a ledger read before it."""
        kept = "provenance" in self.dialect.columns(self.conn, "files")
        return "f.provenance" if kept else "NULL"

    @functools.cached_property
    def _key_totals_table(self) -> str:
        """Where each key's sums are read: `key_totals` (m007, kept by triggers; its
        `refusals` since m009), or on a ledger not yet migrated, the attempts themselves in
        the same shape (label '' for an attempt recorded before labels)."""
        if "key_totals" in self.dialect.tables(self.conn):
            if "refusals" in self.dialect.columns(self.conn, "key_totals"):
                return "key_totals"
            # Before m009 no batchgen recorded a refusal.
            return "(SELECT *, 0 AS refusals FROM key_totals)"
        label = "COALESCE(key_label, '')" if self._key_labels_kept else "''"
        refused = self.dialect.flag("COALESCE(outcome, '') = 'refused'")
        return (
            f"(SELECT campaign, {label} AS key_label, state, 1 AS attempts, cost_micro_usd,"
            f" unit_price_micro_usd, refunded_micro_usd, {refused} AS refusals"
            " FROM attempts)"
        )

    def _job_key(self, unlabelled: str = "NULL") -> str:
        """SQL: the label of the key of the job `j` (a jobs row): its latest attempt's,
        which is the one that created its current task when it has one. Requests that
        were not sent (429, 401, 402, a connection never opened: not attempts, §6) do not
        count. `unlabelled` (SQL) when that attempt was recorded before labels, NULL when
        there is none. Read on attempts_by_job_ref, newest first: a few rows per job."""
        label = f"COALESCE(a.key_label, {unlabelled})" if self._key_labels_kept else unlabelled
        return (
            f"(SELECT {label} FROM attempts a WHERE a.job_ref = j.ref"
            " AND a.state != 'not_sent' ORDER BY a.id DESC LIMIT 1)"
        )

    def key_use(self, campaigns: list[str] | None = None) -> list[KeyUse]:
        """Each key that sent an attempt of the selected campaigns: its tasks in flight
        (running attempts), money and refusals, by label, the unlabelled (None) last. Read
        from `key_totals`: at once on any ledger."""
        where, params = _campaign_filter(campaigns, "a.campaign")
        sums = ", ".join(f"COALESCE(SUM({expr}), 0)" for expr in self._ATTEMPT_MONEY)
        rows = self.conn.execute(
            "SELECT NULLIF(a.key_label, ''),"
            " COALESCE(SUM(CASE WHEN a.state = 'running' THEN a.attempts ELSE 0 END), 0),"
            " COALESCE(SUM(a.refusals), 0),"
            f" {sums} FROM {self._key_totals_table} a WHERE 1=1 {where}"
            " GROUP BY a.key_label ORDER BY a.key_label = '', a.key_label",
            params,
        )
        return [
            KeyUse(label, in_flight, Money(*money), refusals)
            for label, in_flight, refusals, *money in rows
        ]

    def status_entries(self, campaigns: list[str] | None = None) -> Iterator[str]:
        """Every job, in ingestion order, as the JSON text of its `status --json` entry
        (campaign, id, status, model, attempts, task_id, key, cost_usd, result_urls, files,
        provenance, verdict, error), spelled as `json.dumps` spells it, one at a time as
        SQLite reads them: a million jobs are never held at once. Saved files are the paths
        `download` recorded without error, provenance the marks read from each (null: not
        read); the verdict is its current result's; key is the label of the job's key (see
        `_job_key`; null for none, or one recorded before labels); cost_usd is the job's
        `cost_micro_usd` as money text (money.usd)."""
        where, params = _campaign_filter(campaigns, "j.campaign")
        d = self.dialect
        text = d.json_text
        escaped = d.instr("j.result_urls", "'\\u'")  # SQL: where a \u escape is, or 0
        urls = d.text_agg(text("u.value"), "', '", order="u.key")
        paths = d.text_agg(text("f.path"), "', '", order="f.n")
        marks = d.text_agg("COALESCE(f.p, 'null')", "', '", order="f.n")
        rows = self._stream(
            f"SELECT '{{\"campaign\": ' || {text('j.campaign')} || ', \"id\": ' || {text('j.id')}"
            f" || ', \"status\": ' || {text('j.status')} || ', \"model\": ' || {text('j.model')}"
            f" || ', \"attempts\": ' || j.attempts || ', \"task_id\": ' || {text('j.task_id')}"
            f" || ', \"key\": ' || {text(self._job_key())}"
            f" || ', \"cost_usd\": \"' || {usd_sql('j.cost_micro_usd', d)} || '\"'"
            # As stored (json.dumps'd), unless it holds \u escapes: json.dumps would have
            # written those characters as they are (ensure_ascii=False).
            " || ', \"result_urls\": ' || CASE WHEN j.result_urls IS NULL THEN '[]'"
            f"   WHEN {escaped} = 0 THEN j.result_urls"
            f"   ELSE '[' || COALESCE((SELECT {urls}"
            f"    FROM {d.json_items('j.result_urls', 'u')}), '') || ']' END"
            # The saved files' paths, then each one's marks as recorded (json.dumps'd; null
            # where not read), in one look at the job's files.
            f" || ', \"files\": [' || COALESCE((SELECT {paths} || '], \"provenance\": ['"
            f"   || {marks} FROM (SELECT path, n, {self._provenance} AS p FROM files f"
            "    WHERE f.job_ref = j.ref AND f.error IS NULL AND f.downloaded_at IS NOT NULL"
            "    ORDER BY f.n) f), '], \"provenance\": [') || ']'"
            f" || ', \"verdict\": ' || {text(CURRENT_VERDICT)}"
            f" || ', \"error\": ' || {text('j.last_error')} || '}}'"
            f" FROM jobs j WHERE 1=1 {where} ORDER BY j.campaign, j.position",
            params,
        )
        return (entry for (entry,) in rows)

    def _stream(self, sql: str, params: list[Any]) -> Any:
        """A query's rows as they are read, never all held at once: sqlite3's cursor, or
        on PostgreSQL a stream (PgConnection.stream), during which nothing else is read."""
        if isinstance(self.conn, PgConnection):
            return self.conn.stream(sql, params)
        return self.conn.execute(sql, params)

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

    def report_groups(self, campaigns: list[str] | None, by: str | None) -> list[dict[str, Any]]:
        """One row of sums per value of `by` (campaign, model, tag, status, verdict,
        reviewer, key), sorted by key; `by=None`: one row of totals. A job with several tags
        counts in each tag's group. By verdict, a job is in the group of its current
        result's verdict (approved, rejected, unreviewed) or, with no completed result, in
        NO_RESULT. By reviewer, in the group of who gave that verdict (UNNAMED: a verdict
        from before names were kept), UNREVIEWED, or NO_RESULT. By key, see
        `_report_by_key`.

        Columns: key, jobs, completed, failed, queued, spent, in_flight, unknown, refunded
        (micro-dollars), video_seconds, images.
        """
        if by == "key":
            return self._report_by_key(campaigns)
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
                ", k AS (SELECT DISTINCT j.campaign, j.id AS job_id, value AS tag"
                f" FROM jobs j, {self.dialect.json_values('j.tags')} WHERE 1=1 {where})"
            )
            tag_params = params
            tag_join = " LEFT JOIN k ON k.campaign = j.campaign AND k.job_id = j.id"
        elif by == "verdict":
            key = (
                "COALESCE(cv.verdict, CASE WHEN j.status = 'completed' THEN 'unreviewed'"
                f" ELSE '{NO_RESULT}' END)"
            )
            tag_join = JOB_VERDICT_JOIN
        elif by == "reviewer":
            reviewer = "cv.reviewer" if self._verdicts_name_reviewers else "NULL"
            key = (
                f"CASE WHEN cv.verdict IS NOT NULL THEN COALESCE({reviewer}, '{UNNAMED}')"
                f" WHEN j.status = 'completed' THEN '{UNREVIEWED}' ELSE '{NO_RESULT}' END"
            )
            tag_join = JOB_VERDICT_JOIN
        elif by in ("campaign", "model", "status"):
            key = f"j.{by}"
        else:
            raise ValueError(f"cannot group by {by!r}")
        completed, failed, queued, images = self._status_flags("j.")
        return self.query(
            "WITH m AS (SELECT a.campaign, a.job_id,"
            f" SUM({spent}) AS spent, SUM({in_flight}) AS in_flight,"
            f" SUM({unknown}) AS unknown, SUM({refunded}) AS refunded"
            f" FROM attempts a WHERE 1=1 {attempt_where} GROUP BY a.campaign, a.job_id){tagged}"
            f" SELECT {key} AS key, COUNT(*) AS jobs,"
            f" COALESCE(SUM({completed}), 0) AS completed,"
            f" COALESCE(SUM({failed}), 0) AS failed, COALESCE(SUM({queued}), 0) AS queued,"
            " COALESCE(SUM(m.spent), 0) AS spent, COALESCE(SUM(m.in_flight), 0) AS in_flight,"
            " COALESCE(SUM(m.unknown), 0) AS unknown, COALESCE(SUM(m.refunded), 0) AS refunded,"
            " COALESCE(SUM(CASE WHEN j.status = 'completed' AND j.kind = 'video'"
            "   THEN COALESCE(j.duration, 0) ELSE 0 END), 0) AS video_seconds,"
            f" COALESCE(SUM({images}), 0) AS images"
            " FROM jobs j LEFT JOIN m ON m.campaign = j.campaign AND m.job_id = j.id"
            f"{tag_join} WHERE 1=1 {where} {group}",
            [*attempt_params, *tag_params, *params],
        )

    def _status_flags(self, jobs: str) -> tuple[str, str, str, str]:
        """SQL: 1 or 0 for a job (its columns prefixed `jobs`) completed, failed, queued,
        and an image completed: the report's job columns, summed."""
        flag = self.dialect.flag
        return (
            flag(f"{jobs}status = 'completed'"),
            flag(f"{jobs}status = 'failed'"),
            flag(f"{jobs}status = 'queued'"),
            flag(f"{jobs}status = 'completed' AND {jobs}kind = 'image'"),
        )

    def _report_by_key(self, campaigns: list[str] | None) -> list[dict[str, Any]]:
        """`report --by key`: money is each attempt's, in the group of the key it was sent
        with; the job columns (jobs, completed, failed, queued, video_seconds, images)
        count each job once, in the group of its key (`_job_key`: its latest attempt's).
        Attempts recorded before labels are in UNLABELLED, jobs never sent in NO_KEY. So
        every attempt and every job is in exactly one group, and the groups add up to the
        totals; a job retried on another key has its money in both groups, its count in
        the last one's."""
        where, params = _campaign_filter(campaigns, "j.campaign")
        attempt_where, attempt_params = _campaign_filter(campaigns, "a.campaign")
        job_key = self._job_key(f"'{UNLABELLED}'")
        sums = ", ".join(
            f"COALESCE(SUM({expr}), 0) AS {name}"
            for name, expr in zip(
                ("spent", "in_flight", "unknown", "refunded"), self._ATTEMPT_MONEY, strict=True
            )
        )
        completed, failed, queued, images = self._status_flags("")
        return self.query(
            "WITH jk AS (SELECT j.status, j.kind, j.duration,"
            f"  COALESCE({job_key}, '{NO_KEY}') AS key"
            f"  FROM jobs j WHERE 1=1 {where}),"
            f" c AS (SELECT key, COUNT(*) AS jobs, SUM({completed}) AS completed,"
            f"  SUM({failed}) AS failed, SUM({queued}) AS queued,"
            "  SUM(CASE WHEN status = 'completed' AND kind = 'video'"
            "   THEN COALESCE(duration, 0) ELSE 0 END) AS video_seconds,"
            f"  SUM({images}) AS images"
            "  FROM jk GROUP BY key),"
            f" m AS (SELECT COALESCE(NULLIF(a.key_label, ''), '{UNLABELLED}') AS key, {sums},"
            "  COALESCE(SUM(a.refusals), 0) AS refusals"
            f"  FROM {self._key_totals_table} a WHERE 1=1 {attempt_where} GROUP BY a.key_label)"
            " SELECT k.key, COALESCE(c.jobs, 0) AS jobs, COALESCE(c.completed, 0) AS completed,"
            " COALESCE(c.failed, 0) AS failed, COALESCE(c.queued, 0) AS queued,"
            " COALESCE(m.spent, 0) AS spent, COALESCE(m.in_flight, 0) AS in_flight,"
            " COALESCE(m.unknown, 0) AS unknown, COALESCE(m.refunded, 0) AS refunded,"
            " COALESCE(c.video_seconds, 0) AS video_seconds, COALESCE(c.images, 0) AS images,"
            " COALESCE(m.refusals, 0) AS refusals"
            " FROM (SELECT key FROM c UNION SELECT key FROM m) k"
            " LEFT JOIN c ON c.key = k.key LEFT JOIN m ON m.key = k.key ORDER BY k.key",
            [*params, *attempt_params],
        )

    def job_attempts(self, campaigns: list[str] | None = None) -> Iterator[dict[str, Any]]:
        """Every job with each of its attempts (one row per attempt; a job without attempts
        gives one row whose attempt columns are NULL), in ingestion then attempt order.

        Per attempt: spent, in_flight, unknown, refunded (its money, by the rules; 0 when
        the job has no attempt), its key_label (NULL for one recorded before labels),
        `files`: a JSON list of the paths saved from its task, on the attempt whose task is
        the job's completed one (NULL on the others), `provenance` likewise (a JSON list of
        each file's marks, null where not read), and attempt_verdict and attempt_note
        (the review's on the result it made). Per job: job_verdict and job_note (of its
        current result), and job_reviewer (who gave that verdict).
        """
        where, params = _campaign_filter(campaigns, "j.campaign")
        spent, in_flight, unknown, refunded = self._ATTEMPT_MONEY
        key_label = "a.key_label" if self._key_labels_kept else "NULL"
        d = self.dialect
        paths = d.json_array_agg(d.json_text("f.path"), order="f.n")
        marks = d.json_array_agg(d.json("COALESCE(f.p, 'null')"), order="f.n")
        return _dicts(
            self._stream(
                "SELECT j.campaign, j.id, j.model, j.status, j.prompt, j.tags, j.duration,"
                " j.variant, j.price_micro_usd, j.task_id AS job_task_id, j.last_error,"
                " a.id AS attempt_id, a.started_at, a.http_status, a.outcome, a.state,"
                f" a.task_id, {key_label} AS key_label, a.unit_price_micro_usd, a.cost_micro_usd,"
                " a.refunded_micro_usd, a.error,"
                f" {spent} AS spent, {in_flight} AS in_flight, {unknown} AS unknown,"
                f" COALESCE({refunded}, 0) AS refunded,"
                " cv.verdict AS job_verdict, cv.note AS job_note,"
                f" {'cv.reviewer' if self._verdicts_name_reviewers else 'NULL'} AS job_reviewer,"
                " (SELECT av.verdict FROM current_verdicts av WHERE av.attempt_id = a.id"
                "   ORDER BY av.at DESC LIMIT 1) AS attempt_verdict,"
                " (SELECT av.note FROM current_verdicts av WHERE av.attempt_id = a.id"
                "   ORDER BY av.at DESC LIMIT 1) AS attempt_note,"
                " CASE WHEN j.status = 'completed' AND a.state = 'completed'"
                f"  AND a.task_id = j.task_id THEN (SELECT {paths} FROM"
                "   (SELECT path, n FROM files f WHERE f.campaign = j.campaign AND f.job_id = j.id"
                "    AND f.path IS NOT NULL AND f.error IS NULL ORDER BY f.n) f) END AS files,"
                " CASE WHEN j.status = 'completed' AND a.state = 'completed'"
                f"  AND a.task_id = j.task_id THEN (SELECT {marks}"
                f"   FROM (SELECT n, {self._provenance} AS p FROM files f"
                "    WHERE f.campaign = j.campaign AND f.job_id = j.id AND f.path IS NOT NULL"
                "    AND f.error IS NULL ORDER BY f.n) f) END AS provenance"
                " FROM jobs j LEFT JOIN attempts a ON a.campaign = j.campaign AND a.job_id = j.id"
                f"{JOB_VERDICT_JOIN} WHERE 1=1 {where} ORDER BY j.campaign, j.position, a.id",
                params,
            )
        )

    def result_files(
        self, campaigns: list[str] | None = None, job: tuple[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """One row per result URL of each completed job (or of one job), with what the
        `files` table recorded for it: campaign, job_id, n (index in result_urls), count
        (of the job's URLs), url, saved_url, path, size, sha256, downloaded_at, provenance
        (its JSON text, NULL when not read), and result:
        the job's how-manyth result this is (1, or more after `retry --rejected`)."""
        where, params = _campaign_filter(campaigns, "j.campaign")
        if job is not None:
            where, params = "AND j.campaign = ? AND j.id = ?", list(job)
        d = self.dialect
        return self.query(
            "SELECT j.campaign, j.id AS job_id, u.key AS n,"
            f" {d.json_array_length('j.result_urls')} AS count, u.value AS url, f.url AS saved_url,"
            f" f.path, f.size, f.sha256, f.downloaded_at, {self._provenance} AS provenance,"
            " (SELECT COUNT(*) FROM attempts a WHERE a.campaign = j.campaign"
            "   AND a.job_id = j.id AND a.state = 'completed') AS result"
            f" FROM jobs j CROSS JOIN {d.json_items('j.result_urls', 'u')}"
            " LEFT JOIN files f ON f.campaign = j.campaign AND f.job_id = j.id AND f.n = u.key"
            f" WHERE j.status = 'completed' AND j.result_urls IS NOT NULL {where}"
            " ORDER BY j.campaign, j.position, u.key",
            params,
        )

    def exported_files(
        self, campaigns: list[str] | None, approved_only: bool
    ) -> list[dict[str, Any]]:
        """The saved files of each completed job's current result (with `approved_only`,
        those whose current verdict is approved), for `export`: campaign, job_id, prompt,
        model, kind, task_id, cost_micro_usd, verdict, note, reviewer (NULL until the
        ledger records reviewers), n, path, size, sha256, provenance (JSON text or NULL)."""
        where, params = _campaign_filter(campaigns, "j.campaign")
        reviewer = "NULL"
        if self._verdicts_name_reviewers:  # the latest verdict row's on this result
            reviewer = (
                "(SELECT w.reviewer FROM verdicts w WHERE w.campaign = cv.campaign"
                " AND w.job_id = cv.job_id AND w.task_id = cv.task_id ORDER BY w.id DESC LIMIT 1)"
            )
        approved = " AND cv.verdict = 'approved'" if approved_only else ""
        return self.query(
            "SELECT j.campaign, j.id AS job_id, j.prompt, j.model, j.kind, j.task_id,"
            " j.cost_micro_usd, cv.verdict, cv.note, "
            f"{reviewer} AS reviewer, f.n, f.path, f.size, f.sha256,"
            f" {self._provenance} AS provenance"
            " FROM jobs j JOIN files f ON f.campaign = j.campaign AND f.job_id = j.id"
            f"{JOB_VERDICT_JOIN}"
            " WHERE j.status = 'completed' AND f.path IS NOT NULL AND f.error IS NULL"
            f" AND f.downloaded_at IS NOT NULL{approved} {where}"
            " ORDER BY j.campaign, j.position, f.n",
            params,
        )

    @functools.cached_property
    def _verdicts_name_reviewers(self) -> bool:
        """Whether the ledger records who gave each verdict (a `reviewer` column, m011; a
        reading command may find a ledger not yet migrated, whose verdicts name nobody)."""
        return "reviewer" in self.dialect.columns(self.conn, "verdicts")

    def recorded_file_paths(self, campaign: str) -> list[tuple[str, int, str]]:
        """(job id, n, path) of every result file of `campaign` recorded with a path, by
        job id and index (the table's key: PostgreSQL keeps no order of insertion)."""
        rows = self.conn.execute(
            "SELECT job_id, n, path FROM files WHERE campaign = ? AND path IS NOT NULL"
            " ORDER BY job_id, n",
            (campaign,),
        )
        return [(job_id, n, path) for job_id, n, path in rows]

    def ids_shared_by_case(self, campaign: str) -> set[str]:
        """The job ids of `campaign` that two or more of its jobs share once lower-cased
        (`tea-02` for `tea-02` and `TEA-02`): their files are named with a hash (download.py).
        SQLite lower-cases ASCII letters only, all that a file name keeps of an id as written.

        Two such ids cannot both be lower-case: the ids with an upper-case letter, grouped,
        and each group's lower-case id looked up on the index (0.2 s on a campaign of a
        million lower-case ids, where grouping them all takes 0.7 s)."""
        rows = self.conn.execute(
            "SELECT g.folded FROM (SELECT lower(id) AS folded, COUNT(*) AS n FROM jobs"
            "  WHERE campaign = ? AND id <> lower(id) GROUP BY lower(id)) g"
            " WHERE g.n > 1 OR EXISTS"
            " (SELECT 1 FROM jobs o WHERE o.campaign = ? AND o.id = g.folded)",
            (campaign, campaign),
        )
        return {folded for (folded,) in rows}

    def file_saved(
        self,
        campaign: str,
        job_id: str,
        n: int,
        url: str,
        path: str,
        size: int,
        sha256: str,
        provenance: dict[str, Any] | None = None,
    ) -> None:
        """Record a result file saved (or found intact) at `path`, with the marks read
        from it (`provenance`; None keeps what was recorded)."""
        values: list[Any] = [campaign, job_id, n, url, path, size, sha256, now()]
        column = update = ""
        if provenance is not None:
            column, update = ", provenance", ", provenance = excluded.provenance"
            values.append(json.dumps(provenance, ensure_ascii=False))
        self._patiently(lambda: self._record_file(values, column, update))

    def _record_file(self, values: list[Any], column: str, update: str) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO files (campaign, job_id, n, url, path, size, sha256, downloaded_at"
                f"{column}, error) VALUES ({', '.join('?' * len(values))}, NULL)"
                " ON CONFLICT (campaign, job_id, n) DO UPDATE SET url = excluded.url,"
                " path = excluded.path, size = excluded.size, sha256 = excluded.sha256,"
                f" downloaded_at = excluded.downloaded_at, error = NULL{update}",
                values,
            )

    def file_failed(self, campaign: str, job_id: str, n: int, url: str, error: str) -> None:
        """Record a download that failed: `download` tries it again, generation never does."""
        error = self.redact(error)

        def record() -> None:
            with self.transaction() as db:
                db.execute(
                    "INSERT INTO files (campaign, job_id, n, url, error) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT (campaign, job_id, n) DO UPDATE SET url = excluded.url,"
                    " path = NULL, size = NULL, sha256 = NULL, downloaded_at = NULL,"
                    " error = excluded.error",
                    (campaign, job_id, n, url, error),
                )

        self._patiently(record)  # an upsert: done again whole after a lock or a cut

    def requeue(self, campaigns: list[str] | None, status: str) -> int:
        """Put `failed` (or `held`) jobs back to `queued` with fresh attempts; their old
        attempts stay in the audit, and each requeue is an event."""
        if status not in ("failed", "held"):
            raise ValueError(f"only failed or held jobs can be requeued, not {status!r}")
        where, params = _campaign_filter(self.select_campaigns(campaigns) if campaigns else None)
        stamp = now()
        with self.transaction(patient=True) as db:
            db.execute(
                "INSERT INTO events (at, campaign, job_id, kind, detail)"
                " SELECT ?, campaign, id, 'requeued', "
                + self.dialect.json_object(
                    "'attempts', attempts, 'from', status, 'last_error', last_error"
                )
                + f" FROM jobs WHERE status = ? {where} ORDER BY campaign, position",
                (stamp, status, *params),
            )
            cursor = db.execute(
                "UPDATE jobs SET status = 'queued', attempts = 0, reason = NULL, task_id = NULL,"
                " progress = NULL, last_error = NULL, submitted_at = NULL, finished_at = NULL,"
                f" updated_at = ? WHERE status = ? {where}",
                (stamp, status, *params),
            )
        return cursor.rowcount

"""Ingest: the expanded jobs of a campaign written to the ledger, all or nothing, and
the fast spelling of their `jobs` rows."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from batchgen import catalog
from batchgen.bulk import collector_paused
from batchgen.errors import JobConflict
from batchgen.job import Campaign, Job, canonical_json
from batchgen.job import fingerprint as job_fingerprint
from batchgen.ledger.base import IngestResult, LedgerBase, now
from batchgen.ledger.db import PgConnection


class IngestMixin(LedgerBase):
    """The ledger's ingest."""

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
        with collector_paused():  # 100,000 row tuples, no cycles (bulk.py)
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
        with self.transaction(patient=True) as db:
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
            numbered = ((campaign.name, start + i, *row) for i, row in enumerate(new_rows))
            if isinstance(db, PgConnection):  # COPY: PostgreSQL's way to take many rows
                db.copy_rows("jobs", JOB_INSERT_COLUMNS, numbered)
            else:
                db.executemany(
                    f"INSERT INTO jobs ({', '.join(JOB_INSERT_COLUMNS)}) VALUES "
                    f"({', '.join('?' * len(JOB_INSERT_COLUMNS))})",
                    numbered,
                )
            for job, fingerprint, price, request in changed:
                values = _job_row(job, request, fingerprint, price, stamp)
                content = dict(zip(JOB_INSERT_COLUMNS[2:], values, strict=True))
                db.execute(
                    f"UPDATE jobs SET {', '.join(f'{c}=?' for c in _REPLACED)},"
                    " status='queued', reason=NULL, task_id=NULL, progress=NULL,"
                    " result_urls=NULL, cost_micro_usd=0, attempts=0, last_error=NULL,"
                    " submitted_at=NULL, finished_at=NULL WHERE campaign=? AND id=?",
                    (*(content[c] for c in _REPLACED), campaign.name, job.id),
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


# What a replaced job takes from its new content: everything ingest writes but its place.
_REPLACED = JOB_INSERT_COLUMNS[3:-2] + ("updated_at",)


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

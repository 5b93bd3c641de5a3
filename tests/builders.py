"""Ledgers for tests, in one place: jobs ingested through `Ledger.ingest`, and attempts taken
through their states by the Ledger's own write methods, in the order the scheduler calls
them (begin_attempt, attempt_created, task_completed / task_failed / attempt_ended); then
the ledgers most tests start from, and the ways tests read them back.

Not a test module: test modules import from here, never from one another
(tests/test_tiers.py checks it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from batchgen.cli import cli
from batchgen.job import Campaign, Job
from batchgen.ledger import Ledger, LedgerJob
from batchgen.money import to_micros
from batchgen.report import render
from tests.e2e import rows

CDN = "https://cdn.example.com"
PRICE = 100_000  # micro-dollars: each job of `numbered` and `clips`, a 5 s grok task
# Odd text for ids, prompts and errors: quotes, control characters, emoji, a line
# separator, and the end of an HTML script.
ODD = 'quote " backslash \\ tab\t newline\n bell\x07 é 😀 \u2028 </script>'

# ---------------------------------------------------------------- jobs, priced by okaypic-api.txt


def seedance(job_id: str, duration: int = 5, fast: bool = False, **kw) -> Job:
    model = "jimeng-video-seedance-2.0" + ("-fast" if fast else "")
    return Job("c", job_id, model, f"prompt {job_id}", duration=duration, **kw)


def grok(job_id: str, duration: int = 5, **kw) -> Job:
    return Job("c", job_id, "grok-video-3", f"prompt {job_id}", duration=duration, **kw)


def veo(job_id: str, variant: str = "veo3.1-pro", **kw) -> Job:
    return Job("c", job_id, "veo3.1", f"prompt {job_id}", variant=variant, **kw)


def image(job_id: str, **kw) -> Job:
    return Job("c", job_id, "jimeng-5.0", f"prompt {job_id}", **kw)


def numbered(n: int) -> list[Job]:
    """n 5 s grok jobs ($0.10 each): j0, j1, ... prompted "prompt 0", "prompt 1", ..."""
    return [Job("c", f"j{i}", "grok-video-3", f"prompt {i}", duration=5) for i in range(n)]


def clips(n: int) -> list[Job]:
    """n 5 s grok jobs ($0.10 each): clip-1 ... clip-n prompted "clip number 1", ..., the
    jobs of tests.e2e.grok_batch's manifest."""
    return [
        Job("c", f"clip-{i}", "grok-video-3", f"clip number {i}", duration=5)
        for i in range(1, n + 1)
    ]


# ---------------------------------------------------------------- a ledger of jobs


def make_ledger(
    path: Path | str, jobs: list[Job], campaign: str = "c", budget: int | None = None
) -> Ledger:
    """A ledger holding `jobs`, all queued, in `campaign` (budget in micro-dollars), at
    `path`: a SQLite file or a PostgreSQL database's URL."""
    ledger = Ledger(path)
    for job in jobs:
        job.campaign = campaign
    ledger.ingest(Campaign(campaign, f"{campaign}.yaml", "sha", budget), jobs)
    return ledger


def build_ledger(path: Path | str, n: int, budget_usd: str | None = None) -> list[str]:
    """A ledger of n clips (see `clips`), closed for a command to open; their ids."""
    jobs = clips(n)
    make_ledger(path, jobs, budget=None if budget_usd is None else to_micros(budget_usd)).close()
    return [job.id for job in jobs]


# ---------------------------------------------------------------- a job through its attempt states


def unfinished(ledger: Ledger, job_id: str, campaign: str = "c") -> LedgerJob:
    """The job as the scheduler reads it: queued, or running once started."""
    return next(j for j in ledger.unfinished_jobs([campaign]) if j.id == job_id)


def start(
    ledger: Ledger,
    job_id: str,
    campaign: str = "c",
    task: str | None = None,
    key: str | None = None,
) -> LedgerJob:
    """Submit a queued job (with the key labelled `key`): its task is created and charged
    (in flight)."""
    job = unfinished(ledger, job_id, campaign)
    attempt = ledger.begin_attempt(job, key)
    ledger.attempt_created(job, attempt, 200, task or f"task-{campaign}-{job_id}-{job.attempts}")
    return job


def complete(
    ledger: Ledger,
    job_id: str,
    campaign: str = "c",
    urls: list[str] | None = None,
    task: str | None = None,
    observed: float | None = None,
) -> LedgerJob:
    """Submit a queued job and its task completes (generated in `observed` seconds, when
    followed from its submission)."""
    job = start(ledger, job_id, campaign, task)
    result = [f"{CDN}/{job_id}.mp4"] if urls is None else urls
    ledger.task_completed(job, result, observed_seconds=observed)
    return job


def fail(
    ledger: Ledger, job_id: str, campaign: str = "c", then: str = "failed", why: str = "NSFW"
) -> LedgerJob:
    """The task is created, then fails (refunded); the job is `then` (failed or queued)."""
    job = start(ledger, job_id, campaign)
    ledger.task_failed(job, why, then)
    return job


def unknown(ledger: Ledger, job_id: str, campaign: str = "c", then: str = "held") -> LedgerJob:
    """The request left and no usable answer came back."""
    job = unfinished(ledger, job_id, campaign)
    attempt = ledger.begin_attempt(job)
    ledger.attempt_ended(
        job,
        attempt,
        state="unknown",
        outcome="read timeout",
        counted=True,
        job_status=then,
        error="ReadTimeout",
        reason="unknown outcome" if then == "held" else None,
    )
    return job


def rejected(ledger: Ledger, job_id: str, campaign: str = "c") -> LedgerJob:
    job = unfinished(ledger, job_id, campaign)
    attempt = ledger.begin_attempt(job)
    ledger.attempt_ended(
        job,
        attempt,
        state="rejected",
        outcome="rejected",
        counted=True,
        job_status="failed",
        http_status=400,
        error="invalid ratio",
    )
    return job


def sending(ledger: Ledger, job_id: str, campaign: str = "c") -> LedgerJob:
    """A crash right after the intent was committed: the attempt stays `sending`."""
    job = unfinished(ledger, job_id, campaign)
    ledger.begin_attempt(job)
    return job


def sent_with(ledger: Ledger, job_id: str, key: str | None, campaign: str = "c") -> None:
    """Record `key` as the label of the key the job's latest attempt was sent with, as the
    scheduler records it when the attempt begins."""
    with ledger.transaction() as db:
        db.execute(
            "UPDATE attempts SET key_label = ? WHERE id = (SELECT MAX(id) FROM attempts"
            " WHERE campaign = ? AND job_id = ?)",
            (key, campaign, job_id),
        )


# ---------------------------------------------------------------- ledgers with every state


@pytest.fixture
def audit(tmp_path) -> Path:
    """A SQLite file of `audit_ledger`'s."""
    return Path(audit_ledger(tmp_path / "audit.db"))


@pytest.fixture
def audit_at(ledger_at) -> Path | str:
    """`audit_ledger` on each kind of ledger (conftest's ledger_at)."""
    return audit_ledger(ledger_at)


def audit_ledger(path: Path | str) -> Path | str:
    """Every money state once, with tags:

    fast-10   seedance fast 10 s, completed        spent 0.80     tags a, b   10 video s
    grok-15   grok 15 s, completed                  spent 0.30     tag a       15 video s
    grok-bad  grok 5 s, task failed (refunded)      refunded 0.10  tag b
    sd-run    seedance 5 s, running                 in flight 0.60
    pro-lost  veo pro, unknown outcome, held        unknown 0.30   tag a
    sd-sent   seedance 5 s + video ref, `sending`   unknown 1.20
    poster    jimeng-5.0, completed                 spent 0.20     1 image
    veo-done  veo fast, completed                   spent 0.10     0 video s
    bad-400   grok 5 s, rejected                    nothing
    wait      grok 10 s, queued                     nothing        tag a
    """
    ref = [{"type": "video", "url": "https://example.com/ref.mp4"}]
    ledger = make_ledger(
        path,
        [
            seedance("fast-10", 10, fast=True, tags=["a", "b"]),
            grok("grok-15", 15, tags=["a"]),
            grok("grok-bad", tags=["b"]),
            seedance("sd-run"),
            veo("pro-lost", tags=["a"]),
            seedance("sd-sent", ref_mode="omni", media=ref),
            image("poster"),
            veo("veo-done", variant="veo3.1-fast"),
            grok("bad-400"),
            grok("wait", 10, tags=["a"]),
        ],
        budget=5_000_000,
    )
    complete(ledger, "fast-10")
    complete(ledger, "grok-15")
    fail(ledger, "grok-bad")
    start(ledger, "sd-run")
    unknown(ledger, "pro-lost")
    sending(ledger, "sd-sent")
    complete(ledger, "poster", urls=[f"{CDN}/poster.png"])
    complete(ledger, "veo-done")
    rejected(ledger, "bad-400")
    ledger.close()
    return path


def every_kind_of_job(path: Path) -> Ledger:
    """Two campaigns, every status, odd text in ids, prompts and errors, result URLs with
    non-ASCII characters (stored escaped by json.dumps), several files per job, a failed
    download, a sub-cent price, verdicts current, withdrawn and stale."""
    ledger = make_ledger(
        path,
        [
            grok("done"),
            seedance(f"odd {ODD}", fast=True),
            grok("two-files"),
            image("judged"),
            grok("withdrawn"),
            grok("again"),
            grok("bad"),
            seedance("run"),
            grok("held"),
            grok("sent"),
            grok("wait"),
            grok("refused"),
        ],
        budget=40_000_000,
    )
    ledger.ingest(Campaign("b-second", "b.yaml", "sha", None), [Job("b-second", "x", "veo3.1",
                  "veo", variant="veo3.1-fast"), Job("b-second", "y", "grok-video-3", "y",
                  duration=10)])  # fmt: skip
    done = complete(ledger, "done")
    ledger.record_verdict("c", "done", done.task_id or "", "approved", None)
    complete(ledger, f"odd {ODD}", urls=[f"{CDN}/caf\u00e9 {ODD}.mp4"])
    complete(ledger, "two-files", urls=[f"{CDN}/a.mp4", f"{CDN}/b.mp4"])
    marks = {"c2pa": None, "xmp": {"description": ODD}, "labels": [], "marked": False}
    columns = ledger.dialect.columns(ledger.conn, "files")
    if "provenance" not in columns:  # a ledger from before m012
        marks = None
    ledger.file_saved("c", "two-files", 1, f"{CDN}/b.mp4", f"out/c/two {ODD}.mp4", 3, "ab", marks)
    ledger.file_saved("c", "two-files", 0, f"{CDN}/a.mp4", "out/c/two-files.mp4", 3, "cd")
    ledger.file_failed("c", "done", 0, f"{CDN}/done.mp4", f"HTTP 404 {ODD}")
    for job_id in ("judged", "withdrawn", "again"):
        job = complete(ledger, job_id)
        ledger.record_verdict("c", job_id, job.task_id or "", "approved", None)
    ledger.record_verdict("c", "judged", queued_task(ledger, "judged"), "rejected", ODD)
    ledger.record_verdict("c", "withdrawn", queued_task(ledger, "withdrawn"), None, None)
    assert ledger.requeue_rejected(["c"]) == 1  # judged: its rejected result is stale now
    ledger.record_verdict("c", "again", queued_task(ledger, "again"), "rejected", "no")
    fail(ledger, "bad", why=f"Generation failed: {ODD}")
    start(ledger, "run")
    unknown(ledger, "held")
    sending(ledger, "sent")
    rejected(ledger, "refused")
    complete(ledger, "y", campaign="b-second")
    start(ledger, "x", campaign="b-second")
    label_keys(ledger)
    return ledger


def label_keys(ledger: Ledger) -> None:
    """Sent with two keys, and some attempts before labels were kept (NULL), as the
    scheduler records the label of each attempt (m007; nothing on an older ledger)."""
    columns = ledger.dialect.columns(ledger.conn, "attempts")
    if "key_label" in columns:
        with ledger.transaction() as db:
            db.execute(
                "UPDATE attempts SET key_label ="
                " CASE id % 3 WHEN 1 THEN 'studio' WHEN 2 THEN 'night' END"
            )


def queued_task(ledger: Ledger, job_id: str) -> str:
    (task_id,) = ledger.conn.execute(
        "SELECT task_id FROM jobs WHERE campaign = 'c' AND id = ?", (job_id,)
    ).fetchone()
    return str(task_id)


# ---------------------------------------------------------------- reading them back


def invoke(ledger: Path | str, *args: str):
    return CliRunner().invoke(cli, ["--ledger", str(ledger), *args])


def report(path: Path | str, by: str = "campaign", fmt: str = "json", per_job: bool = False, **kw):
    ledger = Ledger(path, create=False)
    try:
        text = render(ledger, kw.get("campaigns", []), by, fmt, per_job, kw.get("width", 200))
    finally:
        ledger.close()
    assert text.endswith("\n")
    return json.loads(text) if fmt == "json" else text


Totals = tuple[dict[Any, tuple[int, ...]], dict[Any, int], dict[Any, tuple[int, ...]]]


def recomputed_totals(path: Path | str) -> Totals:
    """What attempt_totals, verdict_totals and key_totals must hold, summed from the rows."""
    attempts = {
        (r["campaign"], r["state"]): (r["n"], r["cost"], r["unit"], r["refund"])
        for r in rows(
            path,
            "SELECT campaign, state, COUNT(*) AS n, SUM(cost_micro_usd) AS cost,"
            " SUM(unit_price_micro_usd) AS unit, SUM(refunded_micro_usd) AS refund"
            " FROM attempts GROUP BY campaign, state",
        )
    }
    verdicts = {
        (r["campaign"], r["verdict"]): r["n"]
        for r in rows(
            path,
            "SELECT j.campaign, cv.verdict, COUNT(*) AS n FROM jobs j JOIN current_verdicts cv"
            " ON cv.campaign = j.campaign AND cv.job_id = j.id AND cv.task_id = j.task_id"
            " WHERE j.status = 'completed' AND cv.verdict IS NOT NULL"
            " GROUP BY j.campaign, cv.verdict",
        )
    }
    keys = {
        (r["campaign"], r["key_label"], r["state"]): (
            r["n"], r["cost"], r["unit"], r["refund"], r["refusals"]
        )
        for r in rows(
            path,
            "SELECT campaign, key_label, state, COUNT(*) AS n, SUM(cost_micro_usd) AS cost,"
            " SUM(unit_price_micro_usd) AS unit, SUM(refunded_micro_usd) AS refund,"
            " SUM(CASE WHEN outcome = 'refused' THEN 1 ELSE 0 END) AS refusals"
            " FROM attempts GROUP BY campaign, key_label, state",
        )
    }  # fmt: skip
    return attempts, verdicts, keys


def kept_totals(path: Path | str) -> Totals:
    attempts = {
        (c, s): (n, cost, unit, refund)
        for c, s, n, cost, unit, refund in _tuples(path, "SELECT * FROM attempt_totals")
    }
    verdicts = {(c, v): n for c, v, n in _tuples(path, "SELECT * FROM verdict_totals")}
    keys = {  # '' is how key_totals keeps the NULL label of attempts recorded before m007
        (c, k or None, s): (n, cost, unit, refund, refusals)
        for c, k, s, n, cost, unit, refund, refusals in _tuples(path, "SELECT * FROM key_totals")
    }
    return attempts, verdicts, keys


def _tuples(path: Path | str, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(row.values()) for row in rows(path, sql)]

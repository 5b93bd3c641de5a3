"""A test-only entry point: the real `batchgen` command, armed to SIGKILL itself at a
named scheduler checkpoint.

    python -m tests.crashing POINT N [batchgen arguments...]

(with BATCHGEN_TEST_SIGNAL=SIGSTOP in its environment it pauses there instead)

runs `batchgen` with `Scheduler.checkpoint` replaced by a function that kills the process
with SIGKILL (no cleanup, no atexit, no flush: exactly a kill -9) the N-th time POINT is
reached. POINT is one of CHECKPOINTS. Arming lives here, never in batchgen's own code
paths: a normal run calls the no-op checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchgen import cli
from batchgen.ledger.db import is_url
from batchgen.sandbox import Truth
from batchgen.sandbox.truth import payload_key
from batchgen.scheduler import Scheduler
from tests.e2e import rows as query

ROOT = Path(__file__).resolve().parent.parent

CHECKPOINTS = ("intent_committed", "submit_answered", "task_id_committed", "poll_answered")


def arm(point: str, nth: int, how: signal.Signals = signal.SIGKILL) -> None:
    """Make the nth arrival at `point` a SIGKILL of this process (or `how`: SIGSTOP pauses
    it there, as a closed laptop lid would, until a SIGCONT)."""
    if point not in CHECKPOINTS:
        raise SystemExit(f"unknown checkpoint {point!r} (known: {', '.join(CHECKPOINTS)})")
    if nth < 1:
        raise SystemExit("N must be at least 1")
    seen = 0

    def checkpoint(name: str) -> None:
        nonlocal seen
        if name != point:
            return
        seen += 1
        if seen == nth:
            os.kill(os.getpid(), how)

    Scheduler.checkpoint = staticmethod(checkpoint)  # type: ignore[method-assign]


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(f"usage: python -m tests.crashing POINT N [batchgen args...]\n{__doc__}")
    point, nth, *args = argv
    arm(point, int(nth), signal.Signals[os.environ.get("BATCHGEN_TEST_SIGNAL", "SIGKILL")])
    sys.argv = ["batchgen", *args]
    cli.main()


# ---------------------------------------------------------------------- for the tests


def crashing_command(point: str, nth: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "tests.crashing", point, str(nth), *args]


def run_crashing(
    point: str, nth: int, *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `batchgen ARGS` armed to SIGKILL itself the nth time it reaches `point`."""
    return subprocess.run(
        crashing_command(point, nth, *args),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )


@dataclass
class Audit:
    """The ledger held against the service's truth, after a run has ended."""

    spent: int = 0
    unknown: int = 0  # possible cost of attempts of unknown outcome
    unknown_attempts: Counter[str] = field(default_factory=Counter)  # job id ->
    orphans: Counter[str] = field(default_factory=Counter)  # job id -> tasks never recorded
    submissions: Counter[str] = field(default_factory=Counter)  # job id -> tasks at the service
    statuses: Counter[str] = field(default_factory=Counter)


def audit(
    ledger: Path | str, truth: Truth, job_ids: list[str], *, all_completed: bool = True
) -> Audit:
    """Check every promise of PRODUCT.md §10 that holds after any crash and a finished resume:

    - a SQLite file is intact (PRAGMA integrity_check; a PostgreSQL server keeps its own);
    - no job lost: exactly the ingested jobs, each completed (or, if not `all_completed`,
      at least in a legal state with a reason when it failed);
    - no recorded task submitted again: every task id in the ledger is distinct and is a
      task the service created for that very job; each job's tasks at the service are its
      recorded ones plus at most one per attempt of unknown outcome; a job is submitted
      again only after its recorded task failed, or was given up as lost and a person
      chose `retry --unknown`;
    - ledger spend equals what the service charged for the completed tasks it recorded,
      and spent + unknown covers everything the service kept (net charges).
    """
    result = Audit()
    if not is_url(ledger):
        assert query(ledger, "PRAGMA integrity_check") == [{"integrity_check": "ok"}]

    jobs = {r["id"]: r for r in query(ledger, "SELECT * FROM jobs")}
    assert sorted(jobs) == sorted(job_ids), "the ledger's jobs are not the ingested ones"
    result.statuses = Counter(j["status"] for j in jobs.values())
    if all_completed:
        assert result.statuses == Counter({"completed": len(job_ids)}), result.statuses
    for job in jobs.values():
        assert job["status"] in ("queued", "completed", "failed", "held"), job
        if job["status"] == "failed":
            assert job["last_error"], job

    attempts = query(ledger, "SELECT * FROM attempts ORDER BY id")
    assert [a for a in attempts if a["state"] == "sending"] == [], "a submission left unsettled"
    task_ids = [a["task_id"] for a in attempts if a["task_id"] is not None]
    assert len(task_ids) == len(set(task_ids)), "one task id recorded twice"

    job_of_payload = {payload_key(json.loads(j["request"])): i for i, j in jobs.items()}
    assert len(job_of_payload) == len(jobs), "two jobs with the same request: cannot audit"
    service = {s.task_id: s for s in truth.submissions}
    for s in truth.submissions:
        assert payload_key(s.payload) in job_of_payload, f"a task for no job: {s.payload}"
        result.submissions[job_of_payload[payload_key(s.payload)]] += 1
    for a in attempts:
        if a["task_id"] is None:
            continue
        assert a["task_id"] in service, f"task {a['task_id']} is unknown to the service"
        task = service[a["task_id"]]
        assert job_of_payload[payload_key(task.payload)] == a["job_id"], "task of another job"
        lost = a["state"] == "unknown" and a["outcome"] == "lost"
        assert a["state"] in ("running", "completed", "failed") or lost, a
        if a["state"] == "completed":
            assert task.status == "completed", (a, task)
        if a["state"] == "failed":
            assert task.status == "failed", (a, task)
    for job in jobs.values():
        if job["status"] == "completed":
            assert service[job["task_id"]].status == "completed", job
            assert json.loads(job["result_urls"]), job

    # A job is submitted again only after its recorded task failed, or after an attempt
    # of unknown outcome: of each job's recorded tasks, all but the last have failed (or
    # were lost, then requeued by `retry --unknown`: a requeued event says so).
    requeued = {
        r["job_id"] for r in query(ledger, "SELECT job_id FROM events WHERE kind = 'requeued'")
    }
    by_job: dict[str, list[dict[str, Any]]] = {}
    for a in attempts:
        if a["task_id"] is not None:
            by_job.setdefault(a["job_id"], []).append(a)
    for job_id, tasks in by_job.items():
        for earlier in tasks[:-1]:
            lost_then_requeued = earlier["outcome"] == "lost" and job_id in requeued
            assert earlier["state"] == "failed" or lost_then_requeued, (
                f"{job_id}: recorded task {earlier['task_id']} ({earlier['state']}) "
                "was followed by another submission"
            )

    recorded = Counter(a["job_id"] for a in attempts if a["task_id"] is not None)
    result.unknown_attempts = Counter(a["job_id"] for a in attempts if a["state"] == "unknown")
    for job_id in jobs:
        orphans = result.submissions[job_id] - recorded[job_id]
        assert 0 <= orphans <= result.unknown_attempts[job_id], (
            f"{job_id}: {result.submissions[job_id]} task(s) at the service, "
            f"{recorded[job_id]} recorded, {result.unknown_attempts[job_id]} unknown attempt(s)"
        )
        if orphans:
            result.orphans[job_id] = orphans

    result.spent = sum(
        a["cost_micro_usd"] for a in attempts if a["state"] in ("completed", "failed")
    )
    result.unknown = sum(a["unit_price_micro_usd"] for a in attempts if a["state"] == "unknown")
    # A task given up as lost may have completed at the service: the ledger cannot know,
    # and counts its cost as unknown.
    followed = {a["task_id"] for a in attempts if a["task_id"] and a["state"] != "unknown"}
    known_completed = sum(
        s.price_micros
        for s in truth.submissions
        if s.status == "completed" and s.task_id in followed
    )
    assert result.spent == known_completed, "ledger spend differs from the service's charges"
    assert result.spent == sum(j["cost_micro_usd"] for j in jobs.values())
    net = truth.net_charged_micros()
    assert result.spent <= net <= result.spent + result.unknown, (result.spent, net, result.unknown)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])

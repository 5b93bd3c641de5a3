"""The scheduler against a scripted service (httpx.MockTransport): each rule of §6 alone,
on each kind of ledger (a SQLite file, a PostgreSQL database).

End-to-end behaviour over real HTTP is in test_run_e2e.py; here every answer is chosen.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from batchgen.client import Client
from batchgen.ledger import Ledger
from batchgen.scheduler import AuthFailed, Scheduler, Settings
from tests.builders import make_ledger, numbered

FAST = Settings(concurrency=3, poll_interval=0.001, retry_delay=0.001, max_attempts=4)
QUICK = {"poll_interval": 0.001, "retry_delay": 0.001}
DONE = {"status": "completed", "resultUrls": ["https://cdn.example.com/v.mp4"], "type": "video"}

Reply = dict[str, Any] | Callable[[httpx.Request], httpx.Response]


class ScriptedService:
    """Answers each POST and GET with the next scripted reply (the last one repeats)."""

    def __init__(self, posts: list[Reply], polls: list[Reply] | None = None):
        self.posts = deque(posts)
        self.polls = deque(polls or [DONE])
        self.requests: list[httpx.Request] = []
        self.tasks = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        queue = self.posts if request.method == "POST" else self.polls
        reply = queue.popleft() if len(queue) > 1 else queue[0]
        if callable(reply):
            return reply(request)
        body = dict(reply)
        status = body.pop("_status", 200)
        if request.method == "POST" and "taskId" in body:
            self.tasks += 1
            body["taskId"] = f"task-{self.tasks}"
        return httpx.Response(status, json=body)

    @property
    def submits(self) -> int:
        return sum(1 for r in self.requests if r.method == "POST")


CREATED = {"generationId": "g", "taskId": "t", "status": "pending"}


def error(status: int, message: str = "nope") -> dict[str, Any]:
    return {"_status": status, "error": message}


def raises(exc: type[httpx.TransportError]) -> Callable[[httpx.Request], httpx.Response]:
    def reply(request: httpx.Request) -> httpx.Response:
        raise exc("scripted", request=request)

    return reply


def run(ledger: Ledger, service: ScriptedService, settings: Settings = FAST):
    async def go():
        client = Client("https://okaypic.test", "okpk_test", transport=httpx.MockTransport(service))
        try:
            return await Scheduler(ledger, client, settings).run()
        finally:
            await client.aclose()

    return asyncio.run(go())


def attempts(ledger: Ledger) -> list[dict[str, Any]]:
    return ledger.query("SELECT * FROM attempts ORDER BY id")


def job(ledger: Ledger, job_id: str = "j0") -> dict[str, Any]:
    return ledger.query("SELECT * FROM jobs WHERE id = ?", [job_id])[0]


def test_a_created_task_is_polled_to_completion_and_costed(ledger_at):
    ledger = make_ledger(ledger_at, numbered(1))
    run(ledger, ScriptedService([CREATED], [{"status": "processing", "progress": 40}, DONE]))
    row = job(ledger)
    assert (row["status"], row["task_id"], row["cost_micro_usd"]) == (
        "completed",
        "task-1",
        100_000,
    )
    assert json.loads(row["result_urls"]) == ["https://cdn.example.com/v.mp4"]
    assert ledger.money().spent == 100_000


def test_the_body_sent_is_the_job_request_with_the_bearer_key(ledger_at):
    ledger = make_ledger(ledger_at, numbered(1))
    service = ScriptedService([CREATED])
    run(ledger, service)
    post = service.requests[0]
    assert post.url.path == "/api/video/generate"
    assert post.headers["Authorization"] == "Bearer okpk_test"
    assert json.loads(post.content) == {
        "model": "grok-video-3",
        "prompt": "prompt 0",
        "duration": 5,
    }


def test_429_on_submit_waits_without_spending_an_attempt(ledger_at):
    ledger = make_ledger(ledger_at, numbered(1))
    run(ledger, ScriptedService([error(429), error(429), CREATED]))
    assert job(ledger)["attempts"] == 1
    assert [(a["http_status"], a["counted"], a["state"]) for a in attempts(ledger)] == [
        (429, 0, "not_sent"),
        (429, 0, "not_sent"),
        (200, 1, "completed"),
    ]


def test_500_on_submit_is_retried_and_counts_until_the_job_fails(ledger_at):
    ledger = make_ledger(ledger_at, numbered(1))
    service = ScriptedService([error(500, "backend down")])
    run(ledger, service)
    row = job(ledger)
    assert row["status"] == "failed"
    assert service.submits == 4
    assert row["last_error"] == "gave up after 4 attempt(s); last error: backend down"


def test_400_fails_the_job_at_once_with_the_services_message(ledger_at):
    ledger = make_ledger(ledger_at, numbered(1))
    service = ScriptedService([error(400, "invalid ratio")])
    run(ledger, service)
    assert (job(ledger)["status"], job(ledger)["last_error"]) == ("failed", "invalid ratio")
    assert service.submits == 1


def test_a_connect_error_is_retried_without_counting_an_attempt(ledger_at):
    ledger = make_ledger(ledger_at, numbered(1))
    run(ledger, ScriptedService([raises(httpx.ConnectError), CREATED]))
    assert job(ledger)["attempts"] == 1
    assert job(ledger)["status"] == "completed"


def test_a_service_that_cannot_be_reached_stops_the_run_resumably(ledger_at):
    ledger = make_ledger(ledger_at, numbered(2))
    summary = run(ledger, ScriptedService([raises(httpx.ConnectError)]))
    assert summary.stopped_for == "unreachable"
    assert ledger.counts()["queued"] == 2


def test_a_read_timeout_on_submit_is_an_unknown_attempt_then_resubmitted(ledger_at):
    ledger = make_ledger(ledger_at, numbered(1))
    service = ScriptedService([raises(httpx.ReadTimeout), CREATED])
    run(ledger, service)
    assert [a["state"] for a in attempts(ledger)] == ["unknown", "completed"]
    assert ledger.money().unknown == 100_000
    assert job(ledger)["attempts"] == 2


def test_on_unknown_hold_keeps_the_job_for_a_person(ledger_at):
    ledger = make_ledger(ledger_at, numbered(1))
    service = ScriptedService([raises(httpx.ReadTimeout), CREATED])
    run(ledger, service, Settings(3, 0.001, 0.001, 4, on_unknown="hold"))
    assert job(ledger)["status"] == "held"
    assert service.submits == 1


def test_poll_errors_never_cause_a_resubmission(ledger_at):
    ledger = make_ledger(ledger_at, numbered(1))
    service = ScriptedService(
        [CREATED],
        [
            error(500),
            raises(httpx.ReadTimeout),
            {"_status": 200, "garbage": True},
            error(404),
            DONE,
        ],
    )
    run(ledger, service)
    assert service.submits == 1
    assert job(ledger)["status"] == "completed"


def test_a_failed_task_is_refunded_and_submitted_again(ledger_at):
    ledger = make_ledger(ledger_at, numbered(1))
    failed = {"status": "failed", "errorMessage": "Generation failed", "type": "video"}
    service = ScriptedService([CREATED], [failed, DONE])
    run(ledger, service)
    assert service.submits == 2
    assert [
        (a["state"], a["cost_micro_usd"], a["refunded_micro_usd"]) for a in attempts(ledger)
    ] == [("failed", 0, 100_000), ("completed", 100_000, 0)]
    money = ledger.money()
    assert (money.spent, money.refunded) == (100_000, 100_000)


def test_401_stops_at_once_after_one_request_and_no_job_changes_state(ledger_at):
    ledger = make_ledger(ledger_at, numbered(3))
    service = ScriptedService([error(401, "Invalid or missing API key")])
    with pytest.raises(AuthFailed):
        run(ledger, service)
    assert service.submits == 1
    assert ledger.counts()["queued"] == 3


def test_402_submits_nothing_more_but_lets_tasks_in_flight_finish(ledger_at):
    ledger = make_ledger(ledger_at, numbered(5))
    service = ScriptedService(
        [CREATED, CREATED, error(402, "Insufficient balance")],
        [{"status": "processing", "progress": 10}] * 5 + [DONE],
    )
    summary = run(ledger, service)
    assert summary.stopped_for == "balance"
    counts = ledger.counts()
    assert (counts["completed"], counts["queued"], counts["failed"]) == (2, 3, 0)
    assert service.submits == 3


def test_a_job_over_budget_is_not_submitted_and_waits_with_reason_budget(ledger_at):
    ledger = make_ledger(ledger_at, numbered(3), budget=250_000)
    summary = run(ledger, ScriptedService([CREATED]))
    assert len(summary.budget_blocked) == 1
    assert ledger.counts()["completed"] == 2
    assert ledger.query("SELECT reason FROM jobs WHERE status = 'queued'") == [{"reason": "budget"}]


def test_a_submission_interrupted_by_a_crash_is_settled_as_unknown_on_resume(ledger_at):
    ledger = make_ledger(ledger_at, numbered(1))
    crashed = ledger.unfinished_jobs()[0]
    ledger.begin_attempt(crashed)  # the process died after committing its intent
    service = ScriptedService([CREATED])
    run(ledger, service)
    assert [a["state"] for a in attempts(ledger)] == ["unknown", "completed"]
    assert job(ledger)["attempts"] == 2


def test_a_task_recorded_before_a_crash_is_polled_not_resubmitted(ledger_at):
    ledger = make_ledger(ledger_at, numbered(1))
    crashed = ledger.unfinished_jobs()[0]
    ledger.attempt_created(crashed, ledger.begin_attempt(crashed), 200, "task-from-before")
    service = ScriptedService([CREATED])
    run(ledger, service)
    assert service.submits == 0
    assert service.requests[0].url.path == "/api/video/tasks/task-from-before"
    assert job(ledger)["status"] == "completed"


def test_never_more_than_the_concurrency_in_flight(ledger_at):
    ledger = make_ledger(ledger_at, numbered(7))
    in_flight = peak = 0

    class Counting(ScriptedService):
        def __call__(self, request):
            nonlocal in_flight, peak
            response = super().__call__(request)
            if request.method == "POST":
                in_flight += 1
                peak = max(peak, in_flight)
            elif json.loads(response.content).get("status") == "completed":
                in_flight -= 1
            return response

    service = Counting([CREATED], [{"status": "processing", "progress": 50}, DONE])
    run(ledger, service, Settings(2, 0.001, 0.001, 4))
    assert ledger.counts()["completed"] == 7
    assert peak == 2


def moved(request: httpx.Request) -> httpx.Response:
    return httpx.Response(301, headers={"Location": "https://www.okaypic.test/api/video/generate"})


def test_a_3xx_on_submit_stops_the_run_with_every_job_queued_and_no_attempt_counted(ledger_at):
    ledger = make_ledger(ledger_at, numbered(3))
    service = ScriptedService([moved])
    summary = run(ledger, service)
    assert summary.stopped_for == "redirect"
    assert summary.message is not None and "https://www.okaypic.test/" in summary.message
    assert service.submits == 1, "submitted again after a redirect"
    assert ledger.counts()["queued"] == 3
    assert [(a["state"], a["counted"], a["http_status"]) for a in attempts(ledger)] == [
        ("not_sent", 0, 301)
    ]
    assert ledger.money().unknown == 0


def test_a_task_without_a_usable_answer_for_lost_after_is_held_as_lost(ledger_at):
    ledger = make_ledger(ledger_at, numbered(1))
    service = ScriptedService([CREATED], [error(404, "Task not found")])
    run(ledger, service, Settings(3, 0.001, 0.001, 4, lost_after=0.05))
    lost = job(ledger)
    assert (lost["status"], lost["reason"], lost["task_id"]) == ("held", "lost", "task-1")
    assert "Task not found" in lost["last_error"]
    assert [(a["state"], a["outcome"]) for a in attempts(ledger)] == [("unknown", "lost")]
    money = ledger.money()
    assert (money.in_flight, money.unknown) == (0, 100_000)
    assert service.submits == 1


def test_a_lost_task_is_polled_once_more_by_the_next_run_and_taken_back_if_it_answers(ledger_at):
    ledger = make_ledger(ledger_at, numbered(1))
    run(ledger, ScriptedService([CREATED], [error(404)]), Settings(lost_after=0.05, **QUICK))
    still_lost = ScriptedService([CREATED], [error(404)])
    run(ledger, still_lost, Settings(lost_after=0.05, **QUICK))
    assert (still_lost.submits, len(still_lost.requests)) == (0, 1), "polled once, not more"
    assert job(ledger)["status"] == "held"
    answers = ScriptedService([CREATED], [DONE])
    run(ledger, answers, Settings(lost_after=0.05, **QUICK))
    assert answers.submits == 0
    assert (job(ledger)["status"], job(ledger)["task_id"]) == ("completed", "task-1")
    assert [(a["state"], a["task_id"]) for a in attempts(ledger)] == [("completed", "task-1")]
    assert ledger.money().spent == 100_000 and ledger.money().unknown == 0


def test_a_freed_slot_is_given_its_next_submission_before_the_completion_is_handed_on(ledger_at):
    """PRODUCT §6: slots are refilled as soon as a task is seen finished, before any
    download. What `on_completed` starts (the run's download) runs after the next job's
    submission has been sent."""
    ledger = make_ledger(ledger_at, numbered(3))
    service = ScriptedService([CREATED])
    seen_at_download: list[int] = []

    async def go():
        client = Client("https://okaypic.test", "okpk_test", transport=httpx.MockTransport(service))

        async def download() -> None:
            seen_at_download.append(service.submits)

        def completed(job) -> None:
            asyncio.get_running_loop().create_task(download())

        settings = Settings(concurrency=1, **QUICK)
        try:
            await Scheduler(ledger, client, settings, on_completed=completed).run()
            await asyncio.sleep(0)
        finally:
            await client.aclose()

    asyncio.run(go())
    # Each download starts after the submission that took its slot (the last has none).
    assert seen_at_download == [2, 3, 3]

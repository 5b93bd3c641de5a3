"""A hostile service through the real `run`/`resume` (PRODUCT.md §6, §10): huge bodies,
wrong types, task ids that are not strings, resultUrls that are not URLs, non-JSON, HTML
error pages, "completed" without urls, negative/NaN progress. Each is a clear error or a
retry, never a traceback, never a duplicate charge.

The hostile answers come from a wrapped sandbox, so the service's truth still says what
really happened: a hostile submit answer "after the task was created" is served only when
the sandbox really created (and charged) the task; a hostile poll answer stands in for the
real one, and the task goes on.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import Counter, deque
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from batchgen.sandbox import Response, Sandbox, SandboxConfig, serve
from tests.crashing import audit, build_ledger, query
from tests.e2e import FAST, batchgen, grok_batch

SCALE = 0.01
PRICE = 100_000  # a 5 s grok task
HUGE = 5_000_000  # bytes: five times what the client reads of an answer


def as_json(value: Any, status: int = 200) -> Response:
    return Response(status, {"Content-Type": "application/json"}, json.dumps(value).encode())


def raw(body: bytes, status: int = 200, content_type: str = "text/plain") -> Response:
    return Response(status, {"Content-Type": content_type}, body)


def html(status: int) -> Response:
    page = f"<!DOCTYPE html><html><head><title>{status}</title></head><body><h1>{status}"
    return raw((page + " Error</h1><hr>nginx</body></html>").encode(), status, "text/html")


class HostileSandbox(Sandbox):
    """A sandbox whose answers a test replaces.

    - submits: answers for the first submissions that create a task, served after it was
      created and charged (the real answer is lost); a submit the sandbox refuses (e.g.
      429) keeps its real answer and the hostile one waits for the next.
    - refusals: answers for the first submissions, served instead of reaching the service.
    - polls: answers for the first `polls_per_task` polls of each task, in turn.
    - progress: values put in place of `progress` in every running answer, in turn;
      `seen_progress` collects what the ledger holds for that task's job meanwhile.
    """

    def __init__(
        self,
        *,
        submits: list[Response] = (),  # type: ignore[assignment]
        refusals: list[Response] = (),  # type: ignore[assignment]
        polls: list[Response] = (),  # type: ignore[assignment]
        polls_per_task: int = 0,
        progress: list[Any] = (),  # type: ignore[assignment]
        ledger: Path | None = None,
        time_scale: float = SCALE,
    ) -> None:
        super().__init__(SandboxConfig(time_scale=time_scale))
        self.submits, self.refusals = deque(submits), deque(refusals)
        self.polls, self.polls_per_task = list(polls), polls_per_task
        self.progress = list(progress)
        self.ledger = ledger
        self.served: Counter[str] = Counter()
        self.seen_progress: list[Any] = []
        self._polled: Counter[str] = Counter()
        self._hostile_lock = threading.Lock()

    def handle(self, method: str, target: str, headers: Any, body: bytes = b"") -> Response:  # type: ignore[override]
        path = urlsplit(target).path
        if method == "POST" and path.endswith("/generate"):
            return self._hostile_submit(method, target, headers, body)
        if method == "GET" and "/tasks/" in path:
            return self._hostile_poll(method, target, headers, body, path.rsplit("/", 1)[-1])
        return super().handle(method, target, headers, body)

    def _hostile_submit(self, method: str, target: str, headers: Any, body: bytes) -> Response:
        with self._hostile_lock:
            refusal = self.refusals.popleft() if self.refusals else None
        if refusal is not None:
            self.served["refusal"] += 1
            return refusal
        real = super().handle(method, target, headers, body)
        if real.status != 200:
            return real
        with self._hostile_lock:
            hostile = self.submits.popleft() if self.submits else None
        if hostile is None:
            return real
        self.served["submit"] += 1
        return hostile

    def _hostile_poll(
        self, method: str, target: str, headers: Any, body: bytes, task_id: str
    ) -> Response:
        with self._hostile_lock:
            self._polled[task_id] += 1
            n = self._polled[task_id]
            index = self.served["poll"]
            hostile = self.polls and n <= self.polls_per_task
            if hostile:
                self.served["poll"] += 1
        if hostile:
            return self.polls[index % len(self.polls)]
        real = super().handle(method, target, headers, body)
        answer = json.loads(real.body) if isinstance(real.body, bytes) else None
        if (
            self.progress
            and isinstance(answer, dict)
            and answer.get("status")
            in (
                "pending",
                "processing",
            )
        ):
            self._record_progress(task_id)
            with self._hostile_lock:
                value = self.progress[self.served["progress"] % len(self.progress)]
                self.served["progress"] += 1
            text = json.dumps({**answer, "progress": value}, allow_nan=True)
            return raw(text.encode(), 200, "application/json")
        return real

    def _record_progress(self, task_id: str) -> None:
        if self.ledger is None:
            return
        db = sqlite3.connect(f"file:{self.ledger}?mode=ro", uri=True, timeout=30)
        try:
            self.seen_progress += [
                row[0]
                for row in db.execute("SELECT progress FROM jobs WHERE task_id = ?", (task_id,))
            ]
        finally:
            db.close()


def run_against(sim: HostileSandbox, ledger: Path, job_ids: list[str], *args: str) -> Any:
    served = serve(sim)
    try:
        return batchgen(
            "resume", *FAST, *args, ledger=ledger, base_url=served.base_url, key="okpk_sandbox_demo"
        )
    finally:
        served.stop()


def no_traceback(result: Any) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert "Traceback" not in result.stdout


# ---------------------------------------------------------------------- submit answers

UNUSABLE_AFTER_CREATE = {
    "huge body": raw(b'{"taskId": "' + b"a" * HUGE + b'"}', content_type="application/json"),
    "task id is a number": as_json({"generationId": "g", "taskId": 12345, "status": "pending"}),
    "task id is null": as_json({"taskId": None, "status": "pending"}),
    "task id is a list": as_json({"taskId": ["t-1"], "status": "pending"}),
    "task id is an object": as_json({"taskId": {"id": "t-1"}, "status": "pending"}),
    "task id is empty": as_json({"taskId": "", "status": "pending"}),
    "task id is 5000 characters": as_json({"taskId": "t" * 5000, "status": "pending"}),
    "not JSON": raw(b"OK"),
    "HTML 502 page": html(502),
    "completed and no task id": as_json({"status": "completed"}),
    "a JSON array": as_json(["taskId", "t-1"]),
    "empty 200": raw(b""),
}


def test_unusable_answers_after_a_task_was_created_are_unknown_attempts_covering_each_charge(
    tmp_path,
):
    """Each answer leaves the task's existence unknown (§6 table): an unknown attempt with
    its possible cost, then a resubmission; every job ends completed, and what the service
    charged for the tasks batchgen never heard of is exactly the unknown amount."""
    ledger = tmp_path / "l.db"
    job_ids = build_ledger(ledger, 6)
    # short tasks: the tasks nobody heard of hold slots (429s) until they end
    sim = HostileSandbox(submits=list(UNUSABLE_AFTER_CREATE.values()), time_scale=SCALE / 4)
    result = run_against(sim, ledger, job_ids, "--max-attempts", "8")
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    hostile = len(UNUSABLE_AFTER_CREATE)
    assert sim.served["submit"] == hostile
    truth = sim.truth()
    checked = audit(ledger, truth, job_ids)
    assert sum(checked.unknown_attempts.values()) == hostile
    assert sum(checked.orphans.values()) == hostile
    assert checked.unknown == hostile * PRICE
    assert truth.net_charged_micros() == checked.spent + checked.unknown
    task_ids = {r["task_id"] for r in query(ledger, "SELECT task_id FROM attempts")}
    assert task_ids <= {s.task_id for s in truth.submissions} | {None}


def test_a_service_that_never_answers_usably_fails_each_job_with_a_clear_reason(tmp_path):
    ledger = tmp_path / "l.db"
    job_ids = build_ledger(ledger, 2)
    sim = HostileSandbox(submits=[html(502)] * 4)
    result = run_against(sim, ledger, job_ids, "--max-attempts", "2")
    assert result.returncode == 1, result.stderr
    no_traceback(result)
    assert "failed" in result.stderr
    truth = sim.truth()
    checked = audit(ledger, truth, job_ids, all_completed=False)
    assert checked.statuses == {"failed": 2}
    for job in query(ledger, "SELECT * FROM jobs"):
        assert "502" in job["last_error"] and "<html" not in job["last_error"].lower(), job
    assert checked.spent == 0
    assert truth.net_charged_micros() == checked.unknown == 4 * PRICE


REFUSED_BEFORE_THE_SERVICE = [
    html(503),
    html(500),
    raw(b"Internal Server Error", 500),
    as_json({"error": 12345}, 500),
    raw(b"slow down", 429)._replace(headers={"Retry-After": "soon"}),
    raw(b"slow down", 429)._replace(headers={"Retry-After": "-5"}),
    as_json({"error": "x" * HUGE}, 503),
]


def test_error_pages_from_in_front_of_the_service_are_retried_and_charge_nothing(tmp_path):
    ledger = tmp_path / "l.db"
    job_ids = build_ledger(ledger, 3)
    sim = HostileSandbox(refusals=REFUSED_BEFORE_THE_SERVICE)
    result = run_against(sim, ledger, job_ids, "--max-attempts", "8")
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    assert sim.served["refusal"] == len(REFUSED_BEFORE_THE_SERVICE)
    truth = sim.truth()
    checked = audit(ledger, truth, job_ids)
    assert checked.unknown_attempts == {} and checked.orphans == {}
    assert truth.duplicate_payloads() == {}
    assert truth.net_charged_micros() == checked.spent == 3 * PRICE
    errors = query(ledger, "SELECT * FROM attempts WHERE state = 'error'")
    assert len(errors) == 5, "each 5xx is a counted attempt that created nothing"
    assert all(e["cost_micro_usd"] == 0 for e in errors)


# ---------------------------------------------------------------------- poll answers

UNUSABLE_POLLS = {
    "completed without urls": [
        as_json({"status": "completed", "type": "video"}),
        as_json({"status": "completed", "resultUrls": []}),
        as_json({"status": "completed", "resultUrls": "https://cdn.example.com/v.mp4"}),
        as_json({"status": "completed", "resultUrls": [42]}),
        as_json({"status": "completed", "resultUrls": None}),
    ],
    "result urls that are not URLs": [
        as_json({"status": "completed", "resultUrls": ["javascript:alert(1)"]}),
        as_json({"status": "completed", "resultUrls": ["file:///etc/passwd"]}),
        as_json({"status": "completed", "resultUrls": ["/relative/v.mp4"]}),
        as_json({"status": "completed", "resultUrls": ["not a url"]}),
        as_json({"status": "completed", "resultUrls": ["https://x/" + "a" * 5000]}),
        as_json({"status": "completed", "resultUrls": ["ftp://cdn.example.com/v.mp4"]}),
    ],
    "wrong types": [
        as_json({"status": 7}),
        as_json({"status": ["completed"]}),
        as_json({"status": "finished"}),
        as_json({"status": None, "progress": 50}),
        as_json(None),
        as_json([]),
        as_json("completed"),
        as_json({}),
    ],
    "not JSON, HTML, huge": [
        raw(b"OK"),
        html(502),
        html(500),
        html(200),
        raw(b""),
        raw(bytes(range(256)) * 4, content_type="application/octet-stream"),
        raw(
            b'{"status": "completed", "resultUrls": ["https://cdn.example.com/'
            + b"a" * HUGE
            + b'.mp4"]}',
            content_type="application/json",
        ),
    ],
}


@pytest.mark.parametrize("family", sorted(UNUSABLE_POLLS))
def test_unusable_poll_answers_are_polled_again_never_resubmitted(tmp_path, family):
    answers = UNUSABLE_POLLS[family]
    ledger = tmp_path / "l.db"
    manifest = grok_batch(tmp_path / "m.yaml", 3, campaign="c")
    job_ids = [f"clip-{n}" for n in (1, 2, 3)]
    per_task = -(-len(answers) // 3)  # every answer served at least once over 3 tasks
    sim = HostileSandbox(polls=answers, polls_per_task=per_task)
    served = serve(sim)
    try:
        result = batchgen(
            "run",
            str(manifest),
            *FAST,
            ledger=ledger,
            base_url=served.base_url,
            key="okpk_sandbox_demo",
        )
    finally:
        served.stop()
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    assert sim.served["poll"] >= len(answers)
    truth = sim.truth()
    checked = audit(ledger, truth, job_ids)
    assert checked.unknown_attempts == {} and checked.orphans == {}
    assert truth.duplicate_payloads() == {}, "a poll error caused a resubmission"
    assert truth.net_charged_micros() == checked.spent == 3 * PRICE
    for job in query(ledger, "SELECT * FROM jobs"):
        assert json.loads(job["result_urls"]) == [
            f"{served.base_url}/files/{job['task_id']}/0.mp4"
        ], "only the service's real result URL is kept"


def test_negative_nan_and_odd_progress_is_ignored_and_never_stored(tmp_path):
    ledger = tmp_path / "l.db"
    job_ids = build_ledger(ledger, 6)
    odd = [-5, float("nan"), float("inf"), float("-inf"), 1e308, "50", True, [50], None, 250]
    sim = HostileSandbox(progress=odd, ledger=ledger)
    result = run_against(sim, ledger, job_ids)
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    assert sim.served["progress"] >= len(odd), "not every odd value was served"
    assert sim.seen_progress, "the ledger was never read during the run"
    for value in sim.seen_progress:
        assert value is None or (isinstance(value, int) and 0 <= value <= 100), value
    truth = sim.truth()
    checked = audit(ledger, truth, job_ids)
    assert truth.duplicate_payloads() == {}
    assert truth.net_charged_micros() == checked.spent == 6 * PRICE

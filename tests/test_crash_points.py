"""kill -9 at each point where a crash matters, then `batchgen resume` (PRODUCT.md §6, §10),
on each kind of ledger (a SQLite file, a PostgreSQL database).

Each test runs the real command against the sandbox served by the test process, kills it
with SIGKILL at one named point (tests/crashing.py arms `Scheduler.checkpoint`; for "the
request has reached the service" the sandbox itself holds its answer), checks what the
kill left behind, resumes, and holds the ledger to the service's truth (`audit`).
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from batchgen.sandbox import Drop, Response, Sandbox, SandboxConfig, Truth, serve
from batchgen.sandbox.truth import payload_key
from tests.builders import build_ledger
from tests.crashing import Audit, audit, query, run_crashing
from tests.e2e import FAST, batchgen, command_env, spawn

SCALE = 0.01  # a 5 s grok task takes about 0.4 s
JOBS = 6
NTH = 4  # the 4th submission: one task has finished, two are in flight


class HoldingSandbox(Sandbox):
    """A sandbox that, on its nth accepted submission, creates and charges the task and
    then holds the answer until `release` is set: the request has reached the service and
    the client is still waiting for the answer."""

    def __init__(self, config: SandboxConfig, nth: int) -> None:
        super().__init__(config)
        self.nth = nth
        self.accepted = 0
        self.holding = threading.Event()
        self.release = threading.Event()
        self._count_lock = threading.Lock()

    def handle(self, method: str, target: str, headers: Any, body: bytes = b"") -> Response:  # type: ignore[override]
        response = super().handle(method, target, headers, body)
        if method == "POST" and response.status == 200 and not isinstance(response.body, Drop):
            with self._count_lock:
                self.accepted += 1
                hold = self.accepted == self.nth
            if hold:
                self.holding.set()
                self.release.wait(timeout=60)
        return response


class Service:
    """A (possibly holding) sandbox served on 127.0.0.1 for one test."""

    def __init__(self, sim: Sandbox) -> None:
        self.sim = sim
        self.served = serve(sim)
        self.key = next(iter(sim.config.keys))
        self.base_url = self.served.base_url

    def env(self, ledger: Path | str) -> dict[str, str]:
        return command_env(ledger, self.base_url, self.key)

    def resume(self, ledger: Path | str, *args: str) -> Any:
        return batchgen("resume", *FAST, *args, ledger=ledger, base_url=self.base_url, key=self.key)


@pytest.fixture
def service() -> Iterator[Service]:
    running = Service(Sandbox(SandboxConfig(time_scale=SCALE)))
    yield running
    running.served.stop()


@pytest.fixture
def holding_service() -> Iterator[Service]:
    sim = HoldingSandbox(SandboxConfig(time_scale=SCALE), nth=NTH)
    running = Service(sim)
    yield running
    sim.release.set()
    running.served.stop()


def kill_at(service: Service, ledger: Path | str, point: str, nth: int) -> None:
    result = run_crashing(point, nth, "resume", *FAST, env=service.env(ledger))
    assert result.returncode == -signal.SIGKILL, (
        f"expected a SIGKILL at {point} #{nth}, got {result.returncode}: {result.stderr}"
    )


def attempts(ledger: Path | str, *states: str) -> list[dict[str, Any]]:
    marks = ", ".join("?" * len(states))
    return query(ledger, f"SELECT * FROM attempts WHERE state IN ({marks}) ORDER BY id", *states)


def recorded(ledger: Path | str) -> list[dict[str, Any]]:
    return query(ledger, "SELECT * FROM attempts WHERE task_id IS NOT NULL ORDER BY id")


def unrecorded_tasks(ledger: Path | str, truth: Truth) -> Counter[str]:
    """Job id -> tasks the service created for it that the ledger has no task id for."""
    jobs = {
        payload_key(json.loads(r["request"])): r["id"] for r in query(ledger, "SELECT * FROM jobs")
    }
    known = {a["task_id"] for a in recorded(ledger)}
    return Counter(
        jobs[payload_key(s.payload)] for s in truth.submissions if s.task_id not in known
    )


def left_sending(ledger: Path | str, truth: Truth) -> list[dict[str, Any]]:
    """The attempts a kill left `sending` (other jobs may have been mid-submission too, at
    concurrency 3), after checking each created at most one task nobody recorded."""
    sending = attempts(ledger, "sending")
    for attempt in sending:
        job = query(ledger, "SELECT status FROM jobs WHERE id = ?", attempt["job_id"])[0]
        assert job["status"] == "submitting", "an intent committed without its job's status"
    extra = unrecorded_tasks(ledger, truth)
    assert set(extra) <= {a["job_id"] for a in sending}, "a task created by no pending attempt"
    assert all(n == 1 for n in extra.values()), extra
    return sending


def settled_as_unknown(ledger: Path | str, sending: list[dict[str, Any]], result: Audit) -> None:
    """§6: each attempt left `sending` is now an attempt of unknown outcome that counts
    toward --max-attempts, and no other attempt is; only those may have orphan tasks."""
    unknown = attempts(ledger, "unknown")
    assert [a["id"] for a in unknown] == [a["id"] for a in sending]
    assert all(a["counted"] == 1 for a in unknown)
    assert set(result.orphans) <= {a["job_id"] for a in sending}


def test_kill_after_the_intent_commit_leaves_an_attempt_that_resume_settles_as_unknown(
    service, ledger_at
):
    ledger = ledger_at
    job_ids = build_ledger(ledger, JOBS)
    kill_at(service, ledger, "intent_committed", NTH)

    sending = left_sending(ledger, service.sim.truth())
    killed = query(ledger, "SELECT * FROM attempts WHERE id = ?", NTH)[0]
    assert killed["state"] == "sending", "the intent must be committed before the request"
    assert unrecorded_tasks(ledger, service.sim.truth())[killed["job_id"]] == 0, (
        "the request was never sent, the service must have nothing for it"
    )

    assert service.resume(ledger).returncode == 0
    truth = service.sim.truth()
    result = audit(ledger, truth, job_ids)
    settled_as_unknown(ledger, sending, result)
    assert killed["job_id"] not in result.orphans
    assert truth.net_charged_micros() == result.spent + sum(result.orphans.values()) * 100_000


def test_kill_after_the_request_reached_the_service_is_an_unknown_attempt_covering_its_charge(
    holding_service, ledger_at
):
    service = holding_service
    ledger = ledger_at
    job_ids = build_ledger(ledger, JOBS)
    process = spawn("resume", *FAST, ledger=ledger, base_url=service.base_url, key=service.key)
    try:
        assert service.sim.holding.wait(timeout=30), "the held submission never arrived"
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate()
    service.sim.release.set()  # the service answers a client that is gone
    assert process.returncode == -signal.SIGKILL

    truth = service.sim.truth()
    sending = left_sending(ledger, truth)
    held_task = truth.submissions[NTH - 1]
    assert held_task.task_id not in {a["task_id"] for a in recorded(ledger)}
    (held_job,) = [
        j["id"]
        for j in query(ledger, "SELECT id, request FROM jobs")
        if payload_key(json.loads(j["request"])) == payload_key(held_task.payload)
    ]
    assert held_job in {a["job_id"] for a in sending}, "its attempt is left `sending`"

    assert service.resume(ledger).returncode == 0
    truth = service.sim.truth()
    result = audit(ledger, truth, job_ids)
    settled_as_unknown(ledger, sending, result)
    assert result.orphans[held_job] == 1, "the task nobody heard of is an unknown attempt"
    assert truth.net_charged_micros() == result.spent + sum(result.orphans.values()) * 100_000
    assert truth.net_charged_micros() <= result.spent + result.unknown


def test_kill_after_the_answer_arrived_is_an_unknown_attempt_covering_its_charge(
    service, ledger_at
):
    ledger = ledger_at
    job_ids = build_ledger(ledger, JOBS)
    kill_at(service, ledger, "submit_answered", NTH)

    truth = service.sim.truth()
    sending = left_sending(ledger, truth)
    assert unrecorded_tasks(ledger, truth), "the answered task is at the service, unrecorded"

    assert service.resume(ledger).returncode == 0
    truth = service.sim.truth()
    result = audit(ledger, truth, job_ids)
    settled_as_unknown(ledger, sending, result)
    assert result.orphans, "the answered task stays an unknown attempt"
    assert truth.net_charged_micros() == result.spent + sum(result.orphans.values()) * 100_000
    assert truth.net_charged_micros() <= result.spent + result.unknown


def test_kill_after_the_answer_with_on_unknown_hold_keeps_the_job_for_a_person(service, ledger_at):
    ledger = ledger_at
    job_ids = build_ledger(ledger, JOBS)
    kill_at(service, ledger, "submit_answered", NTH)
    sending = left_sending(ledger, service.sim.truth())

    result = service.resume(ledger, "--on-unknown", "hold")
    assert result.returncode == 3, result.stderr
    assert "retry --unknown" in result.stderr
    truth = service.sim.truth()
    checked = audit(ledger, truth, job_ids, all_completed=False)
    settled_as_unknown(ledger, sending, checked)
    held = {r["id"] for r in query(ledger, "SELECT id FROM jobs WHERE status = 'held'")}
    assert held == {a["job_id"] for a in sending}
    assert checked.statuses == {"completed": JOBS - len(held), "held": len(held)}
    assert truth.duplicate_payloads() == {}, "a held job is not submitted again"


def test_kill_after_the_task_id_commit_polls_that_task_and_never_submits_it_again(
    service, ledger_at
):
    ledger = ledger_at
    job_ids = build_ledger(ledger, JOBS)
    kill_at(service, ledger, "task_id_committed", NTH)

    truth = service.sim.truth()
    sending = left_sending(ledger, truth)
    before = recorded(ledger)
    assert len(before) == NTH
    in_flight = {a["job_id"]: a["task_id"] for a in before if a["state"] == "running"}
    assert in_flight

    assert service.resume(ledger).returncode == 0
    truth = service.sim.truth()
    result = audit(ledger, truth, job_ids)
    settled_as_unknown(ledger, sending, result)
    finished_with = {r["id"]: r["task_id"] for r in query(ledger, "SELECT id, task_id FROM jobs")}
    for job_id, task_id in in_flight.items():
        assert finished_with[job_id] == task_id, "a recorded task was replaced by a new one"
        assert result.submissions[job_id] == 1
    assert truth.net_charged_micros() == result.spent + sum(result.orphans.values()) * 100_000


def test_kill_mid_poll_resumes_polling_without_resubmitting(service, ledger_at):
    ledger = ledger_at
    job_ids = build_ledger(ledger, JOBS)
    kill_at(service, ledger, "poll_answered", 8)

    truth = service.sim.truth()
    sending = left_sending(ledger, truth)
    running = attempts(ledger, "running")
    assert running, "the kill came while tasks were in flight"
    polls_before = dict(truth.polls)

    assert service.resume(ledger).returncode == 0
    truth = service.sim.truth()
    result = audit(ledger, truth, job_ids)
    settled_as_unknown(ledger, sending, result)
    for attempt in running:
        assert truth.polls[attempt["task_id"]] > polls_before[attempt["task_id"]], (
            "a recorded task was not polled again"
        )
        assert result.submissions[attempt["job_id"]] == 1, "a recorded task was submitted again"
    assert truth.net_charged_micros() == result.spent + sum(result.orphans.values()) * 100_000


class StallingFiles:
    """A CDN for result files (the sandbox's content) that, on its nth request, sends the
    headers and half the body, then stalls until `release` is set: a download in progress."""

    PATH = re.compile(r"^/files/(?P<task_id>[^/]+)/(?P<n>\d+)\.(?P<ext>[a-z0-9]+)$")

    def __init__(self, sim: Sandbox, nth: int) -> None:
        self.sim, self.nth = sim, nth
        self.requests: list[str] = []
        self.stalled = threading.Event()
        self.release = threading.Event()
        self.stalled_task: str | None = None
        lock = threading.Lock()
        files = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                match = files.PATH.match(self.path)
                if match is None:
                    self.send_error(404)
                    return
                body = files.sim.result_file(match["task_id"], int(match["n"]))
                if body is None:
                    self.send_error(404)
                    return
                with lock:
                    files.requests.append(match["task_id"])
                    stall = len(files.requests) == files.nth
                self.send_response(200)
                self.send_header("Content-Type", "video/mp4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not stall:
                    self.wfile.write(body)
                    return
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                files.stalled_task = match["task_id"]
                files.stalled.set()
                files.release.wait(timeout=60)
                self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_kill_mid_download_then_download_saves_every_file_without_generating_again(
    ledger_at, tmp_path
):
    pytest.importorskip("batchgen.download", reason="batchgen/download.py (§9) has not landed yet")
    size = 256 * 1024
    sim = Sandbox(SandboxConfig(time_scale=SCALE, file_bytes=size))
    service = Service(sim)
    files = StallingFiles(sim, nth=2)
    sim.base_url = files.base_url  # result URLs point at the stalling CDN
    ledger, out = ledger_at, tmp_path / "out"
    job_ids = build_ledger(ledger, JOBS)
    try:
        process = spawn(
            "resume",
            *FAST,
            "--download",
            str(out),
            ledger=ledger,
            base_url=service.base_url,
            key=service.key,
        )
        try:
            assert files.stalled.wait(timeout=30), "no download reached the stall"
            wait_for(lambda: any(p.stat().st_size > 0 for p in out.rglob("*.part")))
        finally:
            process.send_signal(signal.SIGKILL)
            process.communicate()
        assert process.returncode == -signal.SIGKILL
        files.release.set()

        task_of = {r["task_id"]: r["job_id"] for r in recorded(ledger)}
        stalled_job = task_of[files.stalled_task]
        assert not (out / "c" / f"{stalled_job}.mp4").exists(), "a half file under its name"
        saved = query(
            ledger,
            "SELECT * FROM files WHERE job_id = ? AND downloaded_at IS NOT NULL",
            stalled_job,
        )
        assert saved == [], "a file recorded as saved that was not"
        sending = left_sending(ledger, sim.truth())

        finish = service.resume(ledger, "--download", str(out))
        assert finish.returncode == 0, finish.stderr
        again = batchgen("download", "--out", str(out), ledger=ledger)
        assert again.returncode == 0, again.stderr
        assert list(out.rglob("*.part")) == [], "the killed download's temporary file stays"

        truth = sim.truth()
        result = audit(ledger, truth, job_ids)
        settled_as_unknown(ledger, sending, result)
        assert result.submissions[stalled_job] == 1, "a failed download was generated again"
        jobs = {r["id"]: r for r in query(ledger, "SELECT id, task_id FROM jobs")}
        records = {r["job_id"]: r for r in query(ledger, "SELECT * FROM files")}
        for job_id in job_ids:
            path = out / "c" / f"{job_id}.mp4"
            content = sim.result_file(jobs[job_id]["task_id"], 0)
            assert content is not None and len(content) == size
            assert path.read_bytes() == content, f"{path} is not the task's file"
            record = records[job_id]
            assert (record["size"], record["sha256"]) == (
                size,
                hashlib.sha256(content).hexdigest(),
            )
            assert Path(record["path"]).resolve() == path.resolve()
    finally:
        files.stop()
        service.served.stop()

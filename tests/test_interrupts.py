"""Ctrl-C and SIGTERM with a real signal to the real `batchgen` process (PRODUCT.md §6,
§10): a submission already on the wire is waited for so its task id is recorded (nothing
paid twice), a second Ctrl-C stops at once, and downloads never delay exit 130.

The service is the sandbox (wrapped by tests/hostile.HostileSandbox to hold
an answer or stream a file), served on 127.0.0.1; money and tasks are checked against
its truth. Each test runs on a SQLite file and on a PostgreSQL database.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchgen.sandbox import Response, Stream, serve
from tests.builders import PRICE, build_ledger
from tests.crashing import audit, query
from tests.e2e import FAST, StderrWatch, batchgen, spawn, wait_for
from tests.hostile import HostileSandbox, trickle

KEY = "okpk_sandbox_demo"
SLOW_ANSWER = 3.0  # seconds the service takes to answer the first submission


class Service:
    """A HostileSandbox served for one test."""

    def __init__(self, sim: HostileSandbox) -> None:
        self.sim = sim
        self.served = serve(sim)
        self.base_url = self.served.base_url

    def spawn(self, ledger: Path | str, *args: str) -> Any:
        return spawn(*args, ledger=ledger, base_url=self.base_url, key=KEY)

    def resume(self, ledger: Path | str, *args: str) -> Any:
        return batchgen("resume", *FAST, *args, ledger=ledger, base_url=self.base_url, key=KEY)


@pytest.fixture
def services() -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for service in started:
        service.served.stop()


def interrupted(process: Any, signum: int = signal.SIGINT) -> float:
    """Send `signum`; the seconds until the process exited."""
    process.send_signal(signum)
    sent = time.monotonic()
    process.wait(timeout=60)
    return time.monotonic() - sent


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_waits_for_a_submission_on_the_wire_and_nothing_is_paid_twice(
    services, ledger_at, signum
):
    """The first submission's answer takes 3 s; the signal comes after the service has
    created (and charged) the task, before its answer: the run waits for the answer,
    records the task id, exits 130; resume polls that task and never submits it again."""
    ledger = ledger_at
    job_ids = build_ledger(ledger, 3)
    created = threading.Event()

    def slow_first_answer(n: int, task_id: str, real: Response) -> Response:
        if n != 1:
            return real
        created.set()
        return real._replace(delay_s=SLOW_ANSWER)

    service = Service(HostileSandbox(on_created=slow_first_answer))
    services.append(service)
    process = service.spawn(ledger, "resume", *FAST)
    watch = StderrWatch(process)
    wait_for(created.is_set, what="the first task to be created")
    interrupted(process, signum)
    stderr = watch.text()
    assert process.returncode == 130, stderr
    assert "waiting up to" in stderr and "Traceback" not in stderr
    first = service.sim.truth().submissions[0]
    recorded = query(ledger, "SELECT state, task_id FROM attempts WHERE task_id IS NOT NULL")
    assert recorded == [{"state": "running", "task_id": first.task_id}], "task id not recorded"
    assert query(ledger, "SELECT * FROM attempts WHERE state IN ('sending', 'unknown')") == []

    result = service.resume(ledger)
    assert result.returncode == 0, result.stderr
    truth = service.sim.truth()
    checked = audit(ledger, truth, job_ids)
    assert len(truth.submissions) == 3 and truth.duplicate_payloads() == {}
    assert checked.unknown == 0
    assert truth.net_charged_micros() == checked.spent == 3 * PRICE


def test_a_second_ctrl_c_stops_at_once_without_waiting_for_the_answer(services, ledger_at):
    """The first answer never comes: Ctrl-C waits for it (saying so), a second Ctrl-C exits
    130 at once. The submission is then an attempt of unknown outcome whose possible cost
    covers the charge (the person chose not to wait)."""
    ledger = ledger_at
    job_ids = build_ledger(ledger, 2)
    created, release = threading.Event(), threading.Event()

    def no_answer(n: int, task_id: str, real: Response) -> Response:
        if n == 1:
            created.set()
            release.wait(timeout=60)
        return real

    service = Service(HostileSandbox(on_created=no_answer))
    services.append(service)
    try:
        process = service.spawn(ledger, "resume", *FAST)
        watch = StderrWatch(process)
        wait_for(created.is_set, what="the first task to be created")
        process.send_signal(signal.SIGINT)
        watch.wait_for_line("Ctrl-C again")
        assert process.poll() is None, "did not wait for the submission on the wire"
        seconds = interrupted(process)
        assert process.returncode == 130, watch.text()
        assert seconds < 2.0
    finally:
        release.set()
    assert "Traceback" not in watch.text()
    result = service.resume(ledger)
    assert result.returncode == 0, result.stderr
    truth = service.sim.truth()
    checked = audit(ledger, truth, job_ids)
    assert checked.unknown_attempts == checked.orphans == {"clip-1": 1}
    assert truth.net_charged_micros() == checked.spent + checked.unknown


def huge_file(streamed: list[int]) -> Stream:
    """2 GB of zeros, as fast as the machine goes; `streamed[0]` counts the bytes sent."""
    size, block = 2 * 1024**3, bytes(1024 * 1024)

    def chunks() -> Any:
        while streamed[0] < size:
            streamed[0] += len(block)
            yield block

    return Stream(chunks(), size)


@pytest.mark.parametrize("body", ["trickle", "2 GB"])
def test_ctrl_c_stops_downloads_at_once(services, ledger_at, tmp_path, body):
    """`run --download` at its end, waiting for a result file that trickles in a byte per
    20 s (within every read timeout) or that is 2 GB: Ctrl-C exits 130 within 2 s, and
    `download` is left to save the file later."""
    ledger = ledger_at
    build_ledger(ledger, 1)
    started = threading.Event()
    streamed = [0]

    def result_file(target: str) -> Response:
        if body == "trickle":
            return Response(200, {"Content-Type": "video/mp4"}, trickle(b"x" * 100, 20, started))
        started.set()
        return Response(200, {"Content-Type": "video/mp4"}, huge_file(streamed))

    service = Service(HostileSandbox(on_file=result_file))
    services.append(service)
    out = tmp_path / "out"
    process = service.spawn(ledger, "resume", *FAST, "--download", str(out))
    watch = StderrWatch(process)
    wait_for(started.is_set, what="the download to start")
    if body == "2 GB":
        wait_for(lambda: streamed[0] >= 64 * 1024**2, what="64 MB to be sent")
    seconds = interrupted(process)
    assert process.returncode == 130, watch.text()
    assert seconds < 2.0
    assert "Traceback" not in watch.text()
    assert query(ledger, "SELECT status FROM jobs") == [{"status": "completed"}]
    assert not list(out.rglob("*.mp4")), "a partial file under its final name"

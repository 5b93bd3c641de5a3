"""Pacing end to end: the real `batchgen run` against the sandbox over HTTP in every
progress behaviour (PRODUCT.md §6, §8), and what a run learns across a kill -9."""

from __future__ import annotations

import signal
import statistics
import time

import pytest

from batchgen.ledger import Ledger
from batchgen.progress_curves import PROGRESS_MODES
from tests.e2e import FAST, grok_batch, ledger_written, on_sandbox, rows, spawn, status_json

SCALE = 0.01  # grok 5 s: about 0.4 s of generation
INTERVAL = 0.02


@pytest.mark.parametrize("mode", PROGRESS_MODES)
def test_in_every_progress_mode_a_batch_completes_without_429_and_with_few_polls(
    make_sandbox, ledger_at, tmp_path, mode
):
    sandbox = make_sandbox(time_scale=SCALE, progress=mode, seed=5)
    ledger = ledger_at
    manifest = grok_batch(tmp_path / "m.yaml", 12)
    result = on_sandbox(
        sandbox,
        "run",
        str(manifest),
        "--poll-interval",
        str(INTERVAL),
        "--retry-delay",
        "0.01",
        ledger=ledger,
    )
    assert result.returncode == 0, result.stderr
    truth = sandbox.truth()
    assert status_json(ledger)["counts"]["completed"] == 12
    assert truth.count("POST /api/video/generate", 429) == 0
    polls = [truth.polls[s.task_id] for s in truth.submissions]
    # How often a script polling every interval would poll each task.
    every_interval = [(s.ends_at - s.submitted_at) / INTERVAL for s in truth.submissions]
    # Never two polls of a task closer than the interval: before its end at most one per
    # interval of its life, then the one that sees it completed.
    assert all(p <= n + 2 for p, n in zip(polls, every_interval, strict=True)), polls
    # And far fewer in all: the first tasks, with nothing learned, poll every interval;
    # the others mostly within the window their times were seen in.
    assert sum(polls) <= 0.8 * sum(every_interval), (polls, every_interval)


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_times_of_tasks_followed_across_a_kill_and_resume_are_not_learned(
    make_sandbox, ledger_at, tmp_path
):
    # Before: the learned time of a task was finished_at - answered_at, so the 2 s the
    # process was down counted as generation (a 0.4 s task "took" 2.4 s), and the next
    # resume paced grok-video-3 as if each task took seconds.
    sandbox = make_sandbox(time_scale=SCALE)
    ledger = ledger_at
    manifest = grok_batch(tmp_path / "m.yaml", 6)
    process = spawn(
        "run", str(manifest), *FAST, ledger=ledger, base_url=sandbox.base_url, key=sandbox.key
    )

    def running() -> int:
        if not ledger_written(ledger):
            return 0
        try:
            return len(rows(ledger, "SELECT 1 FROM attempts WHERE state = 'running'"))
        except Exception:  # the ledger is being created
            return 0

    wait_for(lambda: running() == 3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    taken_over = {
        r["task_id"] for r in rows(ledger, "SELECT task_id FROM attempts WHERE state = 'running'")
    }
    time.sleep(2.0)  # the process is down; the service finishes those tasks meanwhile
    result = on_sandbox(sandbox, "resume", *FAST, ledger=ledger)
    assert result.returncode == 0, result.stderr
    assert status_json(ledger)["counts"]["completed"] == 6

    truth = sandbox.truth()
    took = statistics.median(s.ends_at - s.submitted_at for s in truth.submissions)
    learned = Ledger.read_only(str(ledger))
    try:
        seen = learned.generation_seconds()[("grok-video-3", 5)]
    finally:
        learned.close()
    assert seen < 1.5 * took, (seen, took)
    attempts = rows(ledger, "SELECT task_id, observed_seconds FROM attempts")
    assert {a["task_id"] for a in attempts if a["observed_seconds"] is None} == taken_over
    for a in attempts:
        if a["observed_seconds"] is not None:
            assert 0.5 * took < a["observed_seconds"] < 1.5 * took + INTERVAL

"""Readers while the runner writes (PRODUCT.md §5, §7): `batchgen status --json` in other
processes, again and again, during a 60-job run, never fails with "database is locked"
and never sees a half-written state.

Each snapshot is one moment of the ledger: every row whole (no job running without a
task id, no job completed without its urls and cost), counts that sum to the jobs and
agree with the jobs listed, money that adds up (spent = the jobs' costs, in flight = one
price per running job); and from one snapshot to the next nothing finished goes back and
no money spent is unspent. The last test pins "one moment" deterministically, by
interposing the runner's commit between two of status's reads.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from decimal import Decimal
from typing import Any

from batchgen.ledger import Ledger
from batchgen.status import status_data
from tests.builders import build_ledger
from tests.crashing import ROOT, audit
from tests.e2e import FAST, command_env, spawn

JOBS = 60
SCALE = 0.005  # a 5 s grok task takes about 0.2 s: the run lasts a few seconds
READERS = 2
PRICE = Decimal("0.10")


def snapshot(env: dict[str, str]) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "batchgen", "status", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert "locked" not in result.stderr.lower(), result.stderr
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


def whole_rows(status: dict[str, Any]) -> None:
    """Every row and every single read of the snapshot is whole."""
    counts, jobs = status["counts"], status["jobs"]
    assert sum(counts.values()) == JOBS == len(jobs), counts
    for job in jobs:
        if job["status"] == "running":
            assert job["task_id"], f"running without a task id: {job}"
        if job["status"] == "completed":
            assert job["task_id"] and job["result_urls"], job
            assert Decimal(job["cost_usd"]) == PRICE, job
        else:
            assert Decimal(job["cost_usd"]) == 0, job


def one_moment(status: dict[str, Any]) -> None:
    one_moment_of(status, price=PRICE)


def one_moment_of(status: dict[str, Any], price: Decimal) -> None:
    """The parts of one answer agree: counts, money and the jobs listed."""
    counts, jobs = status["counts"], status["jobs"]
    assert Counter(j["status"] for j in jobs) == +Counter(counts), (counts, "vs the jobs listed")
    assert Decimal(status["spent_usd"]) == sum(Decimal(j["cost_usd"]) for j in jobs)
    assert Decimal(status["in_flight_usd"]) == price * counts["running"], (
        status["in_flight_usd"],
        counts,
    )


def test_status_in_other_processes_during_a_run_never_locks_nor_sees_half_written_state(
    make_sandbox, tmp_path
):
    sandbox = make_sandbox(time_scale=SCALE)
    ledger = tmp_path / "l.db"
    job_ids = build_ledger(ledger, JOBS)
    env = command_env(ledger, None, None)
    runner = spawn("resume", *FAST, ledger=ledger, base_url=sandbox.base_url, key=sandbox.key)
    snapshots: list[list[dict[str, Any]]] = [[] for _ in range(READERS)]
    failures: list[BaseException] = []

    def read(mine: list[dict[str, Any]]) -> None:
        try:
            while runner.poll() is None:
                mine.append(snapshot(env))
            mine.append(snapshot(env))  # and once the runner is done
        except BaseException as e:  # reported by the test thread
            failures.append(e)

    readers = [threading.Thread(target=read, args=(s,)) for s in snapshots]
    for reader in readers:
        reader.start()
    try:
        _, stderr = runner.communicate(timeout=120)
    finally:
        if runner.poll() is None:
            runner.kill()
        for reader in readers:
            reader.join(timeout=120)
    assert runner.returncode == 0, stderr
    assert not failures, failures[0]

    for taken in snapshots:
        assert len(taken) >= 5, f"only {len(taken)} snapshots during the run"
        for status in taken:
            whole_rows(status)
            one_moment(status)
        for before, after in zip(taken, taken[1:], strict=False):
            assert Decimal(after["spent_usd"]) >= Decimal(before["spent_usd"]), "money went back"
            assert after["counts"]["completed"] >= before["counts"]["completed"]
            done_before = {j["id"] for j in before["jobs"] if j["status"] == "completed"}
            done_after = {j["id"] for j in after["jobs"] if j["status"] == "completed"}
            assert done_before <= done_after, "a completed job went back"
        assert taken[-1]["counts"]["completed"] == JOBS
    seen = {(s["counts"]["running"] > 0) for taken in snapshots for s in taken}
    assert True in seen, "no snapshot caught the run in flight"
    audit(ledger, sandbox.sim.truth(), job_ids)


def test_one_status_answer_is_one_moment_of_the_ledger_while_the_runner_commits(
    tmp_path, monkeypatch
):
    path = tmp_path / "l.db"
    build_ledger(path, 3)
    runner = Ledger(path)
    job = runner.queued_jobs().__next__()
    runner.attempt_created(job, runner.begin_attempt(job), 200, "task-1")
    reader = Ledger(path, create=False)
    read_money = reader.money

    def money_then_the_runner_commits(*args: Any, **kwargs: Any) -> Any:
        money = read_money(*args, **kwargs)
        runner.task_completed(job, ["https://cdn.example.com/task-1.mp4"])
        return money

    monkeypatch.setattr(reader, "money", money_then_the_runner_commits)
    try:
        status = status_data(reader, [])
    finally:
        reader.close()
        runner.close()
    assert sum(status["counts"].values()) == len(status["jobs"]) == 3
    one_moment_of(status, price=PRICE)

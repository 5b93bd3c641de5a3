"""Several runners on one ledger (PRODUCT.md §6, §10), end to end: real `batchgen`
processes on one ledger (a SQLite file, then a PostgreSQL database) against the sandbox
over HTTP, killed with a real kill -9 at random moments. Every invariant is read from the
sandbox's own record, never from batchgen's: at most 3 tasks in flight per key, charges
within the budget, no job paid twice except through an unknown outcome the ledger
recorded, no poll with the wrong key, every task followed to its end, and the ledger's
spend equal to the service's charges.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.crashing import ROOT, crashing_command
from tests.e2e import (
    FAST,
    batchgen,
    command_env,
    grok_batch,
    spawn,
    status_json,
    wait_for,
)
from tests.promises import check_the_promises

ALPHA, BRAVO = "okpk_alpha_1111", "okpk_bravo_2222"
KEYS = f"studio={ALPHA},night={BRAVO}"
PLENTY = 100_000_000


def two_keys(make_sandbox: Any, **knobs: Any) -> Any:
    return make_sandbox(keys={ALPHA: PLENTY, BRAVO: PLENTY}, **knobs)


def ingest(ledger: Path | str, manifest: Path) -> None:
    result = batchgen("ingest", str(manifest), ledger=ledger)
    assert result.returncode == 0, result.stderr


def runner(sandbox: Any, ledger: Path | str, *extra: str, keys: str = KEYS) -> Any:
    return spawn(
        "resume", *FAST, "--lease", "2s", *extra,
        ledger=ledger, base_url=sandbox.base_url, keys=keys, stdout=None,
    )  # fmt: skip


def finish(sandbox: Any, ledger: Path | str, keys: str = KEYS) -> Any:
    return batchgen(
        "resume", *FAST, "--lease", "2s", ledger=ledger, base_url=sandbox.base_url, keys=keys
    )


def test_a_second_runner_joins_and_no_job_is_paid_twice(make_sandbox, ledger_at, tmp_path):
    """The `--force` takeover paid 9 jobs with 15 tasks: now two runners share them."""
    sandbox = two_keys(make_sandbox, time_scale=0.02)
    ledger = ledger_at
    ingest(ledger, grok_batch(tmp_path / "m.yaml", 9))
    first = runner(sandbox, ledger, keys=f"studio={ALPHA}")
    try:
        wait_for(lambda: len(sandbox.sim.truth().submissions) >= 1)
        second = finish(sandbox, ledger, keys=f"studio={ALPHA}")
        assert second.returncode == 0, second.stderr
        assert first.wait(timeout=120) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    truth = sandbox.sim.truth()
    assert len(truth.submissions) == 9
    assert set(truth.submissions_per_payload.values()) == {1}
    assert status_json(ledger)["counts"]["completed"] == 9
    check_the_promises(truth, ledger, (ALPHA, BRAVO))


def test_the_budget_holds_with_two_keys_when_answers_are_slow(make_sandbox, ledger_at, tmp_path):
    """Ten $0.10 jobs on a $0.50 budget, two keys, slow answers and some 400s: a job that
    waited behind a slow first answer had passed the budget check without being in the
    ledger, and the other key spent the same room ($0.60 charged, $0.70 with a 400)."""
    sandbox = two_keys(make_sandbox, time_scale=0.02, latency=(0.3, 1.0), reject_rate=0.3, seed=3)
    ledger = ledger_at
    ingest(ledger, grok_batch(tmp_path / "m.yaml", 10, budget="0.50"))
    result = finish(sandbox, ledger)
    assert result.returncode in (1, 3), result.stderr  # some rejected, some over budget
    truth = sandbox.sim.truth()
    assert truth.charged_micros() <= 500_000  # no task fails here: charged is kept
    check_the_promises(truth, ledger, (ALPHA, BRAVO), budget=500_000)


def test_status_lists_a_live_runner_with_its_keys(make_sandbox, ledger_at, tmp_path):
    sandbox = two_keys(make_sandbox, time_scale=0.2)
    ledger = ledger_at
    ingest(ledger, grok_batch(tmp_path / "m.yaml", 6))
    live = runner(sandbox, ledger)
    try:
        wait_for(lambda: len(sandbox.sim.truth().submissions) >= 1)
        listed = status_json(ledger)["runners"]
        assert [(r["pid"], r["keys"]) for r in listed] == [(live.pid, ["studio", "night"])]
        text = batchgen("status", ledger=ledger).stdout
        assert f"pid {live.pid}" in text and "keys studio, night" in text
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait()
    # Killed: its process is gone, so it is no longer listed.
    assert status_json(ledger)["runners"] == []


@pytest.mark.parametrize(
    ("progress", "faults"),
    [
        ("linear", {"fail_rate": 0.1}),
        # Answers lost after the task was made (unknown outcomes), spurious 429s, garbage.
        ("none", {"drop_rate": 0.05, "spurious_429_rate": 0.05, "garbage_rate": 0.03}),
        ("random-pending", {"fail_rate": 0.05, "poll_500_rate": 0.1}),
    ],
)
def test_runners_killed_at_random_moments_keep_every_promise(
    make_sandbox, ledger_at, tmp_path, progress, faults
):
    """Three runners on two keys and a budget, each killed -9 now and then and started
    again; then one last resume finishes. The sandbox's own counts must hold, whatever
    its progress behaviour and faults."""
    rng = random.Random(22)
    sandbox = two_keys(
        make_sandbox, time_scale=0.02, latency=(0.0, 0.05), progress=progress, **faults
    )
    ledger = ledger_at
    budget = 3_000_000
    ingest(ledger, grok_batch(tmp_path / "m.yaml", 40, budget="3.00"))
    runners = [runner(sandbox, ledger) for _ in range(3)]
    kills = 0
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and any(r.poll() is None for r in runners):
            time.sleep(rng.uniform(0.2, 0.8))
            victim = rng.randrange(len(runners))
            if runners[victim].poll() is None and kills < 6:
                runners[victim].send_signal(signal.SIGKILL)
                runners[victim].wait()
                kills += 1
                runners[victim] = runner(sandbox, ledger)
    finally:
        for r in runners:
            if r.poll() is None:
                r.kill()
            r.wait()
    assert kills >= 3
    final = finish(sandbox, ledger)
    assert final.returncode in (0, 1, 3), final.stderr
    assert "Traceback" not in final.stderr
    counts = status_json(ledger)["counts"]
    assert counts["queued"] + counts["submitting"] + counts["running"] == 0 or (
        final.returncode == 3
    )
    check_the_promises(sandbox.sim.truth(), ledger, (ALPHA, BRAVO), budget=budget)


def test_a_runner_paused_past_its_lease_finds_its_claim_taken_and_sends_nothing_twice(
    make_sandbox, ledger_at, tmp_path
):
    """A closed laptop lid, played by SIGSTOP right after a claim was committed (outside any
    transaction, so the ledger is not held): the other runner takes the paused one's tasks
    and its claim over once its lease lapses; woken, the paused runner sends nothing for
    the claim it lost and pays for nothing twice."""
    sandbox = two_keys(make_sandbox, time_scale=0.05)
    ledger = ledger_at
    ingest(ledger, grok_batch(tmp_path / "m.yaml", 12))
    env = command_env(ledger, sandbox.base_url, None, f"studio={ALPHA}")
    env["BATCHGEN_TEST_SIGNAL"] = "SIGSTOP"
    paused = subprocess.Popen(
        crashing_command("intent_committed", 4, "resume", *FAST, "--lease", "1s"),
        cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: stopped(paused.pid), timeout=30)
        time.sleep(1.5)  # past its lease
        other = finish(sandbox, ledger, keys=f"studio={ALPHA}")
        assert other.returncode == 0, other.stderr
        assert "task(s) of a runner that is gone" in other.stderr
        assert "unknown outcome (its runner stopped before the answer came)" in other.stderr
        submitted = len(sandbox.sim.truth().submissions)
        paused.send_signal(signal.SIGCONT)
        _, stderr = paused.communicate(timeout=60)
    finally:
        if paused.poll() is None:
            paused.send_signal(signal.SIGCONT)
            paused.kill()
            paused.wait()
    assert paused.returncode in (0, 3), stderr
    assert "Traceback" not in stderr
    assert "not sent: another runner took this one's claim over" in stderr
    truth = sandbox.sim.truth()
    assert len(truth.submissions) == submitted == 12  # woken, it sent nothing more
    assert status_json(ledger)["counts"]["completed"] == 12
    check_the_promises(truth, ledger, (ALPHA, BRAVO))


def stopped(pid: int) -> bool:
    """Is this process stopped (SIGSTOP)?"""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rpartition(")")[2].split()[0] == "T"


def test_a_runner_stopped_with_ctrl_c_leaves_its_tasks_to_the_other_at_once(
    make_sandbox, ledger_at, tmp_path
):
    """Ctrl-C on one of two runners: it exits 130, leaving its tasks in flight to the ledger
    (no runner owns them), and the other follows them to their end, submitting none again."""
    sandbox = two_keys(make_sandbox, time_scale=0.05)
    ledger = ledger_at
    ingest(ledger, grok_batch(tmp_path / "m.yaml", 12))
    # A lease of 1 s: the other runner looks for orphans every 0.25 s.
    first = spawn(
        "resume", *FAST, "--lease", "1s", ledger=ledger, base_url=sandbox.base_url,
        keys=f"studio={ALPHA}", stdout=None,
    )  # fmt: skip
    second = None
    try:
        wait_for(lambda: len(sandbox.sim.truth().submissions) >= 3)  # the first's 3 slots
        second = spawn(
            "resume", *FAST, "--lease", "1s", ledger=ledger, base_url=sandbox.base_url,
            keys=f"studio={ALPHA}", stdout=None,
        )  # fmt: skip
        wait_for(lambda: len(status_json(ledger)["runners"]) == 2)
        first.send_signal(signal.SIGINT)
        _, first_err = first.communicate(timeout=30)
        assert first.returncode == 130, first_err
        _, second_err = second.communicate(timeout=120)
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    assert second is not None and second.returncode == 0, second_err
    assert "Traceback" not in first_err + second_err
    assert "task(s) of a runner that is gone" in second_err
    truth = sandbox.sim.truth()
    assert len(truth.submissions) == 12
    assert status_json(ledger)["counts"]["completed"] == 12
    check_the_promises(truth, ledger, (ALPHA, BRAVO))

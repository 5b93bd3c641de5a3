"""The ledger arbitrates between runners (PRODUCT.md §6, "Several runners, one ledger"):
the pure rules case by case, then each transition of the claim, takeover and record
transactions on a real ledger (a SQLite file, a PostgreSQL database) opened by two
connections, as two runners would."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchgen.arbitration import Claim, ClaimFacts, RunnerState, beat_every, claim_verdict
from batchgen.arbitration import runner_state as state_of
from batchgen.ledger import Ledger, LedgerJob, Takeover
from batchgen.processes import Liveness
from tests.builders import PRICE, build_ledger


def facts(**changes: object) -> ClaimFacts:
    base: dict[str, object] = dict(
        job_status="queued",
        job_attempts=0,
        key_in_flight=0,
        budget=None,
        committed=0,
        price=PRICE,
    )
    base.update(changes)
    return ClaimFacts(**base)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- the rules


@pytest.mark.parametrize("status", ["submitting", "running", "completed", "failed", "held", None])
def test_only_a_queued_job_is_claimed(status):
    assert claim_verdict(facts(job_status=status), 3, 4) is Claim.TAKEN


def test_a_queued_job_with_a_free_slot_and_no_budget_is_claimed():
    assert claim_verdict(facts(), 3, 4) is Claim.CLAIMED


def test_a_job_that_used_its_attempts_is_exhausted_not_claimed():
    assert claim_verdict(facts(job_attempts=4), 3, 4) is Claim.EXHAUSTED
    assert claim_verdict(facts(job_attempts=3), 3, 4) is Claim.CLAIMED


def test_a_key_with_concurrency_tasks_in_flight_has_no_slot():
    assert claim_verdict(facts(key_in_flight=3), 3, 4) is Claim.NO_SLOT
    assert claim_verdict(facts(key_in_flight=2), 3, 4) is Claim.CLAIMED
    assert claim_verdict(facts(key_in_flight=1), 1, 4) is Claim.NO_SLOT


def test_the_cost_must_fit_the_budget_with_everything_committed():
    assert claim_verdict(facts(budget=500_000, committed=400_000), 3, 4) is Claim.CLAIMED
    assert claim_verdict(facts(budget=500_000, committed=400_001), 3, 4) is Claim.BUDGET
    assert claim_verdict(facts(budget=0, committed=0, price=0), 3, 4) is Claim.CLAIMED


def test_a_job_taken_by_another_runner_is_taken_whatever_else_holds():
    busy = facts(job_status="running", job_attempts=9, key_in_flight=9, budget=0, committed=1)
    assert claim_verdict(busy, 3, 4) is Claim.TAKEN


def test_exhausted_comes_before_the_slot_and_the_slot_before_the_budget():
    assert claim_verdict(facts(job_attempts=4, key_in_flight=3), 3, 4) is Claim.EXHAUSTED
    assert claim_verdict(facts(key_in_flight=3, budget=0), 3, 4) is Claim.NO_SLOT


def test_a_runner_is_dead_when_its_process_is_gone_or_its_lease_lapsed():
    assert state_of(0.0, 120, 30, Liveness.DEAD) is RunnerState.DEAD
    assert state_of(120.5, 120, 30, Liveness.ALIVE) is RunnerState.DEAD
    assert state_of(120.5, 120, 30, Liveness.ELSEWHERE) is RunnerState.DEAD
    assert state_of(120.0, 120, 30, Liveness.ALIVE) is RunnerState.ALIVE


def test_a_runner_elsewhere_that_missed_two_beats_is_late_until_its_lease_lapses():
    assert state_of(60.0, 120, 30, Liveness.ELSEWHERE) is RunnerState.ALIVE
    assert state_of(60.5, 120, 30, Liveness.ELSEWHERE) is RunnerState.LATE
    assert state_of(119.0, 120, 30, Liveness.ELSEWHERE) is RunnerState.LATE
    # On this machine its process is seen: alive while it runs and its lease holds.
    assert state_of(100.0, 120, 30, Liveness.ALIVE) is RunnerState.ALIVE


def test_a_runner_beats_four_times_per_lease_within_bounds():
    assert beat_every(120.0) == 30.0
    assert beat_every(8.0) == 2.0
    assert beat_every(3600.0) == 30.0
    assert beat_every(0.1) == 0.05


# ---------------------------------------------------------------------- the transactions


@pytest.fixture
def location(ledger_at: Path | str) -> Path | str:
    """A ledger of six clips and a $0.50 budget, on each kind (a file, a database)."""
    build_ledger(ledger_at, 6, budget_usd="0.50")
    return ledger_at


def runner(
    location: Path | str, labels: list[str | None], lease: float = 120.0
) -> tuple[Ledger, str]:
    ledger = Ledger(location)
    return ledger, ledger.register_runner("resume", labels, lease)


def job(ledger: Ledger, n: int) -> LedgerJob:
    return ledger.unfinished_jobs()[n]


def claim(ledger: Ledger, runner_id: str, n: int, key: str | None = "k1", concurrency: int = 3):
    return ledger.claim(job(ledger, n), runner_id, key, concurrency, 4)


def test_two_runners_claiming_one_job_get_it_once(location):
    (a, a_id), (b, b_id) = runner(location, ["k1"]), runner(location, ["k1"])
    first, second = job(a, 0), job(b, 0)  # both read it queued
    assert a.claim(first, a_id, "k1", 3, 4)[0] is Claim.CLAIMED
    assert first.status == "submitting"
    verdict, attempt = b.claim(second, b_id, "k1", 3, 4)
    assert (verdict, attempt) == (Claim.TAKEN, None)
    assert a.query("SELECT runner_id FROM attempts") == [{"runner_id": a_id}]


def test_a_keys_slots_are_counted_across_runners(location):
    (a, a_id), (b, b_id) = runner(location, ["k1"]), runner(location, ["k1", "k2"])
    for n in range(2):
        assert claim(a, a_id, n)[0] is Claim.CLAIMED
    assert claim(b, b_id, 2)[0] is Claim.CLAIMED
    assert claim(b, b_id, 3)[0] is Claim.NO_SLOT
    assert claim(b, b_id, 3, key="k2")[0] is Claim.CLAIMED
    assert job(b, 3).status == "submitting"


def test_the_budget_counts_what_was_spent_and_what_is_in_flight_as_well(location):
    ledger, me = runner(location, ["k1", "k2"])
    done, running = job(ledger, 0), job(ledger, 1)
    for each, task in ((done, "t-0"), (running, "t-1")):
        _, attempt = ledger.claim(each, me, "k1", 3, 4)
        assert attempt is not None and ledger.attempt_created(each, attempt, 200, task)
    assert ledger.task_completed(done, ["https://cdn.example/t-0.mp4"])
    assert ledger.in_flight_anywhere("c") == 1
    for _ in range(3):  # $0.10 spent + $0.10 in flight + three claims = $0.50
        assert ledger.claim(next(ledger.queued_jobs()), me, "k2", 3, 4)[0] is Claim.CLAIMED
    assert ledger.in_flight_anywhere("c") == 4
    assert ledger.claim(next(ledger.queued_jobs()), me, "k1", 3, 4)[0] is Claim.BUDGET
    assert ledger.in_flight_anywhere("elsewhere") == 0


def test_the_budget_is_reserved_by_the_claim_and_freed_when_no_task_was_made(location):
    ledger, me = runner(location, ["k1", "k2", "k3"])
    keys = ["k1", "k1", "k1", "k2", "k2"]
    attempts = [claim(ledger, me, n, key)[1] for n, key in enumerate(keys)]
    assert claim(ledger, me, 5, "k3")[0] is Claim.BUDGET  # $0.50 reserved by five claims
    rejected = job(ledger, 0)
    assert rejected.status == "submitting"
    assert attempts[0] is not None
    ledger.attempt_ended(
        rejected, attempts[0], state="rejected", outcome="rejected", counted=True,
        job_status="failed",
    )  # fmt: skip
    assert claim(ledger, me, 4, "k3")[0] is Claim.CLAIMED


def test_a_job_whose_attempts_are_used_is_exhausted(location):
    ledger, me = runner(location, ["k1"])
    used = job(ledger, 0)  # read with 0 attempts; then other runners use them all
    ledger.conn.execute("UPDATE jobs SET attempts = 4 WHERE id = ?", (used.id,))
    assert ledger.claim(used, me, "k1", 3, 4) == (Claim.EXHAUSTED, None)
    assert used.attempts == 4  # as the ledger counts them, whatever this runner had read
    assert ledger.fail_job(used, "gave up")
    assert not ledger.fail_job(used, "gave up")  # not queued any more


def test_a_runner_whose_lease_lapsed_finds_its_claim_taken_and_its_answer_kept_for_audit(location):
    (a, a_id), (b, b_id) = runner(location, ["k1"], lease=1.0), runner(location, ["k1"])
    mine = job(a, 0)
    _, attempt = a.claim(mine, a_id, "k1", 3, 4)
    assert attempt is not None and a.owns(a_id, attempt)
    with a.transaction() as db:  # A is paused (a closed lid): its heartbeat ages
        db.execute("UPDATE runners SET heartbeat_at = '2000-01-01T00:00:00Z' WHERE id = ?", [a_id])
    takeover = b.take_over(b_id)
    assert [(o.attempt_id, o.state) for o in takeover.orphans] == [(attempt, "sending")]
    assert not a.owns(a_id, attempt)  # A sends nothing for it
    settled = job(b, 0)
    assert b.attempt_ended(
        settled, attempt, state="unknown", outcome="unknown", counted=True, job_status="queued"
    )
    # Had A sent it after all, its answer is kept on the attempt, not followed: the job
    # is queued again (a visible unknown outcome), not taken by A's late task.
    assert b.claim(job(b, 0), b_id, "k1", 3, 4)[0] is Claim.CLAIMED
    assert not a.attempt_created(mine, attempt, 200, "task-late", runner_id=a_id)
    row = a.query("SELECT state, task_id FROM attempts WHERE id = ?", [attempt])[0]
    assert row == {"state": "unknown", "task_id": "task-late"}
    assert job(a, 0).status == "submitting"  # B's claim keeps the job
    # A knows it was taken for dead: its heartbeat adds it back.
    assert not a.heartbeat(a_id, "resume")
    assert a.heartbeat(a_id, "resume")


def test_a_live_runners_attempts_are_not_taken_and_a_stopped_ones_are(location):
    (a, a_id), (b, b_id) = runner(location, ["k1"]), runner(location, ["k1"])
    mine = job(a, 0)
    _, attempt = a.claim(mine, a_id, "k1", 3, 4)
    assert attempt is not None
    assert a.attempt_created(mine, attempt, 200, "task-1", runner_id=a_id)
    assert b.take_over(b_id).orphans == []  # A lives (this very process, a fresh heartbeat)
    assert [j.id for j in a.owned_jobs(a_id)] == [mine.id]
    a.unregister_runner(a_id)  # A stops with its task still running
    assert b.take_over(b_id, ["another-campaign"]).orphans == []  # not among its campaigns
    takeover = b.take_over(b_id, ["c"])
    assert [(o.job_id, o.state) for o in takeover.orphans] == [(mine.id, "running")]
    assert [j.id for j in b.owned_jobs(b_id)] == [mine.id]


def test_a_runner_takes_only_tasks_of_its_keys_and_names_those_nobody_holds(location):
    (a, a_id), (b, b_id) = runner(location, ["night"]), runner(location, ["studio"])
    night = job(a, 0)
    _, attempt = a.claim(night, a_id, "night", 3, 4)
    assert attempt is not None and a.attempt_created(night, attempt, 200, "t-1", runner_id=a_id)
    a.unregister_runner(a_id)
    takeover = b.take_over(b_id)
    assert takeover.orphans == [] and takeover.unheld == {"night": 1}


def test_two_runners_recording_one_completion_record_it_once(location):
    (a, a_id), (b, _) = runner(location, ["k1"]), runner(location, ["k1"])
    mine = job(a, 0)
    _, attempt = a.claim(mine, a_id, "k1", 3, 4)
    assert attempt is not None and a.attempt_created(mine, attempt, 200, "t-1", runner_id=a_id)
    seen_by_b = b.owned_jobs(a_id)[0]
    assert a.task_completed(mine, ["https://cdn.example/t-1.mp4"])
    assert not b.task_completed(seen_by_b, ["https://cdn.example/t-1.mp4"])
    assert not b.task_failed(seen_by_b, "Generation failed", "queued")
    assert job_status(a, mine.id) == "completed"


def job_status(ledger: Ledger, job_id: str) -> str:
    return str(ledger.query("SELECT status FROM jobs WHERE id = ?", [job_id])[0]["status"])


def test_status_lists_the_live_runners_with_their_keys(location):
    (a, _), (_, b_id) = runner(location, ["studio", "night"]), runner(location, [None])
    listed = a.runners()
    assert [r["keys"] for r in listed] == [["studio", "night"], [None]]
    assert all(r["host"] and r["pid"] and r["since"] and r["heartbeat"] for r in listed)
    with a.transaction() as db:
        db.execute("UPDATE runners SET heartbeat_at = '2000-01-01T00:00:00Z' WHERE id = ?", [b_id])
    assert [r["keys"] for r in a.runners()] == [["studio", "night"]]


def test_a_runner_elsewhere_that_missed_beats_is_waited_for_then_taken_over(location, monkeypatch):
    (a, a_id), (b, b_id) = runner(location, ["k1"], lease=60.0), runner(location, ["k1"])
    mine = job(a, 0)
    _, attempt = a.claim(mine, a_id, "k1", 3, 4)
    assert attempt is not None and a.attempt_created(mine, attempt, 200, "t-1", runner_id=a_id)

    def a_beat_ago(seconds: int) -> None:  # A runs on another machine, last heard of then
        stamp = f"2026-12-07T00:00:{60 - seconds:02d}Z" if seconds < 60 else "2000-01-01T00:00:00Z"
        with a.transaction() as db:
            db.execute(
                "UPDATE runners SET host = 'render-02', machine = 'elsewhere', heartbeat_at = ?"
                " WHERE id = ?",
                [stamp, a_id],
            )

    # B's clock, as the ledger ages heartbeats (the server's on PostgreSQL, this machine's
    # for a SQLite file), reads a minute past A's first beat.
    monkeypatch.setattr(b, "_clock", lambda: "2026-12-07T00:01:00.000000Z")
    a_beat_ago(10)  # within two beats (15 s each for a 60 s lease): alive
    assert b.take_over(b_id) == Takeover([], 0, {})
    a_beat_ago(40)  # late: its task is waited for, not taken
    assert b.take_over(b_id) == Takeover([], 1, {})
    a_beat_ago(61)  # its lease lapsed: dead, its task is taken over
    assert [o.job_id for o in b.take_over(b_id).orphans] == [mine.id]

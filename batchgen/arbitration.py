"""What the ledger decides when several runners share it (PRODUCT.md §6, "Several runners,
one ledger"): pure functions over values the claim transaction has just read, so each rule
is tested case by case without a database, a clock or a second process.

- `claim_verdict`: may this runner submit this job now, on this key, within this budget?
- `runner_state`: is a runner that recorded this heartbeat alive, dead, or not yet known?
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from batchgen.processes import Liveness


class Claim(Enum):
    """The answer of one claim transaction."""

    CLAIMED = "claimed"  # the job is ours: its attempt is recorded, its cost reserved
    TAKEN = "taken"  # the job is not queued (another runner has it, or it ended)
    NO_SLOT = "no slot"  # the key has `concurrency` tasks in flight, whoever runs them
    BUDGET = "budget"  # its cost does not fit the campaign's budget now
    EXHAUSTED = "exhausted"  # the job has used every attempt it may have


@dataclass(frozen=True)
class ClaimFacts:
    """What the claim transaction read, in one moment of the ledger."""

    job_status: str | None  # None: no such job
    job_attempts: int
    key_in_flight: int  # the key's attempts sending or running, every runner's
    budget: int | None  # micro-dollars; None: no cap
    committed: int  # spent + in flight + unknown (unanswered attempts included)
    price: int  # what this attempt will cost if the service accepts it


def claim_verdict(facts: ClaimFacts, concurrency: int, max_attempts: int) -> Claim:
    """Whether a runner may record an attempt for this job now. The order matters: a job
    another runner took is not ours to judge; then the job's own limit; then the key's
    slots; then the money."""
    if facts.job_status != "queued":
        return Claim.TAKEN
    if facts.job_attempts >= max_attempts:
        return Claim.EXHAUSTED
    if facts.key_in_flight >= concurrency:
        return Claim.NO_SLOT
    if facts.budget is not None and facts.committed + facts.price > facts.budget:
        return Claim.BUDGET
    return Claim.CLAIMED


class RunnerState(Enum):
    ALIVE = "alive"  # heartbeat within its lease, and its process runs (where that is seen)
    LATE = "late"  # on another machine, heartbeats missed, lease not yet lapsed: wait
    DEAD = "dead"  # its process is gone (this machine), or its lease lapsed


def runner_state(
    heartbeat_age: float, lease: float, beat_every: float, process: Liveness
) -> RunnerState:
    """A runner's state from the age of its last heartbeat (seconds), its lease, how often
    it beats, and what this machine sees of its process."""
    if process is Liveness.DEAD or heartbeat_age > lease:
        return RunnerState.DEAD
    if process is Liveness.ELSEWHERE and heartbeat_age > 2 * beat_every:
        return RunnerState.LATE
    return RunnerState.ALIVE


def beat_every(lease: float) -> float:
    """How often a runner with this lease writes its heartbeat: four times per lease, so
    a runner that misses one beat (a slow disk, a busy ledger) is not taken for dead."""
    return max(0.05, min(30.0, lease / 4))

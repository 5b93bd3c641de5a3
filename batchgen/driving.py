"""The parts of a run that its rooms share: its settings, how the driving of one job
ends, each key's slots, the run's summary, and `RunBase`, the state the scheduler's
loop (scheduler.py), its submissions (submit.py) and its polls (follow.py) work on."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from batchgen.catalog import Catalog
from batchgen.client import Client
from batchgen.errors import AuthError
from batchgen.ledger import Ledger, LedgerJob
from batchgen.pacing import Follow, Key, Learned, backoff
from batchgen.writer import LedgerWriter, Reporter


@dataclass(frozen=True)
class Settings:
    concurrency: int = 3
    poll_interval: float = 5.0
    retry_delay: float = 2.0
    max_attempts: int = 4
    on_unknown: str = "resubmit"  # or "hold"
    lost_after: float = 3600.0  # seconds without a usable answer before a task is lost
    lease: float = 120.0  # a runner whose heartbeat is older than this is dead (PRODUCT §6)


class Ended(Enum):
    """How the driving of one job ended, as the loop reads it (a value, not a side effect)."""

    DONE = "done"  # completed, failed, held, or left alone: nothing more to do here
    REQUEUED = "requeued"  # queued again; its key stopped submitting: another key may take it
    BUDGET = "budget"  # its cost does not fit its campaign's budget now
    NO_SLOT = "no slot"  # its key's slots are all taken in the ledger (by other runners)
    TAKEN = "taken"  # another runner has it (claimed it, or took this runner's claim over)


class AuthFailed(AuthError):
    """The service refused every API key given (401)."""


@dataclass(eq=False)
class KeySlots:
    """One API key in the run: its client (which sends its bearer token) and its slots.

    `label` is what the ledger records per attempt (None: a single key run by code that
    gives no label). `busy` counts the jobs driven on this key: a task in flight, or a
    submission on its way. `out`: why the key submits nothing more (`refused` after a
    401: it polls nothing either; `balance` after a 402: its tasks are still followed).
    """

    label: str | None
    client: Client
    busy: int = 0
    out: str | None = None
    accepted: bool = False  # the service answered once without 401
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    full_until: float = 0.0  # its slots were all taken in the ledger: not tried before then


@dataclass
class Summary:
    """How a run ended, for the exit code and the closing lines."""

    stopped_for: str | None = None  # balance | unreachable | interrupted | auth | redirect
    budget_blocked: set[tuple[str, str]] = field(default_factory=set)
    message: str | None = None
    # Several keys (PRODUCT §6): keys taken out of the run (label -> `refused` | `balance`),
    # and tasks left unpolled per label: their key is not given, or was refused.
    keys_out: dict[str, str] = field(default_factory=dict)
    unpolled: dict[str, int] = field(default_factory=dict)
    missing_keys: set[str] = field(default_factory=set)  # labels of unpolled tasks not given


class RunBase:
    """The state of one run, set up by `Scheduler.__init__`, and the small decisions every
    room of the run takes: a job's key, a key taken out, stopping, backing off."""

    # Called with a name at each point where a crash matters (intent_committed,
    # submit_answered, task_id_committed, poll_answered). A no-op in normal runs; the crash
    # tests replace it to SIGKILL the process exactly there.
    checkpoint: Callable[[str], None] = staticmethod(lambda name: None)

    ledger: Ledger
    writer: LedgerWriter
    runner_id: str
    keys: dict[str | None, KeySlots]
    first_key: KeySlots
    settings: Settings
    report: Reporter
    rng: random.Random
    clock: Callable[[], float]  # monotonic seconds: the run's one clock
    catalog: Catalog
    summary: Summary
    completions: list[LedgerJob]
    halt_submits: asyncio.Event
    halt_all: asyncio.Event
    on_wire: set[asyncio.Task[Any]]
    learned: Learned
    following: dict[tuple[str, str], tuple[Key, Follow]]
    sent_at: dict[tuple[str, str], float]
    _refused: int
    _refused_since: float | None
    _refused_reported: float | None

    def _key_of(self, job: LedgerJob) -> KeySlots | None:
        """The key a recorded task must be polled with (None: not given in this run)."""
        if job.key_label is None:
            return self.first_key
        return self.keys.get(job.key_label)

    def _unpolled(self, job: LedgerJob, *, missing: bool) -> None:
        """A task left alone: its key is not given (`missing`) or was refused."""
        label = job.key_label or "(unlabelled)"
        self.summary.unpolled[label] = self.summary.unpolled.get(label, 0) + 1
        if missing:
            self.summary.missing_keys.add(label)
            self.report(
                job,
                f"task {job.task_id} was created with key {label}, which is not given: "
                "left as it is (neither polled nor submitted again)",
            )

    def _unheld(self, label: str | None, tasks: int) -> None:
        """Tasks no runner follows: created with a key that neither this runner nor any
        live one holds. Left as they are (neither polled nor submitted again)."""
        name = label or "(unlabelled)"
        if name not in self.summary.missing_keys:
            self.report(
                None,
                f"{tasks} task(s) were created with key {name}, which is not given: left as "
                "they are (neither polled nor submitted again)",
            )
        self.summary.missing_keys.add(name)
        self.summary.unpolled[name] = tasks

    def _key_out(self, slots: KeySlots, why: str, message: str | None) -> None:
        """Take a key out of the run: `refused` (401) or `balance` (402). When no key is
        left to submit with, submitting stops (and with every key refused, the run)."""
        if slots.out is not None:
            return
        slots.out = why
        if slots.label is not None:
            self.summary.keys_out[slots.label] = why
        name = f"key {slots.label}" if slots.label is not None else "the API key"
        if why == "refused":
            words = f"the service refused {name} (401: {message or 'unauthorized'})"
        else:
            words = f"balance exhausted on {name} (402)"
        left = [str(k.label) for k in self.keys.values() if k.out is None]
        words += f": going on with {', '.join(left)}" if left else ": submitting nothing more"
        self.report(None, words)
        if any(k.out is None for k in self.keys.values()):
            return
        if all(k.out == "refused" for k in self.keys.values()):
            self._halt("auth")
            raise AuthFailed(message)
        self._halt("balance")

    def _backoff(self, failures: int) -> float:
        return backoff(self.settings.retry_delay, failures, self.rng)

    def _halt(self, reason: str) -> None:
        if self.summary.stopped_for is None:
            self.summary.stopped_for = reason
        self.halt_submits.set()

    def _after_unknown(self, job: LedgerJob, counted: bool = True) -> tuple[str, str | None]:
        """(job status, reason) after an attempt of unknown outcome, per --on-unknown."""
        if self.settings.on_unknown == "hold":
            return "held", "unknown outcome"
        exhausted = job.attempts + int(counted) >= self.settings.max_attempts
        return ("failed" if exhausted else "queued"), None

"""The scheduler: takes a ledger's unfinished jobs to an end, at most N tasks in flight.

Each job is driven by one coroutine that holds a slot from its first submission until
its task ends (resubmissions after a failed task stay in the slot). The ledger is
written before every request and right after every answer, so a kill at any moment
leaves a state `resume` can continue from without submitting a recorded task again.

A ledger write that fails (locked by another program, disk full) stops new submissions
and is retried; an answer it would record (a task id, a completion) is held meanwhile in
the ledger's recovery file, which the next command applies if this run has to end first.
Interrupted, the run stops at once except for submissions already on the wire, whose
answers are awaited (within the request's deadline) and recorded; a second interrupt
stops those too.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from functools import partial
from typing import Any, TypeVar

from batchgen import catalog
from batchgen.arbitration import Claim, beat_every
from batchgen.client import Client
from batchgen.durations import format_duration
from batchgen.errors import AuthError, LedgerWriteFailed
from batchgen.ledger import Ledger, LedgerJob, now
from batchgen.outcomes import Poll, Submit, classify_poll, classify_submit, task_id_problem
from batchgen.pacing import Follow, Key, Learned, Started, backoff, eta_seconds, slot_wait

T = TypeVar("T")

WRITE_WAIT = 0.25  # seconds a ledger write waits for a lock before the run gets control back
WRITE_RETRY_CAP = 5.0  # longest pause between two tries of a write that failed
BLOCKED_REPORT_EVERY = 10.0  # seconds between two "cannot write the ledger" lines
SLOT_SUMMARY_AFTER = 10  # 429s before the first "refused with 429" line
SLOT_SUMMARY_EVERY = 60.0  # seconds between two such lines while the 429s go on
# A task's progress is shown by `status`: written at most this often per task, since each
# write is an fsync'd commit that holds the event loop (and every other task's poll).
PROGRESS_WRITE_EVERY = 1.0


# How a submission that created no known task closes its attempt:
# (attempt state, the outcome in words, the job's next status, the reason it waits)
CLOSING: dict[Submit, tuple[str, str, str, str | None]] = {
    Submit.WAIT_FOR_SLOT: ("not_sent", "slot taken", "queued", None),
    Submit.NOT_SENT: ("not_sent", "not sent", "queued", None),
    Submit.SERVER_ERROR: ("error", "server error", "queued", None),
    Submit.REJECTED: ("rejected", "rejected", "failed", None),
    Submit.AUTH: ("not_sent", "unauthorized", "queued", None),
    Submit.BALANCE: ("not_sent", "insufficient balance", "queued", "balance"),
    Submit.REDIRECTED: ("not_sent", "redirected", "queued", None),
}


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


class _Abandoned(Exception):
    """The run ended while a ledger write was failing: the job stops where it is (an
    answer it held is in the recovery file, a submission not recorded reads as unknown)."""


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


Reporter = Callable[[LedgerJob | None, str], None]


class Scheduler:
    # Called with a name at each point where a crash matters (intent_committed,
    # submit_answered, task_id_committed, poll_answered). A no-op in normal runs; the crash
    # tests replace it to SIGKILL the process exactly there.
    checkpoint: Callable[[str], None] = staticmethod(lambda name: None)

    def __init__(
        self,
        ledger: Ledger,
        client: Client | dict[str | None, Client],
        settings: Settings,
        report: Reporter = lambda job, text: None,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        on_completed: Callable[[LedgerJob], None] | None = None,
        command: str = "run",
    ):
        self.ledger = ledger
        self.command = command
        self.runner_id = ""  # given by the ledger when the run starts
        # Each key's client and slots, in the order given. A task recorded without a label
        # (before m007) is polled with the first key.
        clients = client if isinstance(client, dict) else {None: client}
        self.keys = {label: KeySlots(label, c) for label, c in clients.items()}
        self.first_key = next(iter(self.keys.values()))
        self.client = self.first_key.client
        self.settings = settings
        self.report = report
        self.rng = rng or random.Random()
        self.clock = clock
        self.on_completed = on_completed
        self.catalog = catalog.load()
        self.summary = Summary()
        self.in_flight: dict[asyncio.Task[Ended], tuple[LedgerJob, KeySlots]] = {}
        # Completions seen, handed to `on_completed` (downloads) once their slots are
        # refilled: a download must never delay the next submission (PRODUCT §6).
        self.completions: list[LedgerJob] = []
        self.halt_submits = asyncio.Event()  # balance, unreachable, interrupted
        self.halt_all = asyncio.Event()  # interrupted, redirected: stop polling too
        self.halt_now = asyncio.Event()  # a second interrupt: not even for answers on the wire
        self.interrupts = 0
        self.on_wire: set[asyncio.Task[Any]] = set()  # jobs between intent and its record
        self.ledger_writable = asyncio.Event()  # cleared while a write keeps failing
        self.ledger_writable.set()
        self._failing_writes = 0
        self._blocked_reported = 0.0  # monotonic time of the last "cannot write" line
        self._refused = 0  # 429s since the last summary line
        self._refused_since: float | None = None
        self._refused_reported: float | None = None
        self.beat_every = beat_every(settings.lease)
        self.next_beat = 0.0  # monotonic time of the next heartbeat and look for orphans
        self.waiting_on_late = 0  # tasks of our keys whose runner is late (not yet dead)
        # Generation times learned from tasks a process followed from submission to
        # completion (the ledger's history, then this run's), and which ways of reading
        # progress have held per model: what pacing and the ETA rest on.
        self.learned = Learned(self._typical_seconds, ledger.observed_times())
        self.following: dict[tuple[str, str], tuple[Key, Follow]] = {}  # tasks being polled
        self.sent_at: dict[tuple[str, str], float] = {}  # job -> when its last submit left

    # ------------------------------------------------------------------ the loop

    async def run(self, campaigns: list[str] | None = None) -> Summary:
        labels = [slots.label for slots in self.keys.values()]
        self.runner_id = await self._record(
            partial(self.ledger.register_runner, self.command, labels, self.settings.lease)
        )
        cancelled = False
        try:
            return await self._run(campaigns)
        except asyncio.CancelledError:
            cancelled = True  # the process goes away: its pid, or its lease, tells the others
            raise
        finally:
            if not cancelled:
                # Its tasks still in flight are left for any runner to take at once.
                self._try_once(partial(self.ledger.unregister_runner, self.runner_id))

    async def _run(self, campaigns: list[str] | None) -> Summary:
        try:
            await self._take_over(campaigns)
        except _Abandoned:
            return self.summary
        # Lost tasks (held, reason `lost`) are polled once more, and taken back if they answer.
        followed = [*self.in_flight.values()]
        for job in self.ledger.lost_jobs(campaigns):
            slots = self._key_of(job)
            if slots is not None:
                self._start(job, slots)
        # A followed job whose task fails is `queued` while its own coroutine submits it
        # again: the queue, read later, should not hand it out a second time (if it did,
        # the ledger's claim would refuse one of the two).
        pending = _Queue(self.ledger.queued_jobs(campaigns), skip={j.key for j, _ in followed})
        deferred: list[LedgerJob] = []  # its key stopped; another key may take it
        over_budget: list[LedgerJob] = []  # tried again when money frees up
        halted = asyncio.get_running_loop().create_task(self.halt_all.wait())
        try:
            while True:
                room: dict[str, int | None] = {}  # budget left per campaign, this round
                while (
                    not self.halt_submits.is_set()
                    and (free := self._free_key()) is not None
                    and (queued := pending.pop()) is not None
                ):
                    job = queued
                    # A first look, read only: the claim decides (in the ledger), this only
                    # spares claims that cannot succeed.
                    if job.campaign not in room:
                        room[job.campaign] = self._budget_room(job.campaign)
                    left = room[job.campaign]
                    if left is not None and job.price_micros > left:
                        over_budget.append(job)
                        continue
                    if left is not None:
                        room[job.campaign] = left - job.price_micros
                    self._start(job, free)
                self._hand_on_completions()
                wait = self._worth_waiting(pending, over_budget)
                if not self.in_flight and wait is None:
                    break
                waiting: list[asyncio.Future[Any]] = [*self.in_flight, halted]
                await asyncio.wait(waiting, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                if self.halt_all.is_set():
                    await self._finish_halted()
                    return self.summary
                for task in [t for t in self.in_flight if t.done()]:
                    job, slots = self.in_flight.pop(task)
                    slots.busy -= 1
                    ended = task.result()  # AuthFailed, and any bug, surfaces here
                    if ended is Ended.REQUEUED:
                        deferred.append(job)
                    elif ended is Ended.BUDGET:
                        over_budget.append(job)
                    elif ended is Ended.NO_SLOT:
                        slots.full_until = time.monotonic() + self._recheck
                        pending.put_back([job])
                await self._beat(campaigns)
                pending.put_back(deferred + over_budget)  # a refund may have made room
                deferred.clear()
                over_budget.clear()
            self.summary.budget_blocked = {j.key for j in over_budget}
            await self._record(
                lambda: self.ledger.set_reason(sorted(self.summary.budget_blocked), "budget")
            )
        except _Abandoned:
            pass
        except BaseException:
            await self._cancel_all()
            raise
        finally:
            halted.cancel()
        return self.summary

    @property
    def _recheck(self) -> float:
        """How soon to look again at what other runners hold (a key's slots, the money
        their tasks may free, a late runner's tasks)."""
        return max(0.05, min(self.settings.poll_interval, self.beat_every))

    def _worth_waiting(self, pending: _Queue, over_budget: list[LedgerJob]) -> float | None:
        """Seconds to wait for what other runners hold, None when nothing they hold can give
        this runner work: a key whose slots they fill while jobs wait, money their tasks in
        flight may free for a job over budget, tasks of a late runner this one may adopt."""
        if self.halt_submits.is_set():
            return self._recheck if self.in_flight else None
        until = time.monotonic() + self._recheck
        if self.in_flight:
            return max(0.0, min(self.next_beat, until) - time.monotonic())
        usable = [k for k in self.keys.values() if k.out is None]
        if usable and all(k.full_until > time.monotonic() for k in usable) and pending.peek():
            return self._recheck
        if any(self.ledger.in_flight_anywhere(c) for c in {j.campaign for j in over_budget}):
            return self._recheck
        if self.waiting_on_late:
            return self._recheck
        return None

    async def _beat(self, campaigns: list[str] | None) -> None:
        """Every `beat_every` seconds: the heartbeat, and a look for orphans (a dead runner's
        tasks of this runner's keys, and its unanswered requests), which this one takes."""
        if time.monotonic() < self.next_beat:
            return
        self.next_beat = time.monotonic() + self.beat_every
        try:
            alive = self.ledger.try_write(
                partial(self.ledger.heartbeat, self.runner_id, self.command), WRITE_WAIT
            )
        except LedgerWriteFailed:
            return  # tried again at the next beat
        if not alive:
            self._lost_claims()
        try:
            await self._take_over(campaigns)
        except _Abandoned:
            pass

    def _lost_claims(self) -> None:
        """This runner was taken for dead (paused past its lease, say): another runner has
        taken its tasks over. It stops following those; a request on the wire records its
        answer, which the ledger keeps for the audit if the claim was settled meanwhile."""
        owned = {job.key for job in self.ledger.owned_jobs(self.runner_id)}
        for task, (job, _) in self.in_flight.items():
            if task not in self.on_wire and job.status == "running" and job.key not in owned:
                task.cancel()
                self.report(
                    job,
                    "taken over by another runner (this one was paused past its "
                    "lease): not following it any more",
                )

    async def _take_over(self, campaigns: list[str] | None) -> None:
        """Take the orphans (see Ledger.take_over): settle each unanswered request as an
        unknown outcome, follow each running task with the key that created it."""
        takeover = await self._record(partial(self.ledger.take_over, self.runner_id, campaigns))
        self.waiting_on_late = takeover.waiting_on_late
        sending = [o for o in takeover.orphans if o.state == "sending"]
        for orphan in sending:
            job = self.ledger.unfinished_job(orphan.campaign, orphan.job_id)
            if job is not None:
                await self._unknown(
                    job, orphan.attempt_id, "its runner stopped before the answer came"
                )
        if len(sending) < len(takeover.orphans):
            driven = {job.key for job, _ in self.in_flight.values()}
            adopted = [j for j in self.ledger.owned_jobs(self.runner_id) if j.key not in driven]
            for job in adopted:
                slots = self._key_of(job)
                assert slots is not None  # only tasks of this runner's keys are taken
                self._start(job, slots)
            if adopted and self.next_beat:  # at the start, following them is what resume does
                self.report(None, f"following {len(adopted)} task(s) of a runner that is gone")
        for label, count in takeover.unheld.items():
            self._unheld(label, count)

    def interrupt(self) -> None:
        """SIGINT/SIGTERM: stop submitting and polling; a submission on the wire is still
        awaited and recorded. A second one stops at once."""
        self.interrupts += 1
        self.summary.stopped_for = "interrupted"
        self.halt_submits.set()
        self.halt_all.set()
        if self.interrupts > 1:
            self.halt_now.set()

    async def _finish_halted(self) -> None:
        """Stop every job at once, except those whose submission is on the wire: they get
        their answer (within the request's deadline) and record it, so a task the service
        created is never paid for twice, unless `halt_now` says not to wait."""
        waiting = [task for task in self.in_flight if task in self.on_wire]
        for task in self.in_flight:
            if task not in self.on_wire:
                task.cancel()
        if waiting and not self.halt_now.is_set():
            self.report(
                None,
                f"stopping: waiting up to {self.client.deadline:g} s for {len(waiting)} "
                "submission(s) already sent, so their task ids are recorded "
                "(Ctrl-C again to stop at once)",
            )
            now_waiter = asyncio.get_running_loop().create_task(self.halt_now.wait())
            sent = asyncio.gather(*waiting, return_exceptions=True)
            either: list[asyncio.Future[Any]] = [sent, now_waiter]
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            now_waiter.cancel()
        await self._cancel_all()

    def _start(self, job: LedgerJob, slots: KeySlots) -> None:
        slots.busy += 1
        task = asyncio.get_running_loop().create_task(self._drive(job, slots))
        self.in_flight[task] = (job, slots)

    def _hand_on_completions(self) -> None:
        """Hand the completions seen to `on_completed`, after the slots they freed were
        given new jobs: those jobs' tasks were created first, so they run (and send their
        submissions) before anything `on_completed` starts."""
        completions, self.completions = self.completions, []
        if self.on_completed is not None:
            for job in completions:
                self.on_completed(job)

    def _free_key(self) -> KeySlots | None:
        """The key to submit the next job with: the least busy of those still submitting,
        if it has a slot free."""
        now = time.monotonic()
        usable = [k for k in self.keys.values() if k.out is None and k.full_until <= now]
        if not usable:
            return None
        slots = min(usable, key=lambda k: k.busy)
        return slots if slots.busy < self.settings.concurrency else None

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

    async def _cancel_all(self) -> None:
        tasks = list(self.in_flight)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.in_flight.clear()

    def _budget_room(self, campaign: str) -> int | None:
        """What the campaign may still commit: budget - (spent + in flight + unknown)."""
        budget = self.ledger.budget_micros(campaign)
        if budget is None:
            return None
        money = self.ledger.money([campaign])
        return budget - money.spent - money.in_flight - money.unknown

    # ------------------------------------------------------------------ one job

    async def _drive(self, job: LedgerJob, slots: KeySlots) -> Ended:
        """Take one job to an end on one key: submit it, follow its task, resubmit while
        allowed. How it ended tells the loop what to do with the job next."""
        try:
            if job.status == "held" and not await self._poll_lost_task(job, slots):
                return Ended.DONE
            if job.status == "running" and not await self._usable_recorded_task(job):
                if job.status != "queued":
                    return Ended.DONE
            while True:
                if job.status != "running":
                    ended = await self._submit(job, slots)
                    if ended is not None:
                        return ended
                if not await self._follow(job, slots):
                    # Queued again (its task failed) but not by this key: another may take it.
                    return Ended.REQUEUED if job.status == "queued" else Ended.DONE
        except _Abandoned:
            return Ended.DONE

    async def _usable_recorded_task(self, job: LedgerJob) -> bool:
        """Whether the task id the ledger holds can be polled. One that cannot (written by
        an older batchgen: a control character, too long) is an unknown outcome, as the
        same answer would be today; it never wedges the run."""
        problem = task_id_problem(job.task_id)
        if problem is None:
            return True
        status, reason = self._after_unknown(job, counted=False)
        await self._record(lambda: self.ledger.task_id_unusable(job, problem, status, reason))
        self.report(job, f"unknown outcome (the recorded task id is unusable: {problem}): {status}")
        return False

    async def _poll_lost_task(self, job: LedgerJob, slots: KeySlots) -> bool:
        """A task given up as lost is polled once more: True (taken back, to follow) when it
        answers usably, else it stays held."""
        model = self.catalog.model(job.model)
        if model is None or job.task_id is None or task_id_problem(job.task_id) is not None:
            return False
        if self.halt_all.is_set() or slots.out == "refused":
            return False
        outcome = classify_poll(await slots.client.poll(model.poll_path(job.task_id)))
        if outcome.action is Poll.AUTH:
            self._key_out(slots, "refused", outcome.message)
            self._unpolled(job, missing=False)
            return False
        if outcome.action is Poll.ERROR:
            self.report(job, f"still lost ({outcome.message}): held")
            return False
        if not await self._record(partial(self.ledger.task_taken_back, job, self.runner_id)):
            return False  # another runner took it back first, and follows it
        self.report(job, f"lost task {job.task_id} answers again: following it")
        return True

    async def _submit(self, job: LedgerJob, slots: KeySlots) -> Ended | None:
        """Submit with `slots`' key until a task is created (None: follow it), or the job
        must wait, has ended, went to another runner, or its key stopped submitting."""
        slot_waits = not_sent = 0
        while True:
            if self.halt_submits.is_set() or slots.out is not None:
                return Ended.REQUEUED
            model = self.catalog.model(job.model)
            assert model is not None
            if not await self._ledger_writable():
                return Ended.REQUEUED
            async with self._key_check(slots):
                if self.halt_submits.is_set() or slots.out is not None:  # while we waited
                    return Ended.REQUEUED
                # The ledger decides: the job, a slot of this key, the job's cost reserved.
                claim, attempt = await self._record(
                    partial(
                        self.ledger.claim,
                        job,
                        self.runner_id,
                        slots.label,
                        self.settings.concurrency,
                        self.settings.max_attempts,
                    )
                )
                if attempt is None:
                    return await self._not_claimed(job, claim)
                if self.halt_submits.is_set():  # halted while the claim waited for the ledger
                    await self._close_unsent(job, attempt)
                    return Ended.REQUEUED
                me = asyncio.current_task()
                assert me is not None
                self.on_wire.add(me)
                try:
                    self.checkpoint("intent_committed")
                    # A runner paused past its lease (a closed laptop lid) may find its claim
                    # taken over by another runner: it sends nothing for that job.
                    if not self.ledger.owns(self.runner_id, attempt):
                        self.report(
                            job,
                            "not sent: another runner took this one's claim over "
                            "(it was paused past its lease)",
                        )
                        return Ended.TAKEN
                    self.sent_at[job.key] = self.clock()
                    answer = await slots.client.submit(model.submit_path, job.request)
                    self.checkpoint("submit_answered")
                    if answer.status is not None and answer.status != 401:
                        slots.accepted = True
                    outcome = classify_submit(answer)
                    ended = await self._record_submit(job, attempt, outcome, slots)
                    if ended is not None:
                        return ended
                finally:
                    self.on_wire.discard(me)
            action, message = outcome.action, outcome.message
            if action is Submit.CREATED:
                self.checkpoint("task_id_committed")
                job.key_label = slots.label
                by = f" (key {slots.label})" if len(self.keys) > 1 else ""
                self.report(job, f"submitted, task {outcome.task_id}{by}")
                return None
            if action is Submit.UNKNOWN:
                await self._pause(self._backoff(job.attempts), self.halt_submits)
                continue
            if action is Submit.WAIT_FOR_SLOT:
                slot_waits += 1
                self._note_refusal(answer.retry_after, outcome.retry_after)
                delay = slot_wait(
                    outcome.retry_after, slot_waits, self.settings.retry_delay, self.rng
                )
                await self._pause(delay, self.halt_submits)
            elif action is Submit.NOT_SENT:
                not_sent += 1
                if not_sent >= self.settings.max_attempts:
                    self.summary.message = f"cannot reach the service: {message}"
                    self._halt("unreachable")
                    return Ended.REQUEUED
                await self._pause(self._backoff(not_sent), self.halt_submits)
            elif action is Submit.SERVER_ERROR:
                self.report(job, f"server error on submit ({message}); will retry")
                await self._pause(self._backoff(job.attempts), self.halt_submits)
            elif action is Submit.REJECTED:
                self.report(job, f"failed: rejected by the service: {message}")
                return Ended.DONE
            elif action is Submit.AUTH:
                self._key_out(slots, "refused", message)
                return Ended.REQUEUED
            elif action is Submit.BALANCE:
                self._key_out(slots, "balance", message)
                return Ended.REQUEUED
            elif action is Submit.REDIRECTED:
                self.summary.message = (
                    f"the service redirects submissions ({message}), so the base URL is wrong "
                    "for every job; nothing was created. Set --base-url or OKAYPIC_BASE_URL "
                    "to the service itself, then `batchgen resume`"
                )
                self.report(job, f"not submitted: {message}; stopping the run")
                self._halt("redirect")
                self.halt_all.set()
                return Ended.DONE

    async def _not_claimed(self, job: LedgerJob, claim: Claim) -> Ended:
        """The ledger refused the claim: what it means for this job."""
        if claim is Claim.EXHAUSTED:
            error = f"gave up after {job.attempts} attempt(s)"
            if await self._record(partial(self.ledger.fail_job, job, error)):
                self.report(job, "failed: attempts exhausted")
            return Ended.DONE
        if claim is Claim.NO_SLOT:
            return Ended.NO_SLOT
        if claim is Claim.BUDGET:
            return Ended.BUDGET
        return Ended.TAKEN

    async def _record_submit(
        self, job: LedgerJob, attempt: int, outcome: Any, slots: KeySlots
    ) -> Ended | None:
        """Record what a submission's answer means: None to go on (follow the task, or act
        on the answer), else how the job's driving ends here."""
        action, message = outcome.action, outcome.message
        if action is Submit.CREATED:
            task_id, status = outcome.task_id, outcome.status or 200
            assert task_id is not None
            answered_at = now()
            held = {
                "kind": "created",
                "campaign": job.campaign,
                "job_id": job.id,
                "attempt": attempt,
                "task_id": task_id,
                "http_status": status,
                "answered_at": answered_at,
            }
            write = partial(
                self.ledger.attempt_created,
                job,
                attempt,
                status,
                task_id,
                answered_at,
                self.runner_id,
            )
            if not await self._record(write, job, held):
                self.report(
                    job,
                    f"task {task_id} was created after another runner had settled this "
                    "submission as unknown: kept on its attempt for the audit, not followed",
                )
                return Ended.TAKEN
            return None
        if action is Submit.UNKNOWN:
            return await self._unknown(job, attempt, message or "no usable answer")
        state, words, job_status, reason = CLOSING[action]
        recorded = await self._record(
            lambda: self.ledger.attempt_ended(
                job,
                attempt,
                state=state,
                outcome=words,
                counted=outcome.counts_as_attempt,
                job_status=job_status,
                http_status=outcome.status,
                error=message,
                reason=reason,
            )
        )
        return None if recorded else self._settled_elsewhere(job)

    def _settled_elsewhere(self, job: LedgerJob) -> Ended:
        self.report(job, "another runner settled this submission meanwhile: leaving it to it")
        return Ended.TAKEN

    async def _close_unsent(self, job: LedgerJob, attempt: int) -> None:
        """An intent committed for a request that will not be sent after all."""
        await self._record(
            lambda: self.ledger.attempt_ended(
                job,
                attempt,
                state="not_sent",
                outcome="not sent",
                counted=False,
                job_status="queued",
            )
        )

    def _after_unknown(self, job: LedgerJob, counted: bool = True) -> tuple[str, str | None]:
        """(job status, reason) after an attempt of unknown outcome, per --on-unknown."""
        if self.settings.on_unknown == "hold":
            return "held", "unknown outcome"
        exhausted = job.attempts + int(counted) >= self.settings.max_attempts
        return ("failed" if exhausted else "queued"), None

    async def _unknown(self, job: LedgerJob, attempt: int, message: str) -> Ended | None:
        """Record an attempt of unknown outcome; None when the job may be submitted again."""
        status, reason = self._after_unknown(job)
        recorded = await self._record(
            lambda: self.ledger.attempt_ended(
                job,
                attempt,
                state="unknown",
                outcome="unknown",
                counted=True,
                job_status=status,
                error=message,
                reason=reason,
            )
        )
        if not recorded:
            return self._settled_elsewhere(job)
        self.report(job, f"unknown outcome ({message}): {status}")
        return None if status == "queued" else Ended.DONE

    async def _follow(self, job: LedgerJob, slots: KeySlots) -> bool:
        """Poll a task to its end with the key that created it; True when the job is to
        be submitted again."""
        model = self.catalog.model(job.model)
        assert model is not None and job.task_id is not None
        path = model.poll_path(job.task_id)
        key: Key = (job.model, job.duration)
        follow = self._following(job)
        self.following[job.key] = (key, follow)
        try:
            return await self._poll_until_done(job, slots, path, key, follow)
        finally:
            self.following.pop(job.key, None)

    def _following(self, job: LedgerJob) -> Follow:
        """Start following a task: one this process submitted started between its request
        leaving and now (its answer was just recorded); one taken over from an earlier
        process has only the ledger's stamp of its answer, and teaches nothing."""
        now = self.clock()
        sent = self.sent_at.pop(job.key, None)
        if sent is not None and sent <= now:
            return Follow(Started(sent, now), watching=now, own=True)
        stamp = _timestamp(job.submitted_at)
        age = max(0.0, time.time() - stamp) if stamp is not None else 0.0
        return Follow(Started(now - age, now - age), watching=now, own=False)

    async def _poll_until_done(
        self, job: LedgerJob, slots: KeySlots, path: str, key: Key, follow: Follow
    ) -> bool:
        progress: int | None = None
        written = -PROGRESS_WRITE_EVERY  # when progress was last written to the ledger
        errors = 0
        usable_at = self.clock()  # the last usable answer (or the start of following)
        while True:
            delay = self.learned.delay(key, follow, self.clock(), self.settings.poll_interval)
            if errors:
                delay = max(delay, self._backoff(errors))
            if await self._pause(delay, self.halt_all):
                return False
            if slots.out == "refused":  # another of its tasks was refused meanwhile
                self._unpolled(job, missing=False)
                return False
            asked = self.clock()
            answer = await slots.client.poll(path)
            self.checkpoint("poll_answered")
            outcome = classify_poll(answer)
            if outcome.action is not Poll.ERROR:
                usable_at = self.clock()
            if outcome.action is Poll.RUNNING:
                errors = 0
                follow.running(asked, self.clock(), outcome.progress)
                if (
                    outcome.progress is not None
                    and outcome.progress != progress
                    and asked - written >= PROGRESS_WRITE_EVERY
                ):
                    progress, written = outcome.progress, asked
                    self._try_once(partial(self.ledger.task_progress, job, progress))
            elif outcome.action is Poll.COMPLETED:
                observed = self._learn(key, follow, self.clock())
                urls, at = list(outcome.result_urls), now()
                held = {
                    "kind": "completed",
                    "campaign": job.campaign,
                    "job_id": job.id,
                    "task_id": job.task_id,
                    "result_urls": urls,
                    "at": at,
                }
                write = partial(
                    self.ledger.task_completed, job, urls, at=at, observed_seconds=observed
                )
                if not await self._record(write, job, held):
                    self.report(job, "completed (recorded already by another runner)")
                    return False
                self.report(job, "completed")
                self.completions.append(job)
                return False
            elif outcome.action is Poll.FAILED:
                # Attempts left: submitted again, by this key if it still submits, else by
                # another, or by a later `resume` if submitting has stopped.
                left = job.attempts < self.settings.max_attempts
                again = left and slots.out is None and not self.halt_submits.is_set()
                message = outcome.message or "Generation failed"
                status = "queued" if left else "failed"
                if not await self._record(partial(self.ledger.task_failed, job, message, status)):
                    self.report(job, "task failed (recorded already by another runner)")
                    return False
                self.report(
                    job, f"task failed ({message})" + ("; submitting again" if again else "")
                )
                return again
            elif outcome.action is Poll.AUTH:
                self._key_out(slots, "refused", outcome.message)
                self._unpolled(job, missing=False)
                return False
            else:
                follow.unanswered(asked)
                errors += 1
                if errors in (1, 5) or errors % 20 == 0:
                    self._try_once(
                        partial(
                            self.ledger.log,
                            "poll_error",
                            job.campaign,
                            job.id,
                            task_id=job.task_id,
                            error=outcome.message,
                            count=errors,
                        )
                    )
                silent = self.clock() - usable_at
                if silent > self.settings.lost_after:
                    await self._lose(
                        job,
                        f"no usable answer for {format_duration(silent)} (last: {outcome.message})",
                    )
                    return False

    async def _lose(self, job: LedgerJob, message: str) -> None:
        """Give a task up (PRODUCT.md §2): held, reason lost; its slot is freed."""
        if not await self._record(lambda: self.ledger.task_lost(job, message)):
            return
        self.report(
            job,
            f"lost: {message}; held (`batchgen resume` polls it once more, "
            "`batchgen retry --unknown` submits it anew)",
        )

    # ------------------------------------------------------------------ the ledger

    async def _record(
        self,
        write: Callable[[], T],
        job: LedgerJob | None = None,
        held: dict[str, Any] | None = None,
    ) -> T:
        """Write to the ledger until it works (PRODUCT.md §6: nothing answered is lost).

        While it fails: no new submission, `held` (the answer this write records) kept in
        the recovery file, a line every few seconds, a retry with growing pauses. If the
        run must end first, a write holding an answer gets one last try, then the job is
        abandoned with the answer in the recovery file (and on stderr); other writes are
        abandoned at once (what they would record, resume finds again)."""
        failures = 0
        try:
            while True:
                try:
                    result = self.ledger.try_write(write, WRITE_WAIT)
                except LedgerWriteFailed as e:
                    failures += 1
                    if failures == 1:
                        self._write_failed(str(e), held)
                    elif time.monotonic() - self._blocked_reported >= BLOCKED_REPORT_EVERY:
                        self._report_blocked(str(e))
                    if self.halt_all.is_set() and (held is None or failures > 1):
                        if held is not None:
                            self._report_unrecorded(job, held)
                        raise _Abandoned from e
                    await self._pause(min(WRITE_RETRY_CAP, WRITE_WAIT * 2**failures), self.halt_all)
                    continue
                if failures:
                    if held is not None:
                        self.ledger.release_answer(held)
                    self.report(job, "recorded in the ledger after all")
                return result
        except asyncio.CancelledError:
            if failures and held is not None:
                self._report_unrecorded(job, held)
            raise
        finally:
            if failures:
                self._failing_writes -= 1
                if not self._failing_writes:
                    self.ledger_writable.set()

    def _write_failed(self, error: str, held: dict[str, Any] | None) -> None:
        self._failing_writes += 1
        self.ledger_writable.clear()
        if held is not None:
            problem = self.ledger.hold_answer(held)
            if problem is not None:
                self.report(
                    None,
                    f"cannot write {self.ledger.recovery_path} either ({problem}): "
                    f"{_answer_named(held)} is kept in this run's memory only",
                )
        self._report_blocked(error)

    def _report_blocked(self, error: str) -> None:
        # Says an answer is kept in the recovery file only when the file holds one.
        self._blocked_reported = time.monotonic()
        kept = self.ledger.held_count()
        where = f", {kept} answer(s) kept in {self.ledger.recovery_path.name}" if kept else ""
        self.report(
            None,
            f"cannot write the ledger ({error}): submitting nothing until it works; "
            f"{self._failing_writes} write(s) waiting{where}; retrying",
        )

    def _report_unrecorded(self, job: LedgerJob | None, held: dict[str, Any]) -> None:
        if self.ledger.holds(held):
            where = (
                f"kept in {self.ledger.recovery_path}, which the next batchgen command on "
                "this ledger applies first"
            )
        else:
            where = f"not in {self.ledger.recovery_path} either (it could not be written)"
        self.report(job, f"NOT RECORDED in the ledger: {_answer_named(held)}; {where}")

    def _try_once(self, write: Callable[[], object]) -> None:
        """A write worth having but not worth waiting for (progress, a log event)."""
        try:
            self.ledger.try_write(write, WRITE_WAIT)
        except LedgerWriteFailed:
            pass

    async def _ledger_writable(self) -> bool:
        """Wait while ledger writes fail; False when submitting stops meanwhile."""
        while not self.ledger_writable.is_set():
            if await self._pause(1.0, self.halt_submits):
                return False
        return not self.halt_submits.is_set()

    # ------------------------------------------------------------------ helpers

    def _note_refusal(self, raw: str | None, honoured: float | None) -> None:
        """Count a 429; now and then (not once per 429) say how many there were."""
        at = time.monotonic()
        self._refused += 1
        if self._refused_since is None:
            self._refused_since = at
        due = (
            self._refused >= SLOT_SUMMARY_AFTER
            if self._refused_reported is None
            else at - self._refused_reported >= SLOT_SUMMARY_EVERY
        )
        if not due:
            return
        if honoured is not None:
            how = f"waiting {honoured:g} s as its Retry-After asks"
        elif raw is not None:
            how = f"waiting with backoff (its Retry-After {ascii(raw[:40])} is not 1-600 s)"
        else:
            how = "waiting with backoff"
        span = format_duration(max(at - self._refused_since, 1.0))
        self.report(
            None,
            f"the service refused {self._refused} submission(s) with 429 (slot taken) "
            f"in {span}; {how}",
        )
        refused, retry_after = self._refused, raw
        self._try_once(
            lambda: self.ledger.log("slot_waits", refused=refused, retry_after=retry_after)
        )
        self._refused, self._refused_since, self._refused_reported = 0, at, at

    @asynccontextmanager
    async def _key_check(self, slots: KeySlots) -> AsyncIterator[None]:
        """Until the service has answered a key once without 401, submit one job at a time
        with it: a wrong key then costs one request, and no other job changes state."""
        if slots.accepted:
            yield
            return
        async with slots.lock:
            if not slots.accepted:
                yield
                return
        # Accepted while this one waited: go at once, not behind the others that waited.
        yield

    def _backoff(self, failures: int) -> float:
        return backoff(self.settings.retry_delay, failures, self.rng)

    def _halt(self, reason: str) -> None:
        if self.summary.stopped_for is None:
            self.summary.stopped_for = reason
        self.halt_submits.set()

    async def _pause(self, seconds: float, stop: asyncio.Event) -> bool:
        """Sleep, waking early when `stop` is set; True when it was."""
        if stop.is_set():
            return True
        try:
            await asyncio.wait_for(stop.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True

    def _learn(self, key: Key, follow: Follow, answered: float) -> float | None:
        """Learn from a completion seen in a poll answered at `answered`: the generation
        time observed (None for a task this process did not follow from its submission)."""
        return self.learned.completed(key, follow, answered)

    def _typical_seconds(self, key: Key) -> float | None:
        model = self.catalog.model(key[0])
        return model.typical_seconds(key[1]) if model is not None else None

    def eta(self, queued: dict[Key, int]) -> float | None:
        """Seconds until the batch should end, from the learned generation times: the
        tasks in flight and `queued` jobs per (model, duration); None before any is known."""
        now = self.clock()
        running = []
        for key, follow in self.following.values():
            expected = self.learned.expected(key)
            if expected is None:
                return None
            running.append(max(0.0, follow.started.sent + expected - now))
        work = []
        for key, count in queued.items():
            expected = self.learned.expected(key)
            if expected is None:
                return None
            work.append((expected, count))
        keys = sum(1 for k in self.keys.values() if k.out is None) or 1
        return eta_seconds(running, work, self.settings.concurrency * keys)


class _Queue:
    """The jobs waiting to be submitted: those put back (over budget for now) first, then
    the ledger's queued jobs, read a page at a time as they are wanted."""

    def __init__(self, ledger_jobs: Iterator[LedgerJob], skip: set[tuple[str, str]]):
        self.put_back_jobs: deque[LedgerJob] = deque()
        self.ledger_jobs = ledger_jobs
        self.skip = skip  # jobs this run drives already

    def pop(self) -> LedgerJob | None:
        if self.put_back_jobs:
            return self.put_back_jobs.popleft()
        return next((j for j in self.ledger_jobs if j.key not in self.skip), None)

    def peek(self) -> bool:
        """Is a job waiting? (It is read, and stays first in line.)"""
        job = self.pop()
        if job is not None:
            self.put_back_jobs.appendleft(job)
        return job is not None

    def put_back(self, jobs: list[LedgerJob]) -> None:
        """Put jobs back at the front, in their order."""
        self.put_back_jobs.extendleft(reversed(jobs))


def _timestamp(iso: str | None) -> float | None:
    if not iso:
        return None
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _answer_named(held: dict[str, Any]) -> str:
    """An answer held for the ledger, in words: `task T of c/j`."""
    what = "task" if held["kind"] == "created" else "the completion of task"
    return f"{what} {held['task_id']} of {held['campaign']}/{held['job_id']}"

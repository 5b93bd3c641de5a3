"""The scheduler: one runner's loop, taking a ledger's unfinished jobs to an end with at
most N tasks in flight per key, beside any other runner on the ledger: the ledger
arbitrates between them (ledger/claims.py), this loop only asks it (PRODUCT.md §6).

Its rooms: submit.py (claim, send, record one submission), follow.py (poll one task to
its end), writer.py (ledger writes that must not fail), driving.py (the shared state).

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
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from batchgen import catalog
from batchgen.arbitration import beat_every
from batchgen.client import Client
from batchgen.driving import AuthFailed, Ended, KeySlots, Settings, Summary
from batchgen.errors import LedgerWriteFailed
from batchgen.follow import Following
from batchgen.ledger import Ledger, LedgerJob
from batchgen.ledger.scheduling import observed_times
from batchgen.pacing import Follow, Key, Learned, eta_seconds
from batchgen.submit import Submitting
from batchgen.writer import WRITE_WAIT, Abandoned, LedgerWriter, Reporter

__all__ = ["AuthFailed", "Ended", "KeySlots", "Scheduler", "Settings", "Summary"]


class Scheduler(Submitting, Following):
    """One runner: takes the ledger's unfinished jobs to an end with the keys it is given,
    sharing them with any other runner on the ledger (the ledger arbitrates)."""

    def __init__(
        self,
        ledger: Ledger,
        client: Client | dict[str | None, Client],
        settings: Settings,
        report: Reporter = lambda job, text: None,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
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
        self.writer = LedgerWriter(ledger, report, self.halt_all, self.halt_submits, clock)
        self._refused = 0  # 429s since the last summary line
        self._refused_since: float | None = None
        self._refused_reported: float | None = None
        self.beat_every = beat_every(settings.lease)
        self.next_beat = 0.0  # monotonic time of the next heartbeat and look for orphans
        self.waiting_on_late = 0  # tasks of our keys whose runner is late (not yet dead)
        # Generation times learned from tasks a process followed from submission to
        # completion (the ledger's history, then this run's), and which ways of reading
        # progress have held per model: what pacing and the ETA rest on.
        recent = ledger.recent_observations(ledger.RECENT_TASKS)
        self.learned = Learned(self._typical_seconds, observed_times(recent))
        # Several runners learn from each other: the times other runners record are added
        # as they appear in the ledger (those read above, or seen since, count once).
        self.learned_ids = {row[0] for row in recent}
        self.learn_every = max(1.0, 5 * settings.poll_interval)
        self.next_learn = 0.0
        self.following: dict[tuple[str, str], tuple[Key, Follow]] = {}  # tasks being polled
        self.sent_at: dict[tuple[str, str], float] = {}  # job -> when its last submit left

    async def run(self, campaigns: list[str] | None = None) -> Summary:
        labels = [slots.label for slots in self.keys.values()]
        self.runner_id = await self.writer.record(
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
                self.writer.try_once(partial(self.ledger.unregister_runner, self.runner_id))

    async def _run(self, campaigns: list[str] | None) -> Summary:
        try:
            await self._take_over(campaigns)
        except Abandoned:
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
                    # Cancelled: taken over by another runner while this one was paused.
                    ended = Ended.TAKEN if task.cancelled() else task.result()  # bugs surface
                    if ended is Ended.REQUEUED:
                        deferred.append(job)
                    elif ended is Ended.BUDGET:
                        over_budget.append(job)
                    elif ended is Ended.NO_SLOT:
                        slots.full_until = self.clock() + self._recheck
                        pending.put_back([job])
                await self._beat(campaigns)
                pending.put_back(deferred + over_budget)  # a refund may have made room
                deferred.clear()
                over_budget.clear()
            self.summary.budget_blocked = {j.key for j in over_budget}
            await self.writer.record(
                lambda: self.ledger.set_reason(sorted(self.summary.budget_blocked), "budget")
            )
        except Abandoned:
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
        until = self.clock() + self._recheck
        if self.in_flight:
            return max(0.0, min(self.next_beat, until) - self.clock())
        usable = [k for k in self.keys.values() if k.out is None]
        if usable and all(k.full_until > self.clock() for k in usable) and pending.peek():
            return self._recheck
        if any(self.ledger.in_flight_anywhere(c) for c in {j.campaign for j in over_budget}):
            return self._recheck
        if self.waiting_on_late:
            return self._recheck
        return None

    async def _beat(self, campaigns: list[str] | None) -> None:
        """Every `beat_every` seconds: the heartbeat, and a look for orphans (a dead runner's
        tasks of this runner's keys, and its unanswered requests), which this one takes.
        Every `learn_every` seconds: the generation times other runners saw."""
        if self.clock() >= self.next_learn:
            self.next_learn = self.clock() + self.learn_every
            self._learn_from_others()
        if self.clock() < self.next_beat:
            return
        self.next_beat = self.clock() + self.beat_every
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
        except Abandoned:
            pass

    def _learn_from_others(self) -> None:
        for attempt, model, duration, seconds, runner in self.ledger.recent_observations(200):
            if attempt in self.learned_ids:
                continue
            self.learned_ids.add(attempt)
            if runner != self.runner_id:  # its own were learned as they completed
                self.learned.durations.add((model, duration), seconds)

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
        takeover = await self.writer.record(
            partial(self.ledger.take_over, self.runner_id, campaigns)
        )
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
            if adopted:
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
        """The key to submit the next job with: the least busy of those still submitting
        that has a slot free, here and in the ledger. The ledger's count is only read
        here (a read never waits for a writer): a claim bound to fail, a write, is spared,
        and other runners' writes are not held up by it. The claim itself decides."""
        now = self.clock()
        usable = [k for k in self.keys.values() if k.out is None and k.full_until <= now]
        for slots in sorted(usable, key=lambda k: k.busy):
            if slots.busy >= self.settings.concurrency:
                return None  # the least busy is full here: so is every other
            if self.ledger.key_in_flight(slots.label) < self.settings.concurrency:
                return slots
            slots.full_until = now + self._recheck  # other runners fill it
        return None

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
        except Abandoned:
            return Ended.DONE

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

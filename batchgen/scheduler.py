"""The scheduler: takes a ledger's unfinished jobs to an end, at most N tasks in flight.

Each job is driven by one coroutine that holds a slot from its first submission until
its task ends (resubmissions after a failed task stay in the slot). The ledger is
written before every request and right after every answer, so a kill at any moment
leaves a state `resume` can continue from without submitting a recorded task again.
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

from batchgen import catalog
from batchgen.client import Client
from batchgen.ledger import Ledger, LedgerJob
from batchgen.outcomes import Poll, Submit, classify_poll, classify_submit
from batchgen.pacing import Follow, Key, Learned, Started, backoff, eta_seconds

SLOT_WAIT_CAP = 30.0  # longest wait between two submissions refused with 429
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
}


@dataclass(frozen=True)
class Settings:
    concurrency: int = 3
    poll_interval: float = 5.0
    retry_delay: float = 2.0
    max_attempts: int = 4
    on_unknown: str = "resubmit"  # or "hold"


class AuthFailed(Exception):
    """The service refused the API key (401)."""


@dataclass
class Summary:
    """How a run ended, for the exit code and the closing lines."""

    stopped_for: str | None = None  # balance | unreachable | interrupted | auth
    budget_blocked: set[tuple[str, str]] = field(default_factory=set)
    message: str | None = None


Reporter = Callable[[LedgerJob | None, str], None]


class Scheduler:
    # Called with a name at each point where a crash matters (intent_committed,
    # submit_answered, task_id_committed, poll_answered). A no-op in normal runs; the crash
    # tests replace it to SIGKILL the process exactly there.
    checkpoint: Callable[[str], None] = staticmethod(lambda name: None)

    def __init__(
        self,
        ledger: Ledger,
        client: Client,
        settings: Settings,
        report: Reporter = lambda job, text: None,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        on_completed: Callable[[LedgerJob], None] | None = None,
    ):
        self.ledger = ledger
        self.client = client
        self.settings = settings
        self.report = report
        self.rng = rng or random.Random()
        self.clock = clock
        self.on_completed = on_completed
        self.catalog = catalog.load()
        self.summary = Summary()
        self.in_flight: dict[asyncio.Task[None], LedgerJob] = {}
        self.halt_submits = asyncio.Event()  # balance, unreachable, interrupted
        self.halt_all = asyncio.Event()  # interrupted: stop polling too
        self.waiting_for_budget: set[tuple[str, str]] = set()
        self.key_accepted = False
        self._key_lock = asyncio.Lock()
        # Generation times learned from tasks a process followed from submission to
        # completion (the ledger's history, then this run's), and which ways of reading
        # progress have held per model: what pacing and the ETA rest on.
        self.learned = Learned(self._typical_seconds, ledger.observed_times())
        self.following: dict[tuple[str, str], tuple[Key, Follow]] = {}  # tasks being polled
        self.sent_at: dict[tuple[str, str], float] = {}  # job -> when its last submit left

    # ------------------------------------------------------------------ the loop

    async def run(self, campaigns: list[str] | None = None) -> Summary:
        self._settle_interrupted_submissions(campaigns)
        followed = self.ledger.unfinished_jobs(campaigns, statuses=("running",))
        # A followed job whose task fails is `queued` while its own coroutine submits it
        # again: the queue, read later, must not hand it out a second time.
        pending = _Queue(self.ledger.queued_jobs(campaigns), skip={j.key for j in followed})
        deferred: list[LedgerJob] = []  # over budget for now; tried again when money frees up
        # Already in flight: follow them, whatever the concurrency.
        for job in followed:
            self._start(job)
        try:
            while True:
                room: dict[str, int | None] = {}  # budget left per campaign, this round
                while (
                    len(self.in_flight) < self.settings.concurrency
                    and not self.halt_submits.is_set()
                    and (queued := pending.pop()) is not None
                ):
                    job = queued
                    if job.campaign not in room:
                        room[job.campaign] = self._budget_room(job.campaign)
                    left = room[job.campaign]
                    if left is not None and job.price_micros > left:
                        deferred.append(job)
                        continue
                    if left is not None:
                        room[job.campaign] = left - job.price_micros
                    self._start(job)
                if not self.in_flight:
                    break
                done, _ = await asyncio.wait(self.in_flight, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    job = self.in_flight.pop(task)
                    task.result()  # AuthFailed, and any bug, surfaces here
                    if job.key in self.waiting_for_budget:
                        deferred.append(job)
                self.waiting_for_budget.clear()
                pending.put_back(deferred)  # a refund may have made room
                deferred.clear()
        except BaseException:
            await self._cancel_all()
            raise
        self.summary.budget_blocked = {j.key for j in deferred}
        self.ledger.set_reason(sorted(self.summary.budget_blocked), "budget")
        return self.summary

    def interrupt(self) -> None:
        """SIGINT/SIGTERM: stop submitting and polling; what is in flight stays recorded."""
        self.summary.stopped_for = "interrupted"
        self.halt_submits.set()
        self.halt_all.set()

    async def finish_interrupted(self, grace: float) -> None:
        """Give submissions already on the wire `grace` seconds to be answered, then stop."""
        if self.in_flight:
            await asyncio.wait(self.in_flight, timeout=grace)
        await self._cancel_all()

    def _start(self, job: LedgerJob) -> None:
        self.in_flight[asyncio.get_running_loop().create_task(self._drive(job))] = job

    async def _cancel_all(self) -> None:
        for task in self.in_flight:
            task.cancel()
        if self.in_flight:
            await asyncio.gather(*self.in_flight, return_exceptions=True)
        self.in_flight.clear()

    def _budget_room(self, campaign: str) -> int | None:
        """What the campaign may still commit: budget - (spent + in flight + unknown)."""
        budget = self.ledger.budget_micros(campaign)
        if budget is None:
            return None
        money = self.ledger.money([campaign])
        return budget - money.spent - money.in_flight - money.unknown

    def _settle_interrupted_submissions(self, campaigns: list[str] | None) -> None:
        """A job left `submitting` by a killed process: its request may have left."""
        interrupted = self.ledger.interrupted_submissions(campaigns)
        if not interrupted:
            return
        by_key = {j.key: j for j in self.ledger.unfinished_jobs(campaigns)}
        for attempt_id, campaign, job_id in interrupted:
            job = by_key.get((campaign, job_id))
            if job is not None:
                self._unknown(job, attempt_id, "the process stopped before the answer")

    # ------------------------------------------------------------------ one job

    async def _drive(self, job: LedgerJob) -> None:
        """Take one job to an end: submit it, follow its task, resubmit while allowed."""
        while True:
            if job.status != "running" and not await self._submit(job):
                return
            if not await self._follow(job):
                return

    async def _submit(self, job: LedgerJob) -> bool:
        """Submit until a task is created (True), or the job must wait or has ended."""
        slot_waits = not_sent = 0
        while True:
            if self.halt_submits.is_set():
                return False
            if job.attempts >= self.settings.max_attempts:
                self.ledger.fail_job(job, f"gave up after {job.attempts} attempt(s)")
                self.report(job, "failed: attempts exhausted")
                return False
            room = self._budget_room(job.campaign)
            if room is not None and job.price_micros > room:
                self.waiting_for_budget.add(job.key)
                return False
            model = self.catalog.model(job.model)
            assert model is not None
            async with self._key_check():
                if self.halt_submits.is_set():  # the key was refused while we waited
                    return False
                attempt = self.ledger.begin_attempt(job)
                self.checkpoint("intent_committed")
                self.sent_at[job.key] = self.clock()
                answer = await self.client.submit(model.submit_path, job.request)
                self.checkpoint("submit_answered")
                if answer.status is not None and answer.status != 401:
                    self.key_accepted = True
            outcome = classify_submit(answer)
            action, message = outcome.action, outcome.message
            if action is Submit.CREATED:
                assert outcome.task_id is not None
                self.ledger.attempt_created(job, attempt, outcome.status or 200, outcome.task_id)
                self.checkpoint("task_id_committed")
                self.report(job, f"submitted, task {outcome.task_id}")
                return True
            if action is Submit.UNKNOWN:
                if not self._unknown(job, attempt, message or "no usable answer"):
                    return False
                await self._pause(self._backoff(job.attempts), self.halt_submits)
                continue
            state, words, job_status, reason = CLOSING[action]
            self.ledger.attempt_ended(
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
            if action is Submit.WAIT_FOR_SLOT:
                slot_waits += 1
                delay = outcome.retry_after
                if delay is None:
                    ceiling = min(SLOT_WAIT_CAP, self.settings.retry_delay * 2 ** (slot_waits - 1))
                    delay = ceiling / 2 + self.rng.uniform(0, ceiling / 2)
                await self._pause(delay, self.halt_submits)
            elif action is Submit.NOT_SENT:
                not_sent += 1
                if not_sent >= self.settings.max_attempts:
                    self.summary.message = f"cannot reach the service: {message}"
                    self._halt("unreachable")
                    return False
                await self._pause(self._backoff(not_sent), self.halt_submits)
            elif action is Submit.SERVER_ERROR:
                self.report(job, f"server error on submit ({message}); will retry")
                await self._pause(self._backoff(job.attempts), self.halt_submits)
            elif action is Submit.REJECTED:
                self.report(job, f"failed: rejected by the service: {message}")
                return False
            elif action is Submit.AUTH:
                self._halt("auth")
                raise AuthFailed(message)
            elif action is Submit.BALANCE:
                self.report(job, "balance exhausted: submitting nothing more")
                self._halt("balance")
                return False

    def _unknown(self, job: LedgerJob, attempt: int, message: str) -> bool:
        """Record an attempt of unknown outcome; True when the job may be submitted again."""
        exhausted = job.attempts + 1 >= self.settings.max_attempts
        if self.settings.on_unknown == "hold":
            status = "held"
        else:
            status = "failed" if exhausted else "queued"
        self.ledger.attempt_ended(
            job,
            attempt,
            state="unknown",
            outcome="unknown",
            counted=True,
            job_status=status,
            error=message,
            reason="unknown outcome" if status == "held" else None,
        )
        self.report(job, f"unknown outcome ({message}): {status}")
        return status == "queued"

    async def _follow(self, job: LedgerJob) -> bool:
        """Poll a task to its end; True when the job is to be submitted again."""
        model = self.catalog.model(job.model)
        assert model is not None and job.task_id is not None
        path = model.poll_path(job.task_id)
        key: Key = (job.model, job.duration)
        follow = self._following(job)
        self.following[job.key] = (key, follow)
        try:
            return await self._poll_until_done(job, path, key, follow)
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

    async def _poll_until_done(self, job: LedgerJob, path: str, key: Key, follow: Follow) -> bool:
        progress: int | None = None
        written = -PROGRESS_WRITE_EVERY  # when progress was last written to the ledger
        errors = 0
        while True:
            delay = self.learned.delay(key, follow, self.clock(), self.settings.poll_interval)
            if errors:
                delay = max(delay, self._backoff(errors))
            if await self._pause(delay, self.halt_all):
                return False
            asked = self.clock()
            answer = await self.client.poll(path)
            self.checkpoint("poll_answered")
            outcome = classify_poll(answer)
            if outcome.action is Poll.RUNNING:
                errors = 0
                follow.running(asked, self.clock(), outcome.progress)
                if (
                    outcome.progress is not None
                    and outcome.progress != progress
                    and asked - written >= PROGRESS_WRITE_EVERY
                ):
                    progress, written = outcome.progress, asked
                    self.ledger.task_progress(job, progress)
            elif outcome.action is Poll.COMPLETED:
                observed = self._learn(key, follow, self.clock())
                self.ledger.task_completed(job, list(outcome.result_urls), observed)
                self.report(job, "completed")
                if self.on_completed:
                    self.on_completed(job)
                return False
            elif outcome.action is Poll.FAILED:
                again = job.attempts < self.settings.max_attempts and not self.halt_submits.is_set()
                message = outcome.message or "Generation failed"
                self.ledger.task_failed(job, message, "queued" if again else "failed")
                self.report(
                    job, f"task failed ({message})" + ("; submitting again" if again else "")
                )
                return again
            elif outcome.action is Poll.AUTH:
                self._halt("auth")
                raise AuthFailed(outcome.message)
            else:
                follow.unanswered(asked)
                errors += 1
                if errors in (1, 5) or errors % 20 == 0:
                    self.ledger.log(
                        "poll_error",
                        job.campaign,
                        job.id,
                        task_id=job.task_id,
                        error=outcome.message,
                        count=errors,
                    )

    # ------------------------------------------------------------------ helpers

    @asynccontextmanager
    async def _key_check(self) -> AsyncIterator[None]:
        """Until the service has answered once without 401, submit one job at a time:
        a wrong key then costs one request, and no other job changes state."""
        if self.key_accepted:
            yield
            return
        async with self._key_lock:
            if not self.key_accepted:
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
        return eta_seconds(running, work, self.settings.concurrency)


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

    def put_back(self, jobs: list[LedgerJob]) -> None:
        """Put jobs back at the front, in their order."""
        self.put_back_jobs.extendleft(reversed(jobs))


def _timestamp(iso: str | None) -> float | None:
    if not iso:
        return None
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()

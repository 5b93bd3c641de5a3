"""The scheduler as a state machine (hypothesis): the real `Scheduler` on a real ledger (a
SQLite file, then a PostgreSQL database: a new one for each example), against a fake
okaypic whose every request waits for the test to answer it.

Rules are what the world can do: answer a submit (created, 500, spurious 429, connect
error, lost on the way, or created and then the answer lost), answer a poll (or fail to),
complete or fail a task at the service, let time pass, and crash the process (requests on
the wire may or may not have reached the service) then start a new Scheduler on the same
ledger. Invariants, after every step: at most 3 tasks in flight, no 429 the scheduler
provoked itself, no job lost, no task with a recorded id submitted again, and the
service's charges covered by the ledger's known tasks plus its attempts of unknown outcome.
A request unanswered past the client's whole-request deadline is given up by the client
(a submit then has an unknown outcome, and may still reach the service later).

Time is virtual: the asyncio loop's `time()` is a counter the `advance` rule moves, so
backoffs and poll delays elapse without sleeping, and the loop is run step by step.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from batchgen import follow
from batchgen.client import Client
from batchgen.ledger import Ledger
from batchgen.sandbox.truth import payload_key
from batchgen.scheduler import Scheduler, Settings
from tests import postgres
from tests.builders import PRICE, build_ledger, clips

JOBS = 5
SETTINGS = Settings(concurrency=3, poll_interval=1.0, retry_delay=1.0, max_attempts=4)
LIMIT = 3  # the service's active tasks per key
SUBMIT_FAULTS = (
    "created",
    "created",
    "500",
    "429",
    "connect_error",
    "lost_before",  # the request left and never reached the service
    "dropped_after",  # the task was created, then the connection dropped
    "garbage_after",  # the task was created, the 200 body is unreadable
    "502_after",  # a gateway passed it on, the task was created, 502 came back
)
POLL_FAULTS = ("answer", "answer", "answer", "500", "dropped", "garbage")


class VirtualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Task:
    task_id: str
    job: str  # payload key of the request that created it
    price: int
    state: str = "active"  # active | completed | failed (refunded)
    hidden: bool = False  # created, and its task id never reached the client


@dataclass
class Waiting:
    request: httpx.Request
    future: asyncio.Future[httpx.Response]

    @property
    def is_submit(self) -> bool:
        return self.request.method == "POST"


class FakeOkaypic:
    """The service: tasks, charges and refunds, at most LIMIT active tasks per key, and the
    requests the client has sent that wait for the test to answer them."""

    def __init__(self) -> None:
        self.tasks: dict[str, Task] = {}
        self.waiting: list[Waiting] = []
        self.provoked_429 = 0  # limit hit while no hidden task could explain it
        self.polls_of_unknown_tasks = 0
        # submits the client gave up on (past their deadline): they may still arrive
        self.abandoned: list[httpx.Request] = []

    async def handle(self, request: httpx.Request) -> httpx.Response:
        future: asyncio.Future[httpx.Response] = asyncio.get_running_loop().create_future()
        waiting = Waiting(request, future)
        self.waiting.append(waiting)
        try:
            return await future
        except asyncio.CancelledError:
            if waiting in self.waiting:  # the client's deadline passed, not a crash
                self.waiting.remove(waiting)
                if waiting.is_submit:
                    self.abandoned.append(request)
            raise

    def active(self) -> list[Task]:
        return [t for t in self.tasks.values() if t.state == "active"]

    def net_charged(self) -> int:
        return sum(t.price for t in self.tasks.values() if t.state != "failed")

    def accept(self, request: httpx.Request, hidden: bool, late: bool = False) -> Task | None:
        """Create and charge a task, or None when the key's slots are all taken (429)."""
        if len(self.active()) >= LIMIT:
            if not late and not any(t.hidden for t in self.active()):
                self.provoked_429 += 1
            return None
        payload = json.loads(request.content)
        task = Task(f"task-{len(self.tasks) + 1}", payload_key(payload), PRICE, hidden=hidden)
        self.tasks[task.task_id] = task
        return task

    def answer_submit(self, waiting: Waiting, fault: str) -> None:
        request, future = waiting.request, waiting.future
        self.waiting.remove(waiting)
        if fault == "created":
            task = self.accept(request, hidden=False)
            if task is None:
                future.set_result(httpx.Response(429, json={"error": "Too many tasks"}))
            else:
                body = {"generationId": "g", "taskId": task.task_id, "status": "pending"}
                future.set_result(httpx.Response(200, json=body))
        elif fault == "500":
            future.set_result(httpx.Response(500, json={"error": "Internal server error"}))
        elif fault == "429":
            future.set_result(httpx.Response(429, json={"error": "Too many tasks"}))
        elif fault == "connect_error":
            future.set_exception(httpx.ConnectError("refused", request=request))
        elif fault == "lost_before":
            future.set_exception(httpx.ReadTimeout("timed out", request=request))
        else:
            task = self.accept(request, hidden=True)
            if task is None:
                future.set_result(httpx.Response(429, json={"error": "Too many tasks"}))
            elif fault == "dropped_after":
                future.set_exception(httpx.RemoteProtocolError("hung up", request=request))
            elif fault == "garbage_after":
                future.set_result(httpx.Response(200, content=b'{"taskId": "tas'))
            else:
                future.set_result(httpx.Response(502, text="<html>Bad Gateway</html>"))

    def answer_poll(self, waiting: Waiting, fault: str) -> None:
        request, future = waiting.request, waiting.future
        self.waiting.remove(waiting)
        task = self.tasks.get(request.url.path.rsplit("/", 1)[-1])
        if fault == "500":
            future.set_result(httpx.Response(500, json={"error": "Internal server error"}))
        elif fault == "dropped":
            future.set_exception(httpx.RemoteProtocolError("hung up", request=request))
        elif fault == "garbage":
            future.set_result(httpx.Response(200, content=b'{"status": "comp'))
        elif task is None:
            self.polls_of_unknown_tasks += 1
            future.set_result(httpx.Response(404, json={"error": "Task not found"}))
        elif task.state == "active":
            body = {"status": "processing", "progress": 50, "type": "video"}
            future.set_result(httpx.Response(200, json=body))
        elif task.state == "completed":
            urls = [f"https://cdn.okaypic.test/{task.task_id}.mp4"]
            body = {"status": "completed", "resultUrls": urls, "type": "video"}
            future.set_result(httpx.Response(200, json=body))
        else:
            body = {"status": "failed", "errorMessage": "Generation failed", "type": "video"}
            future.set_result(httpx.Response(200, json=body))

    def crash(self, delivered: bool) -> None:
        """The client died: its submits on the wire reached the service or not; nobody
        will read any answer."""
        for waiting in list(self.waiting):
            if delivered and waiting.is_submit:
                self.accept(waiting.request, hidden=True)
        self.waiting.clear()


async def _spin(rounds: int) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


class SchedulerMachine(RuleBasedStateMachine):
    # Where each example's ledger is: a new SQLite file, or on this cluster a new copy of
    # one database, the ledger of JOBS made once.
    cluster: postgres.Cluster | None = None
    made_once: str | None = None

    def __init__(self) -> None:
        super().__init__()
        self.folder: Path | None = None
        self.path = self.new_ledger()
        self.job_ids = [job.id for job in clips(JOBS)]
        self.clock = VirtualClock()
        self.service = FakeOkaypic()
        self.restarts = 0
        self.start()

    def new_ledger(self) -> Path | str:
        if self.cluster is not None:
            cls = type(self)
            if cls.made_once is None:
                cls.made_once = postgres.new_database(self.cluster)
                build_ledger(cls.made_once, JOBS)
            return postgres.new_database(self.cluster, copy_of=cls.made_once)
        # fsync-heavy (synchronous=FULL): on tmpfs where there is one, for speed only
        shm = Path("/dev/shm")
        self.folder = Path(
            tempfile.mkdtemp(prefix="batchgen-sm-", dir=shm if shm.is_dir() else None)
        )
        path = self.folder / "ledger.db"
        build_ledger(path, JOBS)
        return path

    def drop_ledger(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        elif self.cluster is not None:
            postgres.drop_database(self.cluster, str(self.path))

    # ------------------------------------------------------------------ the process

    def start(self) -> None:
        """A new process: a loop on the virtual clock, a ledger connection, a Scheduler."""
        self.loop = asyncio.new_event_loop()
        self.loop.time = self.clock  # type: ignore[method-assign]
        self.ledger = Ledger(self.path)
        transport = httpx.MockTransport(self.service.handle)
        self.client = Client("https://okaypic.test", "okpk_test", transport=transport)
        self.scheduler = Scheduler(
            self.ledger, self.client, SETTINGS, rng=random.Random(self.restarts), clock=self.clock
        )
        self.run = self.loop.create_task(self.scheduler.run())
        self.settle(resume=False)

    def stop(self) -> None:
        """Let the process go: nothing it does from here can reach the ledger. One process
        plays every runner here, so a runner's death is told as its lease lapsing."""
        with self.ledger.transaction():
            self.ledger.conn.execute("UPDATE runners SET heartbeat_at = '2000-01-01T00:00:00Z'")
        self.ledger.close()
        for task in asyncio.all_tasks(self.loop):
            task.cancel()
        self.loop.run_until_complete(_spin(20))
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()

    def settle(self, resume: bool = True) -> None:
        """Run the loop until every coroutine waits for an answer or a timer; when the run
        has ended with work left (e.g. the service was unreachable), resume once, as a user
        would."""
        self.loop.run_until_complete(_spin(100))
        if self.run.done():
            self.run.result()  # a bug in the scheduler surfaces here
            if resume and self.ledger.unfinished_jobs():
                self.restarts += 1
                self.stop()
                self.start()

    def unfinished(self) -> bool:
        return bool(self.ledger.unfinished_jobs()) or not self.run.done()

    # ------------------------------------------------------------------ rules

    def waiting(self, submits: bool) -> list[Waiting]:
        return [w for w in self.service.waiting if w.is_submit == submits]

    @precondition(lambda self: self.waiting(submits=True))
    @rule(data=st.data(), fault=st.sampled_from(SUBMIT_FAULTS))
    def answer_a_submit(self, data, fault):
        waiting = data.draw(st.sampled_from(self.waiting(submits=True)))
        event(f"submit answered: {fault}")
        self.service.answer_submit(waiting, fault)
        self.settle()

    @precondition(lambda self: self.waiting(submits=False))
    @rule(data=st.data(), fault=st.sampled_from(POLL_FAULTS))
    def answer_a_poll(self, data, fault):
        waiting = data.draw(st.sampled_from(self.waiting(submits=False)))
        event(f"poll answered: {fault}")
        self.service.answer_poll(waiting, fault)
        self.settle()

    def answer_a_submit_with(self, index: int, fault: str) -> None:
        """For scripted examples: answer the index-th waiting submit."""
        self.service.answer_submit(self.waiting(submits=True)[index], fault)
        self.settle()

    def answer_the_poll_of(self, task_id: str, fault: str) -> None:
        """For scripted examples: answer the waiting poll of `task_id`."""
        (waiting,) = [
            w for w in self.waiting(submits=False) if w.request.url.path.endswith(f"/{task_id}")
        ]
        self.service.answer_poll(waiting, fault)
        self.settle()

    @precondition(lambda self: self.service.abandoned)
    @rule(data=st.data())
    def an_abandoned_submit_arrives_after_all(self, data):
        """A submit the client gave up on (its deadline passed) reaches the service."""
        request = data.draw(st.sampled_from(self.service.abandoned))
        self.service.abandoned.remove(request)
        self.service.accept(request, hidden=True, late=True)
        self.settle()

    @precondition(lambda self: self.service.active())
    @rule(data=st.data())
    def complete_a_task(self, data):
        data.draw(st.sampled_from(self.service.active())).state = "completed"

    @precondition(lambda self: self.service.active())
    @rule(data=st.data())
    def fail_a_task(self, data):
        data.draw(st.sampled_from(self.service.active())).state = "failed"  # refunded

    @rule(seconds=st.sampled_from([0.5, 1.0, 5.0, 30.0, 61.0]))
    def let_time_pass(self, seconds):
        self.clock.now += seconds
        self.settle()

    @rule(delivered=st.booleans())
    def crash_and_restart(self, delivered):
        busy = self.rows("SELECT status FROM jobs WHERE status IN ('submitting', 'running')")
        event(f"crash: {sorted(Counter(j['status'] for j in busy).items())}, {delivered=}")
        self.crash(delivered)

    def crash(self, delivered: bool) -> None:
        self.service.crash(delivered)
        self.stop()
        self.restarts += 1
        self.start()

    # ------------------------------------------------------------------ invariants

    def rows(self, sql: str) -> list[dict]:
        return self.ledger.query(sql)

    @invariant()
    def at_most_three_in_flight(self):
        assert len(self.service.active()) <= LIMIT
        assert self.service.provoked_429 == 0, "a 429 the scheduler provoked on its own key"
        assert len(self.scheduler.in_flight) <= SETTINGS.concurrency
        busy = self.rows("SELECT id FROM jobs WHERE status IN ('submitting', 'running')")
        assert len(busy) <= SETTINGS.concurrency
        assert len(self.waiting(submits=True)) <= SETTINGS.concurrency

    @invariant()
    def no_job_lost(self):
        jobs = self.rows("SELECT * FROM jobs")
        assert sorted(j["id"] for j in jobs) == sorted(self.job_ids)
        for job in jobs:
            if job["status"] == "running":
                assert job["task_id"] in self.service.tasks, job
            if job["status"] == "failed":
                assert job["last_error"], job
            assert job["status"] != "held", "held only with --on-unknown hold"
        assert self.service.polls_of_unknown_tasks == 0, "polled a task the service never gave"

    @invariant()
    def no_recorded_task_submitted_again(self):
        """A job is submitted again only after its recorded task failed at the service, or
        after an attempt of unknown outcome (which created at most one task)."""
        attempts = self.rows("SELECT * FROM attempts ORDER BY id")
        task_ids = [a["task_id"] for a in attempts if a["task_id"]]
        assert len(task_ids) == len(set(task_ids)), "one task id recorded twice"
        for attempt in attempts:
            if attempt["task_id"] is None:
                continue
            task = self.service.tasks[attempt["task_id"]]
            assert not task.hidden, "the ledger has a task id the service never gave"
            if attempt["state"] in ("completed", "failed"):
                assert task.state == attempt["state"], (attempt, task)
        by_job: dict[str, list[dict]] = {}
        for attempt in attempts:
            if attempt["task_id"]:
                by_job.setdefault(attempt["job_id"], []).append(attempt)
        for job_id, recorded in by_job.items():
            for earlier in recorded[:-1]:
                assert earlier["state"] == "failed", (
                    f"{job_id}: task {earlier['task_id']} ({earlier['state']}) was followed "
                    f"by another submission"
                )
        job_of = {
            payload_key(json.loads(j["request"])): j["id"] for j in self.rows("SELECT * FROM jobs")
        }
        at_service = Counter(job_of[t.job] for t in self.service.tasks.values())
        recorded_n = Counter(a["job_id"] for a in attempts if a["task_id"])
        maybe = Counter(a["job_id"] for a in attempts if a["state"] in ("unknown", "sending"))
        for job_id in self.job_ids:
            assert recorded_n[job_id] <= at_service[job_id] <= recorded_n[job_id] + maybe[job_id], (
                job_id,
                at_service[job_id],
                recorded_n[job_id],
                maybe[job_id],
            )

    @invariant()
    def charges_are_known_tasks_plus_unknown(self):
        money = self.ledger.money()
        completed = {
            a["task_id"]
            for a in self.rows("SELECT task_id FROM attempts WHERE state = 'completed'")
        }
        assert money.spent == sum(self.service.tasks[t].price for t in completed)
        net = self.service.net_charged()
        assert money.spent <= net <= money.spent + money.in_flight + money.unknown, (money, net)

    # ------------------------------------------------------------------ the end

    def teardown(self) -> None:
        """Drain: a healthy service and time, until every job has ended; none is lost."""
        try:
            for _ in range(200):
                if not self.unfinished():
                    break
                for waiting in list(self.service.waiting):
                    if waiting.is_submit:
                        self.service.answer_submit(waiting, "created")
                    else:
                        self.service.answer_poll(waiting, "answer")
                for task in self.service.active():
                    task.state = "completed"
                self.clock.now += 61
                self.settle()
            assert not self.unfinished(), "the batch never ended"
            statuses = Counter(j["status"] for j in self.rows("SELECT status FROM jobs"))
            assert set(statuses) <= {"completed", "failed"}, statuses
            self.at_most_three_in_flight()
            self.no_job_lost()
            self.no_recorded_task_submitted_again()
            self.charges_are_known_tasks_plus_unknown()
        finally:
            self.stop()
            self.drop_ledger()


EXAMPLES = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def on_ledgers_of(kind: str, request: pytest.FixtureRequest) -> type[SchedulerMachine]:
    """The machine, its ledgers SQLite files or databases of the session's PostgreSQL."""
    if kind == "sqlite":
        return SchedulerMachine
    cluster = request.getfixturevalue("postgres_cluster")
    machine = type("SchedulerMachineOnPostgres", (SchedulerMachine,), {"cluster": cluster})

    def drop_the_ledger_made_once() -> None:
        if machine.made_once is not None:
            postgres.drop_database(cluster, machine.made_once)

    request.addfinalizer(drop_the_ledger_made_once)
    return machine


KINDS = pytest.mark.parametrize("kind", ["sqlite", "postgresql"])


class WallClockAtItsEpoch:
    """The wall clock as the scheduler reads the age of a task it takes over from the
    ledger's stamp (batchgen/follow.py): at 0, so such a task is as new as when it was
    taken over. The seconds the test really takes (more on PostgreSQL, or on a busy
    machine) must not decide when it is polled: time here is the virtual clock's."""

    @staticmethod
    def time() -> float:
        return 0.0


@pytest.fixture(autouse=True)
def virtual_time_only(monkeypatch):
    monkeypatch.setattr(follow, "time", WallClockAtItsEpoch)


@KINDS
def test_the_scheduler_keeps_its_promises_whatever_the_service_and_time_do(kind, request):
    run_state_machine_as_test(on_ledgers_of(kind, request), settings=EXAMPLES)


@KINDS
def test_a_followed_job_whose_task_failed_is_driven_once_when_the_queue_is_read(kind, request):
    """Found by the machine: on resume, jobs already running are followed at once and the
    queue is read later, when a slot frees. A followed job whose task failed is `queued`
    while its own coroutine resubmits it (here: in backoff after a 500), and must not be
    taken from the queue a second time: two live tasks for one job is a double charge."""
    machine = on_ledgers_of(kind, request)()
    try:
        for _ in range(3):  # clip-1, then clip-2 and clip-3 once the key is known good
            machine.answer_a_submit_with(0, "created")
        machine.crash(delivered=False)  # resume follows the 3 running tasks
        machine.service.tasks["task-1"].state = "failed"
        machine.let_time_pass(1.0)
        machine.answer_the_poll_of("task-1", "answer")  # failed: clip-1 is submitted again
        machine.answer_a_submit_with(0, "500")  # ... and waits, queued, to retry
        machine.service.tasks["task-2"].state = "completed"
        machine.answer_the_poll_of("task-2", "answer")  # a slot frees: the queue is read
        for _ in range(6):
            machine.let_time_pass(5.0)
            while machine.waiting(submits=True):
                machine.answer_a_submit_with(0, "created")
            machine.no_recorded_task_submitted_again()
        submitted = Counter(
            json.loads(w.request.content)["prompt"] for w in machine.service.waiting if w.is_submit
        )
        assert all(n == 1 for n in submitted.values()), submitted
    finally:
        machine.teardown()

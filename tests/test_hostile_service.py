"""A hostile service through the real `run`/`resume` (PRODUCT.md §2, §6, §10): huge bodies,
wrong types, task ids that are not strings, resultUrls that are not URLs, non-JSON, HTML
error pages, "completed" without urls, negative/NaN progress; task ids with odd or
control characters, tasks that never resolve, endless 429s with a Retry-After of 0,
redirects, answers and result files that trickle in. Each is a clear error, a retry or a
held job, never a traceback, a hang or a duplicate charge.

The hostile answers come from a wrapped sandbox, so the service's truth still says what
really happened: a hostile submit answer "after the task was created" is served only when
the sandbox really created (and charged) the task; a hostile poll answer stands in for the
real one, and the task goes on. Each test runs on a SQLite file and on a PostgreSQL database.
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from batchgen.ledger import Ledger
from batchgen.sandbox import Response, serve
from tests.builders import PRICE, build_ledger
from tests.crashing import audit, query
from tests.e2e import (
    FAST,
    StderrWatch,
    batchgen,
    command_env,
    grok_batch,
    on_sandbox,
    spawn,
    status_json,
)
from tests.faulty import run_faulty
from tests.hostile import SCALE, HostileSandbox, as_json, html, raw, redirect, trickle

HUGE = 5_000_000  # bytes: five times what the client reads of an answer


def run_against(sim: HostileSandbox, ledger: Path | str, job_ids: list[str], *args: str) -> Any:
    served = serve(sim)
    try:
        return batchgen(
            "resume", *FAST, *args, ledger=ledger, base_url=served.base_url, key="okpk_sandbox_demo"
        )
    finally:
        served.stop()


def no_traceback(result: Any) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert "Traceback" not in result.stdout


# ---------------------------------------------------------------------- submit answers

UNUSABLE_AFTER_CREATE = {
    "huge body": raw(b'{"taskId": "' + b"a" * HUGE + b'"}', content_type="application/json"),
    "task id is a number": as_json({"generationId": "g", "taskId": 12345, "status": "pending"}),
    "task id is null": as_json({"taskId": None, "status": "pending"}),
    "task id is a list": as_json({"taskId": ["t-1"], "status": "pending"}),
    "task id is an object": as_json({"taskId": {"id": "t-1"}, "status": "pending"}),
    "task id is empty": as_json({"taskId": "", "status": "pending"}),
    "task id is 5000 characters": as_json({"taskId": "t" * 5000, "status": "pending"}),
    "not JSON": raw(b"OK"),
    "HTML 502 page": html(502),
    "completed and no task id": as_json({"status": "completed"}),
    "a JSON array": as_json(["taskId", "t-1"]),
    "empty 200": raw(b""),
}


def test_unusable_answers_after_a_task_was_created_are_unknown_attempts_covering_each_charge(
    ledger_at,
):
    """Each answer leaves the task's existence unknown (§6 table): an unknown attempt with
    its possible cost, then a resubmission; every job ends completed, and what the service
    charged for the tasks batchgen never heard of is exactly the unknown amount."""
    ledger = ledger_at
    job_ids = build_ledger(ledger, 6)
    # short tasks: the tasks nobody heard of hold slots (429s) until they end
    sim = HostileSandbox(submits=list(UNUSABLE_AFTER_CREATE.values()), time_scale=SCALE / 4)
    result = run_against(sim, ledger, job_ids, "--max-attempts", "8")
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    hostile = len(UNUSABLE_AFTER_CREATE)
    assert sim.served["submit"] == hostile
    truth = sim.truth()
    checked = audit(ledger, truth, job_ids)
    assert sum(checked.unknown_attempts.values()) == hostile
    assert sum(checked.orphans.values()) == hostile
    assert checked.unknown == hostile * PRICE
    assert truth.net_charged_micros() == checked.spent + checked.unknown
    task_ids = {r["task_id"] for r in query(ledger, "SELECT task_id FROM attempts")}
    assert task_ids <= {s.task_id for s in truth.submissions} | {None}


def test_a_service_that_never_answers_usably_fails_each_job_with_a_clear_reason(ledger_at):
    ledger = ledger_at
    job_ids = build_ledger(ledger, 2)
    sim = HostileSandbox(submits=[html(502)] * 4)
    result = run_against(sim, ledger, job_ids, "--max-attempts", "2")
    assert result.returncode == 1, result.stderr
    no_traceback(result)
    assert "failed" in result.stderr
    truth = sim.truth()
    checked = audit(ledger, truth, job_ids, all_completed=False)
    assert checked.statuses == {"failed": 2}
    for job in query(ledger, "SELECT * FROM jobs"):
        assert "502" in job["last_error"] and "<html" not in job["last_error"].lower(), job
    assert checked.spent == 0
    assert truth.net_charged_micros() == checked.unknown == 4 * PRICE


REFUSED_BEFORE_THE_SERVICE = [
    html(503),
    html(500),
    raw(b"Internal Server Error", 500),
    as_json({"error": 12345}, 500),
    raw(b"slow down", 429)._replace(headers={"Retry-After": "soon"}),
    raw(b"slow down", 429)._replace(headers={"Retry-After": "-5"}),
    as_json({"error": "x" * HUGE}, 503),
]


def test_error_pages_from_in_front_of_the_service_are_retried_and_charge_nothing(ledger_at):
    ledger = ledger_at
    job_ids = build_ledger(ledger, 3)
    sim = HostileSandbox(refusals=REFUSED_BEFORE_THE_SERVICE)
    result = run_against(sim, ledger, job_ids, "--max-attempts", "8")
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    assert sim.served["refusal"] == len(REFUSED_BEFORE_THE_SERVICE)
    truth = sim.truth()
    checked = audit(ledger, truth, job_ids)
    assert checked.unknown_attempts == {} and checked.orphans == {}
    assert truth.duplicate_payloads() == {}
    assert truth.net_charged_micros() == checked.spent == 3 * PRICE
    errors = query(ledger, "SELECT * FROM attempts WHERE state = 'error'")
    assert len(errors) == 5, "each 5xx is a counted attempt that created nothing"
    assert all(e["cost_micro_usd"] == 0 for e in errors)


# ---------------------------------------------------------------------- poll answers

UNUSABLE_POLLS = {
    "completed without urls": [
        as_json({"status": "completed", "type": "video"}),
        as_json({"status": "completed", "resultUrls": []}),
        as_json({"status": "completed", "resultUrls": "https://cdn.example.com/v.mp4"}),
        as_json({"status": "completed", "resultUrls": [42]}),
        as_json({"status": "completed", "resultUrls": None}),
    ],
    "result urls that are not URLs": [
        as_json({"status": "completed", "resultUrls": ["javascript:alert(1)"]}),
        as_json({"status": "completed", "resultUrls": ["file:///etc/passwd"]}),
        as_json({"status": "completed", "resultUrls": ["/relative/v.mp4"]}),
        as_json({"status": "completed", "resultUrls": ["not a url"]}),
        as_json({"status": "completed", "resultUrls": ["https://x/" + "a" * 5000]}),
        as_json({"status": "completed", "resultUrls": ["ftp://cdn.example.com/v.mp4"]}),
    ],
    "wrong types": [
        as_json({"status": 7}),
        as_json({"status": ["completed"]}),
        as_json({"status": "finished"}),
        as_json({"status": None, "progress": 50}),
        as_json(None),
        as_json([]),
        as_json("completed"),
        as_json({}),
    ],
    "not JSON, HTML, huge": [
        raw(b"OK"),
        html(502),
        html(500),
        html(200),
        raw(b""),
        raw(bytes(range(256)) * 4, content_type="application/octet-stream"),
        raw(
            b'{"status": "completed", "resultUrls": ["https://cdn.example.com/'
            + b"a" * HUGE
            + b'.mp4"]}',
            content_type="application/json",
        ),
    ],
}


@pytest.mark.parametrize("family", sorted(UNUSABLE_POLLS))
def test_unusable_poll_answers_are_polled_again_never_resubmitted(ledger_at, tmp_path, family):
    answers = UNUSABLE_POLLS[family]
    ledger = ledger_at
    manifest = grok_batch(tmp_path / "m.yaml", 3, campaign="c")
    job_ids = [f"clip-{n}" for n in (1, 2, 3)]
    per_task = -(-len(answers) // 3)  # every answer served at least once over 3 tasks
    sim = HostileSandbox(polls=answers, polls_per_task=per_task)
    served = serve(sim)
    try:
        result = batchgen(
            "run",
            str(manifest),
            *FAST,
            ledger=ledger,
            base_url=served.base_url,
            key="okpk_sandbox_demo",
        )
    finally:
        served.stop()
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    assert sim.served["poll"] >= len(answers)
    truth = sim.truth()
    checked = audit(ledger, truth, job_ids)
    assert checked.unknown_attempts == {} and checked.orphans == {}
    assert truth.duplicate_payloads() == {}, "a poll error caused a resubmission"
    assert truth.net_charged_micros() == checked.spent == 3 * PRICE
    for job in query(ledger, "SELECT * FROM jobs"):
        assert json.loads(job["result_urls"]) == [
            f"{served.base_url}/files/{job['task_id']}/0.mp4"
        ], "only the service's real result URL is kept"


def test_negative_nan_and_odd_progress_is_ignored_and_never_stored(ledger_at):
    ledger = ledger_at
    job_ids = build_ledger(ledger, 6)
    odd = [-5, float("nan"), float("inf"), float("-inf"), 1e308, "50", True, [50], None, 250]
    sim = HostileSandbox(progress=odd, ledger=ledger)
    result = run_against(sim, ledger, job_ids)
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    assert sim.served["progress"] >= len(odd), "not every odd value was served"
    assert sim.seen_progress, "the ledger was never read during the run"
    for value in sim.seen_progress:
        assert value is None or (isinstance(value, int) and 0 <= value <= 100), value
    truth = sim.truth()
    checked = audit(ledger, truth, job_ids)
    assert truth.duplicate_payloads() == {}
    assert truth.net_charged_micros() == checked.spent == 6 * PRICE


# ---------------------------------------------------------------------- task ids (§2)


def with_task_id(task_id: str) -> Callable[[Response], Response]:
    """The real answer to a submit, with `task_id` in place of the real one."""

    def answer(real: Response) -> Response:
        assert isinstance(real.body, bytes)
        return as_json({**json.loads(real.body), "taskId": task_id})

    return answer


ODD_BUT_USABLE = ["../../generate", "x?admin=1", "..", "a b#c/d", "tâche-é"]


def test_odd_task_ids_are_polled_as_one_escaped_segment_and_reach_no_other_endpoint(ledger_at):
    """Ids like `../../generate` or `x?admin=1` are polled at /api/video/tasks/<one escaped
    segment>: no request, and so no bearer token, reaches any other endpoint; each task is
    followed to its completion and paid once."""
    ledger = ledger_at
    job_ids = build_ledger(ledger, len(ODD_BUT_USABLE))
    sim = HostileSandbox()

    def odd_id(n: int, task_id: str, real: Response) -> Response:
        odd = ODD_BUT_USABLE[n - 1]
        sim.aliases[odd] = task_id
        return with_task_id(odd)(real)

    sim.on_created = odd_id
    result = run_against(sim, ledger, job_ids)
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    truth = sim.truth()
    checked = audit_aliased(ledger, truth, job_ids, sim.aliases)
    assert checked == len(ODD_BUT_USABLE) * PRICE == truth.net_charged_micros()
    assert truth.duplicate_payloads() == {}
    # each id percent-escaped whole; a dots-only one ("..") escaped too, or URL
    # normalization would resolve it to the parent path
    escaped = {
        quote(odd, safe="") if odd.strip(".") else odd.replace(".", "%2E") for odd in ODD_BUT_USABLE
    }
    for method, target in sim.requests:
        if method == "POST":
            assert target == "/api/video/generate", target
        elif target.startswith("/files/"):  # a result file saved as its task completed
            continue
        else:
            prefix, _, segment = target.rpartition("/")
            assert prefix == "/api/video/tasks" and segment in escaped, target
    assert truth.count("other", 404) == 0, "a request reached another endpoint"


def audit_aliased(ledger: Path, truth: Any, job_ids: list[str], aliases: dict[str, str]) -> int:
    """The ledger records the odd ids the service gave; each is a real, completed task of
    its own job, recorded once. Returns the ledger's spend."""
    jobs = {j["id"]: j for j in query(ledger, "SELECT * FROM jobs")}
    assert sorted(jobs) == sorted(job_ids)
    real = {s.task_id: s for s in truth.submissions}
    for job in jobs.values():
        assert job["status"] == "completed", job
        task = real[aliases[job["task_id"]]]
        assert json.loads(job["request"])["prompt"] == task.payload["prompt"]
    attempts = query(ledger, "SELECT * FROM attempts")
    assert sorted(a["task_id"] for a in attempts) == sorted(aliases)
    return int(sum(a["cost_micro_usd"] for a in attempts if a["state"] == "completed"))


UNUSABLE_TASK_IDS = ["a\nb", "\x00", "tab\there", "del\x7f", "t" * 201, "\ud800", "   "]


def test_task_ids_with_control_characters_or_too_long_are_unknown_outcomes_never_a_crash(ledger_at):
    """Each is an unusable answer (§2): an unknown attempt covering the task the service
    did create, then a resubmission; no poll ever crashes on it."""
    ledger = ledger_at
    job_ids = build_ledger(ledger, 4)
    hostile = [
        raw(json.dumps({"taskId": t, "status": "pending"}).encode()) for t in UNUSABLE_TASK_IDS
    ]
    sim = HostileSandbox(submits=hostile, time_scale=SCALE / 4)
    result = run_against(sim, ledger, job_ids, "--max-attempts", "8")
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    assert sim.served["submit"] == len(UNUSABLE_TASK_IDS)
    truth = sim.truth()
    checked = audit(ledger, truth, job_ids)
    assert sum(checked.unknown_attempts.values()) == len(UNUSABLE_TASK_IDS)
    assert truth.net_charged_micros() == checked.spent + checked.unknown
    errors = [a["error"] for a in query(ledger, "SELECT error FROM attempts WHERE state='unknown'")]
    assert all("unusable task id" in e for e in errors), errors


def test_a_ledger_already_holding_an_unusable_task_id_does_not_wedge_resume(ledger_at):
    """An older batchgen recorded the id "a\\nb": resume settles that attempt as an unknown
    outcome (its possible cost kept) instead of crashing on every poll, and finishes."""
    ledger = ledger_at
    job_ids = build_ledger(ledger, 3)
    sim = HostileSandbox()
    served = serve(sim)
    try:
        old = Ledger(ledger)
        job = old.unfinished_jobs()[0]
        answer = httpx.post(
            served.base_url + "/api/video/generate",
            json=job.request,
            headers={"Authorization": "Bearer okpk_sandbox_demo"},
        )
        assert answer.status_code == 200  # the service created (and charged) the task
        attempt = old.begin_attempt(job)
        old.attempt_created(job, attempt, 200, "a\nb")  # ... and answered an odd id
        old.close()
        for _ in range(2):  # the first resume settles it; later ones are not wedged either
            result = batchgen(
                "resume", *FAST, ledger=ledger, base_url=served.base_url, key="okpk_sandbox_demo"
            )
            assert result.returncode == 0, result.stderr
            no_traceback(result)
    finally:
        served.stop()
    truth = sim.truth()
    checked = audit(ledger, truth, job_ids)
    assert checked.unknown_attempts == Counter({job.id: 1})
    assert checked.orphans == Counter({job.id: 1})
    assert truth.net_charged_micros() == checked.spent + checked.unknown == 4 * PRICE


# ------------------------------------------------------------ tasks that never resolve (§2)

NEVER_RESOLVING = {
    "404 for ever": as_json({"error": "Task not found"}, 404),
    "completed without urls": as_json({"status": "completed", "type": "video"}),
    "a file:// url": as_json({"status": "completed", "resultUrls": ["file:///etc/passwd"]}),
    "101 urls": as_json(
        {"status": "completed", "resultUrls": [f"https://cdn.test/{n}.mp4" for n in range(101)]}
    ),
    '"Completed"': as_json({"status": "Completed", "resultUrls": ["https://cdn.test/v.mp4"]}),
}


def test_tasks_that_never_resolve_are_given_up_as_lost_freeing_their_slots(ledger_at):
    """Five tasks answer nothing usable for ever (one of each kind), and hold all three
    slots: after --lost-after each is `held` (reason lost), its slot freed so the other
    jobs run, its cost unknown (not in flight); the run exits 3 saying so. The next resume
    polls each lost task exactly once more and submits nothing; once they answer, it
    takes them back: every job completes, each task paid once."""
    ledger = ledger_at
    job_ids = build_ledger(ledger, 8)
    hostile_answers = list(NEVER_RESOLVING.values())
    hostile_tasks: dict[str, Response] = {}
    heal = threading.Event()

    def first_five(n: int, task_id: str, real: Response) -> Response:
        if n <= len(hostile_answers):
            hostile_tasks[task_id] = hostile_answers[n - 1]
        return real

    def never_resolving(task_id: str, real: Response) -> Response | None:
        return None if heal.is_set() else hostile_tasks.get(task_id)

    sim = HostileSandbox(on_created=first_five, on_poll=never_resolving)
    served = serve(sim)

    def resume() -> Any:
        return batchgen(
            "resume",
            *FAST,
            "--lost-after",
            "1s",
            ledger=ledger,
            base_url=served.base_url,
            key="okpk_sandbox_demo",
            timeout=90,
        )

    try:
        result = resume()
        assert result.returncode == 3, result.stderr
        no_traceback(result)
        assert "5 job(s) lost" in result.stderr and "retry --unknown" in result.stderr
        lost = query(ledger, "SELECT * FROM jobs WHERE status = 'held'")
        assert {j["reason"] for j in lost} == {"lost"} and len(lost) == 5
        assert {j["task_id"] for j in lost} == set(hostile_tasks)
        assert status_json(ledger)["counts"]["completed"] == 3
        money = status_json(ledger)
        assert (money["in_flight_usd"], money["unknown_usd"]) == ("0.00", "0.50")
        truth = sim.truth()
        checked = audit(ledger, truth, job_ids, all_completed=False)
        assert truth.duplicate_payloads() == {}
        assert truth.net_charged_micros() == checked.spent + checked.unknown == 8 * PRICE
        assert "5 lost task(s)" in batchgen("status", ledger=ledger).stdout

        polls_before = dict(sim.truth().polls)
        again = resume()  # still nothing usable: polled once more each, nothing submitted
        assert again.returncode == 3, again.stderr
        assert len(sim.truth().submissions) == 8
        polls_after = sim.truth().polls
        for task_id in hostile_tasks:
            assert polls_after[task_id] - polls_before[task_id] == 1, "not polled once more"

        heal.set()  # the tasks answer again: taken back and completed, not resubmitted
        healed = resume()
        assert healed.returncode == 0, healed.stderr
        assert "answers again" in healed.stderr
    finally:
        served.stop()
    truth = sim.truth()
    checked = audit(ledger, truth, job_ids)
    assert truth.duplicate_payloads() == {}
    assert checked.spent == truth.net_charged_micros() == 8 * PRICE


def first_draws(seed: int, knob: str, n: int, rate: float) -> list[bool]:
    """The sandbox's first n fault decisions for `knob` on submits (sandbox/faults.py)."""
    stream = random.Random(f"batchgen-sandbox/{seed}/submit/{knob}")
    return [stream.random() < rate for _ in range(n)]


def test_vanished_tasks_are_lost_and_retry_unknown_submits_them_anew(
    make_sandbox, ledger_at, tmp_path
):
    """The sandbox's --vanish-rate: tasks accepted and charged, then 404 for ever. They
    end held (lost), exit 3; `retry --unknown` (a person's decision) submits them anew;
    every charge is accounted for: the lost ones as unknown cost."""
    # a seed whose first 4 submits have 2 vanishing tasks, and the next 2 none
    seed = next(
        s
        for s in range(10_000)
        if sum(first_draws(s, "vanish", 4, 0.5)) == 2
        and not any(first_draws(s, "vanish", 6, 0.5)[4:])
    )
    sandbox = make_sandbox(time_scale=SCALE, vanish_rate=0.5, seed=seed)
    ledger = ledger_at
    manifest = grok_batch(tmp_path / "m.yaml", 4, campaign="c")
    first = on_sandbox(sandbox, "run", str(manifest), *FAST, "--lost-after", "1", ledger=ledger)
    assert first.returncode == 3, first.stderr
    assert "2 job(s) lost" in first.stderr
    # The reason said once, the time rounded: not `lost: lost: no usable answer for 1.03716s`
    assert "lost: lost:" not in first.stderr
    said = re.findall(r"held: c/clip-\d: lost: no usable answer for (\S+) ", first.stderr)
    assert len(said) == 2 and all(re.fullmatch(r"\d+(\.\d)?s|\d+m", t) for t in said), said
    vanished = {s.task_id for s in sandbox.truth().submissions if s.vanished}
    assert len(vanished) == 2
    held = query(ledger, "SELECT task_id, reason FROM jobs WHERE status = 'held'")
    assert {(h["task_id"], h["reason"]) for h in held} == {(t, "lost") for t in vanished}
    retried = batchgen("retry", "--unknown", ledger=ledger)
    assert retried.returncode == 0 and "2 job(s) queued again" in retried.stdout
    result = on_sandbox(sandbox, "resume", *FAST, "--lost-after", "1", ledger=ledger)
    assert result.returncode == 0, result.stderr
    truth = sandbox.truth()
    job_ids = [f"clip-{n}" for n in range(1, 5)]
    checked = audit(ledger, truth, job_ids)
    assert len(truth.submissions) == 6
    assert checked.unknown == 2 * PRICE and checked.spent == 4 * PRICE
    assert truth.net_charged_micros() == checked.spent + checked.unknown


# ---------------------------------------------------------------- 429 for ever, 3xx (§2)


@pytest.mark.parametrize("retry_after", ["0", "-1", "Wed, 21 Oct 2015 07:28:00 GMT", "soon"])
def test_endless_429s_with_an_unusable_retry_after_back_off_and_show_in_the_log(
    make_sandbox, ledger_at, tmp_path, retry_after
):
    """Every submit answers 429 with Retry-After 0 (or -1, a date, garbage): batchgen's own
    backoff paces the retries (a few a second at first, fewer and fewer), and the log says
    now and then how many were refused, not one line per 429. (How each Retry-After is
    read is test_outcomes' and the wait test_pacing's, case by case: this is the real run.)"""
    sandbox = make_sandbox(time_scale=SCALE, spurious_429_rate=1.0, retry_after=retry_after)
    ledger = ledger_at
    manifest = grok_batch(tmp_path / "m.yaml", 3)
    process = spawn(
        "run",
        str(manifest),
        *FAST,
        ledger=ledger,
        base_url=sandbox.base_url,
        key=sandbox.key,
        stdout=subprocess.DEVNULL,
    )
    watch = StderrWatch(process)
    try:
        watch.wait_for_line("with 429")  # the first summary, after 10 refusals
        before = sandbox.truth().count("POST /api/video/generate", 429)
        # A window to count the refusals in, not a wait for an event: the backoff's
        # waits are 0.1 s and more by now (at most 3 a job in 0.5 s), while a Retry-After
        # of 0 obeyed would be a busy loop (hundreds).
        time.sleep(0.5)
        during = sandbox.truth().count("POST /api/video/generate", 429) - before
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    stderr = watch.text()
    assert process.returncode == 130, stderr
    assert during <= 20, f"{during} submissions in 0.5 s: Retry-After {retry_after!r} was obeyed"
    summaries = [line for line in stderr.splitlines() if "with 429" in line]
    assert 1 <= len(summaries) <= 3, stderr
    assert "backoff" in summaries[0]
    attempts = query(ledger, "SELECT state, counted FROM attempts")
    assert {(a["state"], a["counted"]) for a in attempts} == {("not_sent", 0)}


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_on_submit_stops_the_run_naming_the_location_with_no_unknown_cost(
    ledger_at, status
):
    """The base URL is wrong for every job: nothing is followed or created, the run stops
    at once with exit 1 naming the Location, every job stays queued and no attempt of
    unknown outcome eats the budget."""
    ledger = ledger_at
    job_ids = build_ledger(ledger, 4)
    where = "https://www.okaypic.test/api/video/generate"
    sim = HostileSandbox(refusals=[redirect(status, where)] * 20)
    result = run_against(sim, ledger, job_ids)
    assert result.returncode == 1, result.stderr
    no_traceback(result)
    assert where in result.stderr and "base URL" in result.stderr
    assert sim.served["refusal"] == 1, "submitted again after a redirect"
    assert sim.truth().submissions == []
    status_after = status_json(ledger)
    assert status_after["counts"]["queued"] == 4
    assert status_after["unknown_usd"] == "0.00"
    attempts = query(ledger, "SELECT * FROM attempts")
    assert [(a["state"], a["counted"], a["http_status"]) for a in attempts] == [
        ("not_sent", 0, status)
    ]
    assert where in attempts[0]["error"]


# ---------------------------------------------------------------- trickling answers (§6)


def trickling(response: Response, every: float = 0.3) -> Response:
    assert isinstance(response.body, bytes)
    return response._replace(body=trickle(response.body + b" " * 200, every))


def deadline(seconds: float) -> list[str]:
    """tests.faulty options: every API request's whole deadline (client.REQUEST_DEADLINE)."""
    return ["--set", f"batchgen.client:REQUEST_DEADLINE={seconds}"]


def test_a_poll_answer_that_trickles_in_is_cut_at_the_deadline_and_polled_again(ledger_at):
    """Each of the first two polls of every task trickles in a byte at a time, fast
    enough for every read: the whole-request deadline ends each, the task is polled again
    (never resubmitted) and completes."""
    ledger = ledger_at
    job_ids = build_ledger(ledger, 3)
    polls: Counter[str] = Counter()

    def slow_first_polls(task_id: str, real: Response) -> Response | None:
        polls[task_id] += 1
        return trickling(real) if polls[task_id] <= 2 else None

    sim = HostileSandbox(on_poll=slow_first_polls)
    served = serve(sim)
    try:
        result = run_faulty(
            deadline(1),
            "resume",
            *FAST,
            env=command_env(ledger, served.base_url, "okpk_sandbox_demo"),
            timeout=90,
        )
    finally:
        served.stop()
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    truth = sim.truth()
    audit(ledger, truth, job_ids)
    assert truth.duplicate_payloads() == {}
    cut = query(ledger, "SELECT detail FROM events WHERE kind = 'poll_error'")
    assert cut and all("within 1 s" in e["detail"] for e in cut), cut


def test_a_submit_answer_that_trickles_in_is_an_unknown_outcome_at_the_deadline(ledger_at):
    """The task was created and its answer trickles: at the deadline the outcome is unknown
    (the attempt covers the charge) and the job is submitted again, as §6 says."""
    ledger = ledger_at
    job_ids = build_ledger(ledger, 2)
    sim = HostileSandbox(on_created=lambda n, task_id, real: trickling(real) if n == 1 else real)
    served = serve(sim)
    try:
        result = run_faulty(
            deadline(1),
            "resume",
            *FAST,
            env=command_env(ledger, served.base_url, "okpk_sandbox_demo"),
            timeout=90,
        )
    finally:
        served.stop()
    assert result.returncode == 0, result.stderr
    truth = sim.truth()
    checked = audit(ledger, truth, job_ids)
    assert sum(checked.orphans.values()) == sum(checked.unknown_attempts.values()) == 1
    assert truth.net_charged_micros() == checked.spent + checked.unknown == 3 * PRICE


def test_a_result_file_that_trickles_in_fails_at_the_download_deadline_and_the_run_ends(
    ledger_at, tmp_path
):
    """`run --download` with a result file sent a byte per 0.5 s: past the download's
    whole deadline the file is recorded as failed (for `download` to retry) and the run
    ends instead of hanging."""
    ledger = ledger_at
    job_ids = build_ledger(ledger, 2)
    sim = HostileSandbox(on_file=lambda target: Response(200, {}, trickle(b"x" * 1000, 0.5)))
    served = serve(sim)
    try:
        result = run_faulty(
            ["--set", "batchgen.download:DOWNLOAD_DEADLINE=1"],
            "resume",
            *FAST,
            "--download",
            str(tmp_path / "out"),
            env=command_env(ledger, served.base_url, "okpk_sandbox_demo"),
            timeout=90,
        )
    finally:
        served.stop()
    assert result.returncode != 130, result.stderr
    no_traceback(result)
    audit(ledger, sim.truth(), job_ids)
    files = query(ledger, "SELECT * FROM files")
    assert len(files) == 2 and all("within 1 s" in (f["error"] or "") for f in files), files

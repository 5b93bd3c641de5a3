"""The submit-outcome table of PRODUCT.md §6, row by row, and the poll answers."""

from __future__ import annotations

import json

import pytest

from batchgen.outcomes import (
    Answer,
    Poll,
    Submit,
    Transport,
    classify_poll,
    classify_submit,
    parse_retry_after,
)


def answered(status: int, body: object = None, retry_after: str | None = None) -> Answer:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Answer(Transport.ANSWERED, status, raw, retry_after=retry_after)


CREATED = {"generationId": "g-1", "taskId": "task-1", "status": "pending"}


def test_200_with_a_task_id_is_a_created_task_to_poll():
    outcome = classify_submit(answered(200, CREATED))
    assert (outcome.action, outcome.task_id, outcome.counts_as_attempt) == (
        Submit.CREATED,
        "task-1",
        True,
    )


def test_429_on_submit_waits_without_spending_an_attempt():
    outcome = classify_submit(answered(429, {"error": "Too many concurrent tasks (max 3)"}, "7"))
    assert outcome.action is Submit.WAIT_FOR_SLOT
    assert outcome.counts_as_attempt is False
    assert outcome.retry_after == 7.0


def test_500_on_submit_is_an_answered_attempt_without_a_task():
    outcome = classify_submit(answered(500, {"error": "backend generation failed"}))
    assert (outcome.action, outcome.counts_as_attempt) == (Submit.SERVER_ERROR, True)
    assert outcome.message == "backend generation failed"
    assert outcome.status == 500


def test_400_rejects_the_job_with_the_services_message():
    outcome = classify_submit(answered(400, {"error": "invalid model"}))
    assert (outcome.action, outcome.message) == (Submit.REJECTED, "invalid model")


@pytest.mark.parametrize(("status", "action"), [(401, Submit.AUTH), (402, Submit.BALANCE)])
def test_401_and_402_stop_without_counting_an_attempt(status, action):
    outcome = classify_submit(answered(status, {"error": "x"}))
    assert (outcome.action, outcome.counts_as_attempt) == (action, False)


def test_a_connect_error_never_left_and_is_not_an_attempt():
    outcome = classify_submit(Answer(Transport.NOT_SENT, error="ConnectError: refused"))
    assert (outcome.action, outcome.counts_as_attempt) == (Submit.NOT_SENT, False)


def test_a_request_lost_after_sending_has_an_unknown_outcome():
    outcome = classify_submit(Answer(Transport.LOST, error="ReadTimeout"))
    assert (outcome.action, outcome.counts_as_attempt) == (Submit.UNKNOWN, True)


@pytest.mark.parametrize(
    "body",
    [
        b"<html>oops",
        b"",
        json.dumps({"taskId": 42}).encode(),
        json.dumps({"status": "pending"}).encode(),
        json.dumps(["taskId"]).encode(),
    ],
)
def test_an_unreadable_2xx_body_has_an_unknown_outcome(body):
    assert classify_submit(answered(200, body)).action is Submit.UNKNOWN


@pytest.mark.parametrize("status", [502, 504])
def test_a_gateway_error_may_hide_a_created_task(status):
    assert classify_submit(answered(status, b"bad gateway")).action is Submit.UNKNOWN


def test_poll_completed_gives_the_result_urls():
    outcome = classify_poll(
        answered(
            200,
            {
                "status": "completed",
                "type": "video",
                "resultUrls": ["https://cdn.example.com/v.mp4"],
            },
        )
    )
    assert outcome.action is Poll.COMPLETED
    assert outcome.result_urls == ("https://cdn.example.com/v.mp4",)


@pytest.mark.parametrize(
    "urls", [None, [], ["not a url"], [42], "https://x/y.mp4", ["file:///etc/passwd"]]
)
def test_poll_completed_without_usable_urls_is_an_error_not_a_completion(urls):
    body = {"status": "completed", "resultUrls": urls}
    assert classify_poll(answered(200, body)).action is Poll.ERROR


def test_poll_processing_reports_progress_clamped_to_0_100():
    assert classify_poll(answered(200, {"status": "processing", "progress": 50})).progress == 50
    assert classify_poll(answered(200, {"status": "processing", "progress": 250})).progress == 100
    assert classify_poll(answered(200, {"status": "pending", "progress": "x"})).progress is None


def test_poll_failed_carries_the_error_message():
    outcome = classify_poll(answered(200, {"status": "failed", "errorMessage": "NSFW"}))
    assert (outcome.action, outcome.message) == (Poll.FAILED, "NSFW")


@pytest.mark.parametrize(
    "answer",
    [
        answered(500, {"error": "x"}),
        answered(200, b"garbage"),
        answered(404, {"error": "no"}),
        answered(200, {"status": "weird"}),
        Answer(Transport.LOST, error="ReadTimeout"),
        Answer(Transport.NOT_SENT, error="ConnectError"),
    ],
)
def test_poll_errors_are_errors_to_poll_again(answer):
    assert classify_poll(answer).action is Poll.ERROR


def test_poll_401_stops_the_run():
    assert classify_poll(answered(401, {"error": "bad key"})).action is Poll.AUTH


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("3", 3.0),
        ("0.5", 0.5),
        (None, None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
        ("-4", 0.0),
        ("99999", 600.0),
    ],
)
def test_retry_after_is_read_in_seconds_and_bounded(value, seconds):
    assert parse_retry_after(value) == seconds

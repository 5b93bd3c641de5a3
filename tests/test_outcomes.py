"""The submit-outcome table of PRODUCT.md §6, row by row, and the poll answers."""

from __future__ import annotations

import json
import random

import pytest

from batchgen.catalog import load as load_catalog
from batchgen.catalog import path_segment
from batchgen.outcomes import (
    MAX_TASK_ID,
    Answer,
    Poll,
    Submit,
    Transport,
    classify_poll,
    classify_submit,
    is_refusal,
    parse_retry_after,
    task_id_problem,
)
from batchgen.pacing import SLOT_WAIT_CAP, SLOT_WAIT_FLOOR, slot_wait


def answered(
    status: int, body: object = None, retry_after: str | None = None, location: str | None = None
) -> Answer:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Answer(Transport.ANSWERED, status, raw, retry_after=retry_after, location=location)


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


# ---------------------------------------------------------------------- Retry-After (§2)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1", 1.0),  # the smallest wait honoured
        ("3", 3.0),
        (" 7 ", 7.0),
        ("600", 600.0),  # the longest wait honoured
        ("0600", 600.0),
        (None, None),  # not sent: own backoff
        ("0", None),  # "now", for ever, would be a busy loop
        ("-1", None),
        ("-4", None),
        ("601", None),  # past the longest honoured wait: own backoff, not 600
        ("99999", None),
        ("0.5", None),  # HTTP's delay-seconds are whole seconds
        ("1.5", None),
        ("+5", None),
        ("", None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),  # an HTTP date
        ("1e3", None),
        ("\u0665", None),  # a non-ASCII digit
    ],
)
def test_retry_after_from_1_to_600_seconds_is_honoured_anything_else_falls_back(value, seconds):
    assert parse_retry_after(value) == seconds


@pytest.mark.parametrize(("header", "honoured"), [("0", None), ("-1", None), ("1", 1.0)])
def test_a_429_carries_the_wait_it_asks_only_when_usable_and_is_never_an_attempt(header, honoured):
    outcome = classify_submit(answered(429, {"error": "Too many concurrent tasks"}, header))
    assert (outcome.action, outcome.counts_as_attempt) == (Submit.WAIT_FOR_SLOT, False)
    assert outcome.retry_after == honoured


def test_a_usable_retry_after_is_the_wait():
    assert slot_wait(42.0, 1, 2.0, random.Random(1)) == 42.0
    assert slot_wait(600.0, 9, 0.0, random.Random(1)) == 600.0


def test_without_a_usable_retry_after_the_wait_backs_off_with_half_jitter_up_to_the_cap():
    rng = random.Random(3)
    for waits, ceiling in [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (5, SLOT_WAIT_CAP)]:
        for _ in range(50):
            assert ceiling / 2 <= slot_wait(None, waits, 2.0, rng) <= ceiling
    assert slot_wait(None, 50, 2.0, rng) <= SLOT_WAIT_CAP


def test_a_zero_retry_delay_still_waits_and_backs_off():
    """--retry-delay 0 with a service answering 429 for ever is no busy loop."""
    rng = random.Random(5)
    assert SLOT_WAIT_FLOOR / 2 <= slot_wait(None, 1, 0.0, rng) <= SLOT_WAIT_FLOOR
    assert slot_wait(None, 10, 0.0, rng) >= SLOT_WAIT_FLOOR * 2**9 / 2


# ---------------------------------------------------------------------- 3xx on submit (§2, §6)


@pytest.mark.parametrize("status", [300, 301, 302, 303, 307, 308])
def test_a_3xx_on_submit_created_nothing_stops_the_run_and_names_the_location(status):
    outcome = classify_submit(
        answered(status, b"", location="https://www.okaypic.com/api/video/generate")
    )
    assert outcome.action is Submit.REDIRECTED
    assert outcome.counts_as_attempt is False, "no task was created: not an attempt"
    assert outcome.status == status
    assert "https://www.okaypic.com/api/video/generate" in (outcome.message or "")


def test_a_3xx_without_a_location_says_so_and_a_hostile_location_is_shown_as_plain_text():
    assert "no Location" in (classify_submit(answered(302, b"")).message or "")
    message = classify_submit(answered(301, b"", location="https://x.test/\x1b[31mred\n")).message
    assert message is not None and "\x1b" not in message and "\n" not in message


# ---------------------------------------------------------------------- task ids (§2)


@pytest.mark.parametrize(
    "task_id",
    [
        "t",
        "backend-task-id",
        "t" * MAX_TASK_ID,  # 200 characters: the longest usable id
        "../../generate",  # odd, but usable: sent as one escaped path segment
        "x?admin=1",
        "..",
        "a b/c#d",
        "é-ü-任务",
    ],
)
def test_a_usable_task_id_is_a_created_task(task_id):
    outcome = classify_submit(answered(200, {"taskId": task_id, "status": "pending"}))
    assert (outcome.action, outcome.task_id, outcome.counts_as_attempt) == (
        Submit.CREATED,
        task_id,
        True,
    )
    assert task_id_problem(task_id) is None


@pytest.mark.parametrize(
    ("task_id", "problem"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("t" * (MAX_TASK_ID + 1), "201 characters"),  # one too many
        ("t" * 5000, "5000 characters"),
        ("a\nb", "control character"),
        ("a\rb", "control character"),
        ("\x00", "control character"),
        ("tab\there", "control character"),
        ("del\x7f", "control character"),
        ("c1\x85", "control character"),
        ("\ud800", "lone surrogate"),
        (12345, "not text"),
        (["t-1"], "not text"),
        ({"id": "t-1"}, "not text"),
        (True, "not text"),
    ],
)
def test_an_unusable_task_id_is_an_unknown_outcome_never_a_crash(task_id, problem):
    body = json.dumps({"taskId": task_id, "status": "pending"}).encode()
    outcome = classify_submit(answered(200, body))
    assert (outcome.action, outcome.counts_as_attempt) == (Submit.UNKNOWN, True)
    assert outcome.task_id is None
    assert problem in (task_id_problem(task_id) or "")
    assert problem in (outcome.message or "")


def test_a_2xx_without_any_task_id_is_an_unknown_outcome():
    outcome = classify_submit(answered(201, {"status": "pending"}))
    assert (outcome.action, outcome.message) == (Submit.UNKNOWN, "HTTP 201 without a task id")


@pytest.mark.parametrize(
    ("task_id", "segment"),
    [
        ("abc123", "abc123"),
        ("../../generate", "..%2F..%2Fgenerate"),
        ("x?admin=1", "x%3Fadmin%3D1"),
        ("a#b", "a%23b"),
        ("a b", "a%20b"),
        ("..", "%2E%2E"),  # a dot segment would be resolved away by URL normalization
        (".", "%2E"),
        ("...", "%2E%2E%2E"),
        ("a.b", "a.b"),
        ("a\nb", "a%0Ab"),  # never sent (unusable), but never a crash either
        ("é", "%C3%A9"),
    ],
)
def test_a_task_id_is_one_percent_escaped_path_segment(task_id, segment):
    assert path_segment(task_id) == segment
    model = load_catalog().model("grok-video-3")
    assert model is not None
    assert model.poll_path(task_id) == f"/api/video/tasks/{segment}"


# ---------------------------------------------------------------------- answers that never resolve


@pytest.mark.parametrize(
    "answer",
    [
        answered(404, {"error": "Task not found"}),
        answered(301, b"", location="https://elsewhere.test/"),
        answered(200, {"status": "Completed", "resultUrls": ["https://cdn.example.com/v.mp4"]}),
        answered(200, {"status": "completed", "resultUrls": ["file:///tmp/v.mp4"]}),
        answered(200, {"status": "completed"}),
        answered(
            200,
            {
                "status": "completed",
                "resultUrls": [f"https://cdn.example.com/{n}.mp4" for n in range(101)],
            },
        ),
    ],
    ids=["404", "3xx", "Completed", "file-url", "no-urls", "101-urls"],
)
def test_an_answer_that_resolves_nothing_is_a_poll_error_never_a_completion(answer):
    """Polled again, and given up as lost after --lost-after (scheduler)."""
    assert classify_poll(answer).action is Poll.ERROR


def test_a_hundred_result_urls_are_still_a_completion():
    urls = [f"https://cdn.example.com/{n}.mp4" for n in range(100)]
    outcome = classify_poll(answered(200, {"status": "completed", "resultUrls": urls}))
    assert (outcome.action, len(outcome.result_urls)) == (Poll.COMPLETED, 100)


# ------------------------------------------------------ every message, flag and boundary


def test_outcomes_and_answers_cannot_be_changed_once_made():
    import dataclasses

    for made in (
        answered(200, CREATED),
        classify_submit(answered(200, CREATED)),
        classify_poll(answered(200, {"status": "processing", "progress": 5})),
    ):
        with pytest.raises(dataclasses.FrozenInstanceError):
            made.status = 1  # type: ignore[misc, union-attr]


def test_an_answer_without_a_status_is_an_unknown_outcome_and_says_so():
    outcome = classify_submit(Answer(Transport.ANSWERED, None))
    assert (outcome.action, outcome.counts_as_attempt) == (Submit.UNKNOWN, True)
    assert outcome.message == "no answer"
    lost = classify_submit(Answer(Transport.LOST, 200, b"{}", error=None))
    assert (lost.action, lost.message) == (Submit.UNKNOWN, "no answer")


@pytest.mark.parametrize("status", [100, 199])
def test_a_1xx_is_no_created_task_even_with_a_task_id(status):
    outcome = classify_submit(answered(status, CREATED))
    assert (outcome.action, outcome.counts_as_attempt) == (Submit.UNKNOWN, True)
    assert outcome.message == f"HTTP {status}"


@pytest.mark.parametrize(
    "status, action, counted, message",
    [
        (400, Submit.REJECTED, True, "HTTP 400"),
        (404, Submit.REJECTED, True, "HTTP 404"),
        (499, Submit.REJECTED, True, "HTTP 499"),
        (500, Submit.SERVER_ERROR, True, "HTTP 500"),
        (503, Submit.SERVER_ERROR, True, "HTTP 503"),
        (501, Submit.UNKNOWN, True, "HTTP 501"),
        (502, Submit.UNKNOWN, True, "HTTP 502"),
        (599, Submit.UNKNOWN, True, "HTTP 599"),
        (429, Submit.WAIT_FOR_SLOT, False, "HTTP 429"),
        (401, Submit.AUTH, False, "HTTP 401"),
        (402, Submit.BALANCE, False, "HTTP 402"),
        (399, Submit.REDIRECTED, False, "HTTP 399 redirecting to no Location given"),
    ],
)
def test_each_status_without_words_of_the_service_is_named_by_its_number(
    status, action, counted, message
):
    outcome = classify_submit(answered(status, b""))
    assert (outcome.action, outcome.counts_as_attempt, outcome.status) == (action, counted, status)
    assert outcome.message == message


def test_a_2xx_without_or_with_an_unusable_task_id_says_which():
    without = classify_submit(answered(201, {"status": "pending"}))
    assert (without.action, without.counts_as_attempt) == (Submit.UNKNOWN, True)
    assert without.message == "HTTP 201 without a task id"
    unusable = classify_submit(answered(200, {"taskId": ""}))
    assert (unusable.action, unusable.counts_as_attempt) == (Submit.UNKNOWN, True)
    assert unusable.message == "HTTP 200 with an unusable task id (empty)"
    assert classify_submit(answered(200, {"taskId": None})).message == (
        "HTTP 200 without a task id"
    )


@pytest.mark.parametrize(
    "task_id, problem",
    [
        (7, "not text but int"),
        (["x"], "not text but list"),
        ("", "empty"),
        ("   ", "empty"),
        ("a" * MAX_TASK_ID, None),
        ("a" * (MAX_TASK_ID + 1), f"{MAX_TASK_ID + 1} characters, over {MAX_TASK_ID}"),
        ("a\nb", "holds a control character"),
        ("a\x7fb", "holds a control character"),
        ("a\ud800b", "holds a lone surrogate"),
        ("naïve-任务-🎬", None),
    ],
)
def test_why_a_task_id_is_unusable_in_words(task_id, problem):
    assert task_id_problem(task_id) == problem


def test_a_location_is_shown_without_control_characters_or_surrogates_and_capped():
    outcome = classify_submit(answered(302, b"", location="https://x/\x1b[2J\ud800y" + "z" * 400))
    assert outcome.message == "HTTP 302 redirecting to https://x/[2Jy" + "z" * 286  # 300 in all


@pytest.mark.parametrize(
    "answer, message",
    [
        (Answer(Transport.LOST, error=None), "no answer"),
        (Answer(Transport.LOST, error="ReadTimeout"), "ReadTimeout"),
        (Answer(Transport.NOT_SENT, error="ConnectError"), "ConnectError"),
        (Answer(Transport.ANSWERED, None), "no answer"),
        (answered(500, b"<html>"), "HTTP 500"),
        (answered(404, {"error": "Task not found"}), "Task not found"),
        (answered(200, b"not json"), "unreadable answer"),
        (answered(200, ["a list"]), "unreadable answer"),
        (answered(200, {"status": "completed"}), "completed without usable resultUrls"),
        (answered(200, {"status": "Completed"}), "unexpected status 'Completed'"),
        (answered(200, {"status": None}), "unexpected status 'None'"),
        (answered(200, {"status": "x" * 50}), f"unexpected status {'x' * 40!r}"),
    ],
)
def test_every_poll_error_says_what_was_wrong(answer, message):
    outcome = classify_poll(answer)
    assert (outcome.action, outcome.message) == (Poll.ERROR, message)


def test_a_completion_is_at_100_percent():
    urls = ["http://cdn.example.com/a.mp4"]  # plain http is a URL too
    outcome = classify_poll(answered(200, {"status": "completed", "resultUrls": urls}))
    assert (outcome.action, outcome.progress, outcome.result_urls) == (
        Poll.COMPLETED,
        100,
        tuple(urls),
    )


@pytest.mark.parametrize("extra, usable", [(4096, True), (4097, False)])
def test_a_result_url_up_to_4096_characters_is_usable(extra, usable):
    url = "https://cdn.example.com/"
    url += "a" * (extra - len(url))
    outcome = classify_poll(answered(200, {"status": "completed", "resultUrls": [url]}))
    assert (outcome.action is Poll.COMPLETED) is usable


@pytest.mark.parametrize(
    "body, message",
    [
        ({"status": "failed", "errorMessage": ""}, "Generation failed"),
        ({"status": "failed", "errorMessage": 5}, "Generation failed"),
        ({"status": "failed"}, "Generation failed"),
        ({"status": "failed", "errorMessage": "x" * 400}, "x" * 300),
        ({"status": "failed", "errorMessage": "NSFW"}, "NSFW"),
    ],
)
def test_a_failed_tasks_message_is_its_own_words_capped_or_a_default(body, message):
    outcome = classify_poll(answered(200, body))
    assert (outcome.action, outcome.message) == (Poll.FAILED, message)


@pytest.mark.parametrize("status", ["pending", "processing"])
@pytest.mark.parametrize(
    "progress, seen", [(0, 0), (-5, 0), (50.7, 50), (150, 100), (None, None), (True, None)]
)
def test_a_running_task_reports_its_progress_clamped(status, progress, seen):
    outcome = classify_poll(answered(200, {"status": status, "progress": progress}))
    assert (outcome.action, outcome.progress) == (Poll.RUNNING, seen)


@pytest.mark.parametrize(
    "body, words",
    [
        ({"error": "a"}, "a"),
        ({"message": "b"}, "b"),
        ({"errorMessage": "c"}, "c"),
        ({"detail": "d"}, "d"),
        ({"error": "", "detail": "d"}, "d"),
        ({"error": 5, "message": "b"}, "b"),
        ({"error": "e" * 301}, "e" * 300),
        ({"nothing": "x"}, None),
    ],
)
def test_the_services_words_come_from_its_usual_error_fields(body, words):
    outcome = classify_submit(answered(400, body))
    assert outcome.message == (words or "HTTP 400")


# ------------------------------------------------------- refusals for content reasons (§2)

PHRASES = load_catalog().refusal_phrases

REFUSALS = [
    "SAFETY.INPUT.TEXT: the prompt was flagged",  # Runway's codes
    "SAFETY.OUTPUT.VIDEO",
    "The prompt was refused by the content policy",
    "Your request was rejected by our safety system",
    "Prompt flagged by moderation",
    "InputTextSensitiveContentDetected",  # Volcengine's codes, CamelCase
    "OutputVideoSensitiveContentDetected: the output may contain sensitive information",
    "This prompt contains words that violate the usage guidelines",
    "Prohibited content",
    "nsfw content detected",
    "NOT ALLOWED CONTENT",
    "提示词包含敏感内容",
    "内容违规，请修改后重试",
]
NOT_REFUSALS = [
    "invalid model",
    "duration 20 is not allowed for grok-video-3 (allowed: 5, 10)",
    "Generation failed",
    "Internal error: GPU out of memory",
    "",
]


@pytest.mark.parametrize("message", REFUSALS)
def test_a_400_refusing_the_prompt_for_content_reasons_is_a_refusal(message):
    outcome = classify_submit(answered(400, {"error": message}), PHRASES)
    assert (outcome.action, outcome.message, outcome.status) == (Submit.REFUSED, message, 400)
    assert outcome.counts_as_attempt  # answered: it was an attempt, and it created no task


@pytest.mark.parametrize("message", NOT_REFUSALS)
def test_a_400_for_any_other_reason_is_a_rejection(message):
    outcome = classify_submit(answered(400, {"error": message}), PHRASES)
    assert outcome.action is Submit.REJECTED


@pytest.mark.parametrize(
    ("status", "action"),
    [
        (403, Submit.REJECTED),  # a key suspended for violations: not this prompt's refusal
        (422, Submit.REJECTED),
        (429, Submit.WAIT_FOR_SLOT),
        (500, Submit.SERVER_ERROR),
        (401, Submit.AUTH),
    ],
)
def test_only_a_400_refuses_a_prompt_whatever_another_status_says(status, action):
    answer = answered(status, {"error": "account flagged: content policy violations"})
    assert classify_submit(answer, PHRASES).action is action


def test_the_refusal_phrases_are_the_callers_so_none_given_means_no_refusal():
    answer = answered(400, {"error": "refused by the content policy"})
    assert classify_submit(answer).action is Submit.REJECTED
    assert classify_submit(answer, ["CONTENT POLICY"]).action is Submit.REFUSED
    assert classify_submit(answer, ["", "weather"]).action is Submit.REJECTED


def test_an_answer_without_the_services_words_is_never_a_refusal():
    for body in ({}, {"error": ""}, b"<html>Bad Request</html>"):
        assert classify_submit(answered(400, body), PHRASES).action is Submit.REJECTED
    assert not is_refusal(None, PHRASES) and not is_refusal("", PHRASES)


@pytest.mark.parametrize("message", REFUSALS)
def test_a_task_failed_for_content_reasons_is_a_refusal(message):
    body = {"status": "failed", "errorMessage": message}
    outcome = classify_poll(answered(200, body), PHRASES)
    assert (outcome.action, outcome.message) == (Poll.REFUSED, message or "Generation failed")


@pytest.mark.parametrize("message", NOT_REFUSALS)
def test_a_task_failed_for_any_other_reason_may_be_submitted_again(message):
    body = {"status": "failed", "errorMessage": message}
    assert classify_poll(answered(200, body), PHRASES).action is Poll.FAILED


def test_only_a_failed_task_is_refused_whatever_a_running_or_broken_answer_says():
    running = {"status": "processing", "progress": 10, "errorMessage": "safety check"}
    assert classify_poll(answered(200, running), PHRASES).action is Poll.RUNNING
    assert classify_poll(answered(500, {"error": "safety"}), PHRASES).action is Poll.ERROR


def test_the_catalog_lists_the_refusal_phrases_among_its_assumptions():
    catalog = load_catalog()
    assert "content policy" in catalog.refusal_phrases
    assert any("refusal_phrases" in line for line in catalog.data["assumptions"])

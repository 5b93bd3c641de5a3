"""What the service's answers mean: pure functions, tested case by case (PRODUCT.md §6).

The client turns HTTP into `SubmitAnswer` / `PollAnswer` values; these functions decide.

    on submit                            meaning             action
    200 with a task id                   task created        record it, poll it
    429                                  no task created     wait for a slot; not an attempt
    500, 503                             answered: no task   backoff; counts as an attempt
    400 and other 4xx                    rejected            job failed with the message
    401 / 402                            stop                job stays queued
    connect error / connect timeout      request never left  retry; not an attempt
    read timeout, reset after sending,   unknown outcome     record possible cost; then
    unreadable 2xx body, 502 / 504 / other 5xx               --on-unknown resubmit | hold
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

MAX_MESSAGE = 300


class Transport(Enum):
    """How far a request got when it broke, as the client saw it."""

    ANSWERED = "answered"  # an HTTP status and body came back
    NOT_SENT = "not_sent"  # connect error, connect or pool timeout: nothing left this machine
    LOST = "lost"  # it left (maybe partly), and no usable answer came back


@dataclass(frozen=True)
class Answer:
    transport: Transport
    status: int | None = None
    body: bytes = b""
    retry_after: str | None = None
    error: str | None = None  # the transport error, in words


class Submit(Enum):
    CREATED = "created"
    WAIT_FOR_SLOT = "wait_for_slot"  # 429
    SERVER_ERROR = "server_error"  # 500: retry with backoff, counted
    NOT_SENT = "not_sent"  # retry with backoff, not counted
    REJECTED = "rejected"  # 400: the job fails
    AUTH = "auth"  # 401: stop everything
    BALANCE = "balance"  # 402: submit nothing more
    UNKNOWN = "unknown"  # the task may or may not exist


@dataclass(frozen=True)
class SubmitOutcome:
    action: Submit
    counts_as_attempt: bool
    task_id: str | None = None
    status: int | None = None  # the HTTP status, when there was one
    message: str | None = None
    retry_after: float | None = None


def classify_submit(answer: Answer) -> SubmitOutcome:
    outcome = _classify_submit(answer)
    if answer.status is not None:
        outcome = dataclasses.replace(outcome, status=answer.status)
    return outcome


def _classify_submit(answer: Answer) -> SubmitOutcome:
    if answer.transport is Transport.NOT_SENT:
        return SubmitOutcome(Submit.NOT_SENT, False, message=answer.error)
    if answer.transport is Transport.LOST or answer.status is None:
        return SubmitOutcome(Submit.UNKNOWN, True, message=answer.error or "no answer")
    status = answer.status
    message = error_message(answer.body) or f"HTTP {status}"
    if 200 <= status < 300:
        data = _json(answer.body)
        task_id = data.get("taskId") if isinstance(data, dict) else None
        if isinstance(task_id, str) and task_id.strip() and len(task_id) <= 200:
            return SubmitOutcome(Submit.CREATED, True, task_id=task_id)
        return SubmitOutcome(Submit.UNKNOWN, True, message=f"HTTP {status} without a task id")
    if status == 429:
        return SubmitOutcome(
            Submit.WAIT_FOR_SLOT,
            False,
            message=message,
            retry_after=parse_retry_after(answer.retry_after),
        )
    if status == 401:
        return SubmitOutcome(Submit.AUTH, False, message=message)
    if status == 402:
        return SubmitOutcome(Submit.BALANCE, False, message=message)
    if status in (500, 503):
        return SubmitOutcome(Submit.SERVER_ERROR, True, message=message)
    if 400 <= status < 500:
        return SubmitOutcome(Submit.REJECTED, True, message=message)
    # 502, 504 and the like come from something between us and the service, which may
    # have passed the request on: the task may exist.
    return SubmitOutcome(Submit.UNKNOWN, True, message=message)


class Poll(Enum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    ERROR = "error"  # no usable answer: poll again later, never resubmit
    AUTH = "auth"


@dataclass(frozen=True)
class PollOutcome:
    action: Poll
    progress: int | None = None
    result_urls: tuple[str, ...] = ()
    message: str | None = None


def classify_poll(answer: Answer) -> PollOutcome:
    if answer.transport is not Transport.ANSWERED or answer.status is None:
        return PollOutcome(Poll.ERROR, message=answer.error or "no answer")
    if answer.status == 401:
        return PollOutcome(Poll.AUTH, message=error_message(answer.body))
    if answer.status != 200:
        return PollOutcome(
            Poll.ERROR, message=error_message(answer.body) or f"HTTP {answer.status}"
        )
    data = _json(answer.body)
    if not isinstance(data, dict):
        return PollOutcome(Poll.ERROR, message="unreadable answer")
    status = data.get("status")
    if status == "completed":
        urls = data.get("resultUrls")
        if (
            isinstance(urls, list)
            and urls
            and len(urls) <= 100
            and all(isinstance(u, str) and _is_url(u) for u in urls)
        ):
            return PollOutcome(Poll.COMPLETED, progress=100, result_urls=tuple(urls))
        return PollOutcome(Poll.ERROR, message="completed without usable resultUrls")
    if status == "failed":
        text = data.get("errorMessage")
        message = text[:MAX_MESSAGE] if isinstance(text, str) and text else "Generation failed"
        return PollOutcome(Poll.FAILED, message=message)
    if status in ("pending", "processing"):
        return PollOutcome(Poll.RUNNING, progress=_progress(data.get("progress")))
    return PollOutcome(Poll.ERROR, message=f"unexpected status {str(status)[:40]!r}")


def error_message(body: bytes) -> str | None:
    """The service's own words from an error body, if it has any."""
    data = _json(body)
    if isinstance(data, dict):
        for key in ("error", "message", "errorMessage", "detail"):
            value = data.get(key)
            if isinstance(value, str) and value:
                return value[:MAX_MESSAGE]
    return None


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is rare for APIs and is ignored)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return min(max(seconds, 0.0), 600.0)


def _progress(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if value != value:  # NaN
        return None
    return int(min(max(value, 0), 100))


def _is_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and len(value) <= 4096


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None

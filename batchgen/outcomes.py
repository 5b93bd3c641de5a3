"""What the service's answers mean: pure functions, tested case by case (PRODUCT.md §6).

The client turns HTTP into `SubmitAnswer` / `PollAnswer` values; these functions decide.

    on submit                            meaning             action
    200 with a usable task id            task created        record it, poll it
    429                                  no task created     wait for a slot (Retry-After
                                                             1..600 s, else own backoff);
                                                             not an attempt
    500, 503                             answered: no task   backoff; counts as an attempt
    400 refusing the prompt for content  refused             job failed (reason refused),
    reasons (a refusal phrase)                               never resubmitted
    400 and other 4xx                    rejected            job failed with the message
    401 / 402                            stop                job stays queued
    3xx                                  no task created     stop the run (exit 1) naming
                                         (wrong base URL)    the Location; not an attempt
    connect error / connect timeout      request never left  retry; not an attempt
    read timeout, reset after sending,   unknown outcome     record possible cost; then
    unreadable 2xx body, unusable task                       --on-unknown resubmit | hold
    id, 502 / 504 / other 5xx

On poll, a `failed` task whose errorMessage holds a refusal phrase is REFUSED: its prompt
or output was refused for content reasons and would be again, so it is never resubmitted
(PRODUCT.md §2). The phrases come from the catalog (`Catalog.refusal_phrases`), passed in.

A task id is usable when it is text of 1..MAX_TASK_ID characters, not blank, without
control characters or lone surrogates (PRODUCT.md §2); it is sent as one escaped path
segment (`catalog.Model.poll_path`).
"""

from __future__ import annotations

import dataclasses
import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum, auto
from typing import Any
from urllib.parse import urlsplit

MAX_MESSAGE = 300
MAX_TASK_ID = 200  # characters; a longer "id" is not one (PRODUCT.md §2)
# Retry-After seconds honoured (PRODUCT.md §2); anything else falls back to own backoff.
RETRY_AFTER_MIN, RETRY_AFTER_MAX = 1, 600
_DELAY_SECONDS = re.compile(r"[0-9]{1,9}")  # HTTP's delay-seconds: 1*DIGIT


class Transport(Enum):
    """How far a request got when it broke, as the client saw it."""

    ANSWERED = auto()  # an HTTP status and body came back
    NOT_SENT = auto()  # connect error, connect or pool timeout: nothing left this machine
    LOST = auto()  # it left (maybe partly), and no usable answer came back


@dataclass(frozen=True)
class Answer:
    transport: Transport
    status: int | None = None
    body: bytes = b""
    retry_after: str | None = None
    error: str | None = None  # the transport error, in words
    location: str | None = None  # the Location header of a 3xx


class Submit(Enum):
    CREATED = auto()
    WAIT_FOR_SLOT = auto()  # 429
    SERVER_ERROR = auto()  # 500: retry with backoff, counted
    NOT_SENT = auto()  # retry with backoff, not counted
    REJECTED = auto()  # 400: the job fails
    REFUSED = auto()  # 400 for content reasons: the job fails, reason refused
    AUTH = auto()  # 401: stop everything
    BALANCE = auto()  # 402: submit nothing more
    REDIRECTED = auto()  # 3xx: the base URL is wrong; stop the run
    UNKNOWN = auto()  # the task may or may not exist


@dataclass(frozen=True)
class SubmitOutcome:
    action: Submit
    counts_as_attempt: bool
    task_id: str | None = None
    status: int | None = None  # the HTTP status, when there was one
    message: str | None = None
    retry_after: float | None = None


def classify_submit(answer: Answer, refusal_phrases: Sequence[str] = ()) -> SubmitOutcome:
    """What a submit's answer means; `refusal_phrases` (the catalog's) tell a 400 refusing
    the prompt for content reasons from any other 400."""
    outcome = _classify_submit(answer)
    if (
        outcome.action is Submit.REJECTED
        and answer.status == 400
        and is_refusal(outcome.message, refusal_phrases)
    ):
        outcome = dataclasses.replace(outcome, action=Submit.REFUSED)
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
        if task_id is None:
            return SubmitOutcome(Submit.UNKNOWN, True, message=f"HTTP {status} without a task id")
        problem = task_id_problem(task_id)
        if problem is None:
            return SubmitOutcome(Submit.CREATED, True, task_id=task_id)
        return SubmitOutcome(
            Submit.UNKNOWN, True, message=f"HTTP {status} with an unusable task id ({problem})"
        )
    if 300 <= status < 400:
        # Not followed (the client never follows redirects): no task was created, and the
        # base URL is wrong for every job.
        where = _printable(answer.location) or "no Location given"
        message = f"HTTP {status} redirecting to {where}"
        return SubmitOutcome(Submit.REDIRECTED, False, message=message)
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
    RUNNING = auto()
    COMPLETED = auto()
    FAILED = auto()
    REFUSED = auto()  # failed for content reasons: never resubmitted
    ERROR = auto()  # no usable answer: poll again later, never resubmit
    AUTH = auto()


@dataclass(frozen=True)
class PollOutcome:
    action: Poll
    progress: int | None = None
    result_urls: tuple[str, ...] = ()
    message: str | None = None


def classify_poll(answer: Answer, refusal_phrases: Sequence[str] = ()) -> PollOutcome:
    """What a poll's answer means; `refusal_phrases` (the catalog's) tell a task refused
    for content reasons from any other failed task."""
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
        refused = is_refusal(message, refusal_phrases)
        return PollOutcome(Poll.REFUSED if refused else Poll.FAILED, message=message)
    if status in ("pending", "processing"):
        return PollOutcome(Poll.RUNNING, progress=_progress(data.get("progress")))
    return PollOutcome(Poll.ERROR, message=f"unexpected status {str(status)[:40]!r}")


def is_refusal(message: str | None, refusal_phrases: Sequence[str]) -> bool:
    """Whether the service's `message` refuses a prompt or its output for content reasons:
    it holds one of `refusal_phrases` anywhere, in any case ("SAFETY.INPUT.TEXT" holds
    "safety")."""
    if not message:
        return False
    folded = message.casefold()
    return any(phrase.casefold() in folded for phrase in refusal_phrases if phrase)


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
    """Retry-After in whole seconds from RETRY_AFTER_MIN to RETRY_AFTER_MAX, else None:
    0, negative, fractional, an HTTP date, garbage or a longer wait fall back to
    batchgen's own backoff (a service answering "0" for ever must not be hammered)."""
    if value is None or not _DELAY_SECONDS.fullmatch(value.strip()):
        return None
    seconds = int(value.strip())
    return float(seconds) if RETRY_AFTER_MIN <= seconds <= RETRY_AFTER_MAX else None


def task_id_problem(task_id: object) -> str | None:
    """Why a task id from the service is unusable (PRODUCT.md §2), or None when it is
    usable: text, not blank, at most MAX_TASK_ID characters, no control characters (they
    cannot go into a URL) and no lone surrogates (they cannot be stored or sent)."""
    if not isinstance(task_id, str):
        return f"not text but {type(task_id).__name__}"
    if not task_id.strip():
        return "empty"
    if len(task_id) > MAX_TASK_ID:
        return f"{len(task_id)} characters, over {MAX_TASK_ID}"
    for char in task_id:
        category = unicodedata.category(char)
        if category == "Cc":
            return "holds a control character"
        if category == "Cs":
            return "holds a lone surrogate"
    return None


def _printable(text: str | None) -> str | None:
    """Service text safe to show on one line: control characters dropped, length capped."""
    if text is None:
        return None
    kept = "".join(c for c in text if unicodedata.category(c) not in ("Cc", "Cs"))
    return kept[:MAX_MESSAGE] or None


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

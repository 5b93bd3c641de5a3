"""A hostile service for end-to-end tests: a sandbox whose answers a test replaces
(HostileSandbox), and the odd answers it serves (non-JSON, HTML error pages, redirects,
bodies that trickle in). Its truth still says what the service really did."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from batchgen.sandbox import Response, Sandbox, SandboxConfig, Stream
from tests.e2e import rows

SCALE = 0.01  # the sandbox's time: a 5 s grok task takes about 0.05 s


def as_json(value: Any, status: int = 200) -> Response:
    return Response(status, {"Content-Type": "application/json"}, json.dumps(value).encode())


def raw(body: bytes, status: int = 200, content_type: str = "text/plain") -> Response:
    return Response(status, {"Content-Type": content_type}, body)


def html(status: int) -> Response:
    page = f"<!DOCTYPE html><html><head><title>{status}</title></head><body><h1>{status}"
    return raw((page + " Error</h1><hr>nginx</body></html>").encode(), status, "text/html")


class HostileSandbox(Sandbox):
    """A sandbox whose answers a test replaces.

    - submits: answers for the first submissions that create a task, served after it was
      created and charged (the real answer is lost); a submit the sandbox refuses (e.g.
      429) keeps its real answer and the hostile one waits for the next.
    - refusals: answers for the first submissions, served instead of reaching the service.
    - polls: answers for the first `polls_per_task` polls of each task, in turn.
    - progress: values put in place of `progress` in every running answer, in turn;
      `seen_progress` collects what the ledger holds for that task's job meanwhile.
    - on_created(n, task_id, answer): the answer served for the n-th created task (e.g.
      with an odd task id, put in `aliases` to map it back, or after a long wait).
    - on_poll(task_id, answer): an answer served instead of the real one, or None.
    - on_file(target): an answer for a result file instead of the real one, or None.
    - requests: every (method, target) received, as sent (escapes kept).
    """

    def __init__(
        self,
        *,
        submits: list[Response] = (),  # type: ignore[assignment]
        refusals: list[Response] = (),  # type: ignore[assignment]
        polls: list[Response] = (),  # type: ignore[assignment]
        polls_per_task: int = 0,
        progress: list[Any] = (),  # type: ignore[assignment]
        ledger: Path | str | None = None,
        time_scale: float = SCALE,
        on_created: Callable[[int, str, Response], Response] | None = None,
        on_poll: Callable[[str, Response], Response | None] | None = None,
        on_file: Callable[[str], Response | None] | None = None,
        **config: Any,
    ) -> None:
        super().__init__(SandboxConfig(time_scale=time_scale, **config))
        self.on_created, self.on_poll, self.on_file = on_created, on_poll, on_file
        self.aliases: dict[str, str] = {}  # a task id served by on_created -> the real one
        self.requests: list[tuple[str, str]] = []
        self.created = 0
        self.submits, self.refusals = deque(submits), deque(refusals)
        self.polls, self.polls_per_task = list(polls), polls_per_task
        self.progress = list(progress)
        self.ledger = ledger
        self.served: Counter[str] = Counter()
        self.seen_progress: list[Any] = []
        self._polled: Counter[str] = Counter()
        self._hostile_lock = threading.Lock()

    def handle(self, method: str, target: str, headers: Any, body: bytes = b"") -> Response:  # type: ignore[override]
        with self._hostile_lock:
            self.requests.append((method, target))
        path = urlsplit(target).path
        if method == "POST" and path.endswith("/generate"):
            return self._hostile_submit(method, target, headers, body)
        if method == "GET" and "/tasks/" in path:
            segment = path.rsplit("/", 1)[-1]
            task_id = self.aliases.get(unquote(segment), segment)
            real_target = path[: -len(segment)] + task_id
            return self._hostile_poll(method, real_target, headers, body, task_id)
        if method == "GET" and path.startswith("/files/") and self.on_file is not None:
            answer = self.on_file(target)
            if answer is not None:
                return answer
        return super().handle(method, target, headers, body)

    def _hostile_submit(self, method: str, target: str, headers: Any, body: bytes) -> Response:
        with self._hostile_lock:
            refusal = self.refusals.popleft() if self.refusals else None
        if refusal is not None:
            self.served["refusal"] += 1
            return refusal
        real = super().handle(method, target, headers, body)
        if real.status != 200:
            return real
        with self._hostile_lock:
            hostile = self.submits.popleft() if self.submits else None
            self.created += 1
            n = self.created
        if hostile is None and self.on_created is not None and isinstance(real.body, bytes):
            return self.on_created(n, json.loads(real.body)["taskId"], real)
        if hostile is None:
            return real
        self.served["submit"] += 1
        return hostile

    def _hostile_poll(
        self, method: str, target: str, headers: Any, body: bytes, task_id: str
    ) -> Response:
        with self._hostile_lock:
            self._polled[task_id] += 1
            n = self._polled[task_id]
            index = self.served["poll"]
            hostile = self.polls and n <= self.polls_per_task
            if hostile:
                self.served["poll"] += 1
        if hostile:
            return self.polls[index % len(self.polls)]
        real = super().handle(method, target, headers, body)
        if self.on_poll is not None:
            replaced = self.on_poll(task_id, real)
            if replaced is not None:
                return replaced
        answer = json.loads(real.body) if isinstance(real.body, bytes) else None
        if (
            self.progress
            and isinstance(answer, dict)
            and answer.get("status")
            in (
                "pending",
                "processing",
            )
        ):
            self._record_progress(task_id)
            with self._hostile_lock:
                value = self.progress[self.served["progress"] % len(self.progress)]
                self.served["progress"] += 1
            text = json.dumps({**answer, "progress": value}, allow_nan=True)
            return raw(text.encode(), 200, "application/json")
        return real

    def _record_progress(self, task_id: str) -> None:
        if self.ledger is None:
            return
        found = rows(self.ledger, "SELECT progress FROM jobs WHERE task_id = ?", task_id)
        self.seen_progress += [row["progress"] for row in found]


def redirect(status: int, location: str) -> Response:
    return Response(status, {"Location": location, "Content-Type": "text/html"}, b"Moved")


def trickle(body: bytes, every: float, started: threading.Event | None = None) -> Stream:
    """`body` one byte at a time, `every` seconds apart: each read within any read
    timeout, the whole answer taking len(body) * every seconds."""

    def chunks() -> Any:
        for n in range(len(body)):
            if started is not None:
                started.set()
            time.sleep(every)
            yield body[n : n + 1]

    return Stream(chunks(), len(body))

"""The simulated okaypic service: keys, balances, tasks on a clock, and seeded faults.

`Sandbox.handle(method, target, headers, body)` answers one HTTP request as a `Response`
(status, headers, body bytes or DROP), so the same object serves real HTTP (sandbox/http.py),
an httpx.MockTransport (sandbox/transport.py) and direct unit tests. What a request may
ask and what it costs come from the catalog (`check_request`, `price_micros`), never from
rules restated here. Time is read from an injectable clock, so tests need no sleeps.
Given a state file, the sandbox loads it and saves itself there (sandbox/state.py), so its
tasks outlive the process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import json
import re
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from batchgen import catalog as catalog_module
from batchgen.catalog import Catalog, Model, check_request, price_micros
from batchgen.money import to_micros, usd
from batchgen.progress_curves import DEFAULT_MODE, task_state
from batchgen.sandbox import state as state_file
from batchgen.sandbox.config import SandboxConfig
from batchgen.sandbox.faults import FaultDice, PollFaults, SubmitFaults
from batchgen.sandbox.media import Provider, result_file
from batchgen.sandbox.truth import MoneyEvent, Submission, Truth, payload_key


class Drop:
    """The answer that is no answer: close the connection without writing anything."""

    def __repr__(self) -> str:
        return "DROP"


DROP = Drop()


class Stream:
    """A body written piece by piece as `chunks` yields them (each may sleep first): an
    answer that trickles in, or one too large to hold. `length` is the Content-Length
    announced; the connection closes after the body (or when the client hangs up)."""

    def __init__(self, chunks: Iterable[bytes], length: int) -> None:
        self.chunks = chunks
        self.length = length

    def __repr__(self) -> str:
        return f"Stream(length={self.length})"


class Response(NamedTuple):
    """One answer: status, headers, body (or DROP, or a Stream); `delay_s` real seconds to
    wait first."""

    status: int
    headers: dict[str, str]
    body: bytes | Drop | Stream
    delay_s: float = 0.0


# What the reference does not say, chosen here: how a running task reports progress is
# the config's `progress` mode (batchgen/progress_curves.py), and each finished task has
# one result file of this type (real media, see media.py); a video without a duration
# (Veo's is fixed) lasts VEO_SECONDS.
RESULT_FILES = {"video": ("mp4", "video/mp4"), "image": ("png", "image/png")}
VEO_SECONDS = 8
# What the sandbox says when it refuses a prompt (refuse_rate), in words like Runway's.
REFUSED_PROMPT = "SAFETY.INPUT.TEXT: the prompt was refused by the content policy"
REFUSED_OUTPUT = "SAFETY.OUTPUT.VIDEO: the output was flagged by the safety system"

TRUTH_ROUTE = "GET /_sandbox/truth"
KEYS_ROUTE = "GET /_sandbox/keys"
TOPUP_ROUTE = "POST /_sandbox/topup"
FILES_ROUTE = "GET /files/{task_id}/{n}.{ext}"
OTHER_ROUTE = "other"
_FILES_PATH = re.compile(r"^/files/(?P<task_id>[^/]+)/(?P<index>\d+)\.(?P<ext>[A-Za-z0-9]+)$")


@dataclass
class _Task:
    task_id: str
    generation_id: str
    key: str
    kind: str
    payload: dict[str, Any]
    price_micros: int
    submitted_at: float
    ends_at: float
    fails: bool
    answered: str
    vanished: bool = False
    refused: bool = False  # fails for its output's content (refuse_rate)
    progress_mode: str = DEFAULT_MODE
    progress_draw: float = 0.0  # the task's own random number for its progress curve
    settled: bool = False

    def state(self, now: float) -> tuple[str, int | None]:
        """(status, progress): progress None once ended, or when the mode reports none."""
        if now >= self.ends_at:
            return ("failed" if self.fails else "completed"), None
        return task_state(
            self.progress_mode,
            now - self.submitted_at,
            self.ends_at - self.submitted_at,
            self.progress_draw,
        )

    def status(self, now: float) -> str:
        return self.state(now)[0]

    def result_url(self, base_url: str, index: int = 0) -> str:
        ext = RESULT_FILES[self.kind][0]
        return f"{base_url.rstrip('/')}/files/{self.task_id}/{index}.{ext}"


def _bearer(headers: Mapping[str, str]) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header (lower-cased names), or None."""
    scheme, _, token = headers.get("authorization", "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _status(response: Response) -> str:
    """How an answer is counted: its HTTP status, or "drop" for none."""
    return "drop" if isinstance(response.body, Drop) else str(response.status)


def _json(status: int, obj: Any, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(obj).encode()
    return Response(status, {"Content-Type": "application/json", **(headers or {})}, body)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return _json(status, {"error": message}, headers)


def _garbled(response: Response) -> Response:
    """The same answer cut in half: a 200 whose body no JSON parser accepts."""
    assert isinstance(response.body, bytes)  # the sandbox's own answers are whole
    return response._replace(body=response.body[: len(response.body) // 2])


def _echoing(response: Response, authorization: str) -> Response:
    """The answer of a hostile service that repeats the caller's credentials in its error
    messages (and failed tasks' errorMessage): what batchgen must never store or show."""
    if not isinstance(response.body, bytes) or not authorization:
        return response
    try:
        answer = json.loads(response.body)
    except ValueError:
        return response
    if not isinstance(answer, dict):
        return response
    for field in ("error", "errorMessage"):
        if isinstance(answer.get(field), str):
            answer[field] += f" (request made with Authorization: {authorization})"
    return response._replace(body=json.dumps(answer).encode())


class Sandbox:
    """The state of one simulated service; every request runs under one lock.

    With `state` (a file path), the sandbox starts from the state saved there, if any
    (its seed then wins over the config's, and its balances over the config's for the
    keys it knows), and saves itself there whenever a task is created or a balance topped
    up. Its clock is then the wall clock by default: the saved times must mean the same
    in the next process. state.StateUnusable when the file is not a usable state."""

    def __init__(
        self,
        config: SandboxConfig | None = None,
        clock: Callable[[], float] | None = None,
        catalog: Catalog | None = None,
        state: str | Path | None = None,
    ) -> None:
        self._state_path = None if state is None else Path(state)
        saved = None if self._state_path is None else state_file.read(self._state_path)
        self.config = config or SandboxConfig()
        if saved is not None:
            self.config = replace(self.config, seed=saved.seed)
        self.clock = clock or (time.monotonic if state is None else time.time)
        self.catalog = catalog or catalog_module.load()
        # where result files are said to live; serve() sets the real one
        self.base_url = "http://sandbox.invalid"
        self._lock = threading.Lock()
        # --provenance: files signed as a provider would (media.Provider), else as made
        self.provider = Provider() if self.config.provenance else None
        self._dice = FaultDice(self.config)
        self._balances: dict[str, int] = dict(self.config.keys)
        self._tasks: dict[str, _Task] = {}  # in submission order
        self._unsettled: list[tuple[float, int, str]] = []  # heap of (ends_at, seq, task_id)
        self._active: Counter[str] = Counter()
        self._peak: dict[str, int] = {}
        self._money: list[MoneyEvent] = []
        self._responses: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._faults: Counter[str] = Counter()
        self._polls: Counter[str] = Counter()
        self._foreign_polls: Counter[str] = Counter()  # creating key -> polls by others
        self._submits_by_key: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._refused_submits: Counter[str] = Counter()  # key -> 400s for content
        self._refused_payloads: Counter[str] = Counter()  # payload_key -> 400s for content
        self._per_payload: Counter[str] = Counter()
        self._submit_routes: dict[str, str] = {}  # path -> kind
        self._poll_routes: list[tuple[re.Pattern[str], str, str]] = []  # (regex, kind, label)
        for kind, endpoints in self.catalog.data["endpoints"].items():
            self._submit_routes[endpoints["submit"]] = kind
            template = endpoints["poll"]
            pattern = re.escape(template).replace(re.escape("{task_id}"), r"(?P<task_id>[^/]+)")
            self._poll_routes.append((re.compile(f"^{pattern}$"), kind, f"GET {template}"))
        self._save_failed = False
        # Each task and money event as the state file spells it, made once: a task by
        # (task id, whether settled), the money events in order (they are only appended).
        self._encoded_tasks: dict[str, tuple[bool, str]] = {}
        self._encoded_money: list[str] = []
        if saved is not None:
            self._restore(saved)

    # -- the public face ---------------------------------------------------------------

    def handle(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes = b""
    ) -> Response:
        """Answer one request (`target` is the path with an optional query string)."""
        path = urlsplit(target).path
        lowered = {k.lower(): v for k, v in headers.items()}
        method = method.upper()
        match = _FILES_PATH.match(path)
        if match and method == "GET":
            return self._file(match["task_id"], int(match["index"]), match["ext"])
        with self._lock:
            now = self.clock()
            self._settle(now)
            route, response = self._dispatch(method, path, lowered, body, now)
            if self.config.echo_key:
                response = _echoing(response, lowered.get("authorization", ""))
            self._responses[route][_status(response)] += 1
        return response

    def truth(self) -> Truth:
        """A snapshot of everything the service did, for tests to check the ledger against."""
        with self._lock:
            now = self.clock()
            self._settle(now)
            return self._snapshot(now)

    def top_up(self, key: str, micros: int) -> int:
        """Add `micros` to a key's balance (creating the key if new); the new balance."""
        if micros < 0:
            raise ValueError("a top-up cannot be negative")
        with self._lock:
            return self._top_up(key, micros, self.clock())

    def balance(self, key: str) -> int:
        with self._lock:
            self._settle(self.clock())
            return self._balances[key]

    def active_tasks(self, key: str) -> int:
        """Tasks of `key` still pending or processing by the clock."""
        with self._lock:
            self._settle(self.clock())
            return self._active[key]

    def peak_active(self, key: str) -> int:
        """The most tasks `key` ever had pending or processing at once."""
        with self._lock:
            return self._peak.get(key, 0)

    def foreign_polls(self, key: str | None = None) -> int:
        """Polls of a task made with credentials other than the key that created it (another
        key, an unknown one, or none), for the tasks of `key` or of every key. Whatever
        they were answered (404, 401), a client that polls each task with its own key
        makes none."""
        with self._lock:
            if key is None:
                return sum(self._foreign_polls.values())
            return self._foreign_polls[key]

    # -- routing -----------------------------------------------------------------------

    def _dispatch(
        self, method: str, path: str, headers: dict[str, str], body: bytes, now: float
    ) -> tuple[str, Response]:
        if path in self._submit_routes:
            route = f"POST {path}"
            if method != "POST":
                return route, _error(405, "Method not allowed", {"Allow": "POST"})
            return route, self._submit(self._submit_routes[path], headers, body, now)
        for pattern, kind, route in self._poll_routes:
            match = pattern.match(path)
            if match:
                if method != "GET":
                    return route, _error(405, "Method not allowed", {"Allow": "GET"})
                return route, self._poll(kind, match["task_id"], headers, now)
        if path == "/_sandbox/truth" and method == "GET":
            return TRUTH_ROUTE, _json(200, self._snapshot(now).to_dict())
        if path == "/_sandbox/keys" and method == "GET":
            return KEYS_ROUTE, _json(200, {"keys": self._snapshot(now).by_key()})
        if path == "/_sandbox/topup" and method == "POST":
            return TOPUP_ROUTE, self._admin_top_up(body, now)
        return OTHER_ROUTE, _error(404, "Not found")

    def _authorized_key(self, headers: dict[str, str]) -> str | None:
        token = _bearer(headers)
        return token if token is not None and token in self._balances else None

    # -- the API -----------------------------------------------------------------------

    def _submit(self, kind: str, headers: dict[str, str], body: bytes, now: float) -> Response:
        faults = self._dice.submit()  # drawn for every submit: decision n depends on n only
        key = self._authorized_key(headers)
        if key is None:
            response = _error(401, "Invalid or missing API key")
        else:
            response = self._submit_as(key, kind, body, now, faults)
            self._submits_by_key[key][_status(response)] += 1
        return response._replace(delay_s=faults.latency_s)

    def _submit_as(
        self, key: str, kind: str, body: bytes, now: float, faults: SubmitFaults
    ) -> Response:
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _error(400, "Request body is not valid JSON")
        if not isinstance(payload, dict):
            return _error(400, "Request body must be a JSON object")
        name = payload.get("model")
        model = self.catalog.model(name) if isinstance(name, str) else None
        if model is not None and model.kind != kind:
            return _error(400, f"{model.name} is not a {kind} model (use {model.submit_path})")
        problems = check_request(payload, self.catalog)
        if problems or model is None:
            return _error(400, problems[0][1] if problems else "model is required")

        if faults.reject:
            self._faults["submit.400"] += 1
            return _error(400, "The prompt was refused by the content policy")
        refusal = self._dice.refusal(payload.get("prompt"))
        if refusal == "submit":
            self._faults["submit.refused"] += 1
            self._refused_submits[key] += 1
            self._refused_payloads[payload_key(payload)] += 1
            return _error(400, REFUSED_PROMPT)
        if refusal == "output":
            faults = dataclasses.replace(faults, fail=True)
        if faults.error_500:
            self._faults["submit.500"] += 1
            return _error(500, "Internal server error")
        retry_after = self.config.retry_after
        too_many = _error(
            429,
            f"Too many concurrent tasks (max {self.config.max_active_tasks})",
            {"Retry-After": str(retry_after)} if retry_after is not None else None,
        )
        if faults.spurious_429:
            self._faults["submit.429"] += 1
            return too_many
        if self._active[key] >= self.config.max_active_tasks:
            return too_many
        request = _with_defaults(payload, model)
        price = price_micros(request, self.catalog)
        if self._balances[key] < price:
            return _error(402, "Insufficient balance")

        answered = "drop" if faults.drop else "garbage" if faults.garbage else "200"
        refused = refusal == "output"
        task = self._accept(
            key, kind, payload, request, model, price, now, faults, answered, refused
        )
        if refused:
            self._faults["task.refused"] += 1
        elif faults.fail:
            self._faults["task.fail"] += 1
        if faults.vanish:
            self._faults["task.vanish"] += 1
        if faults.drop:
            self._faults["submit.drop"] += 1
            return Response(200, {}, DROP)
        answer = _json(
            200, {"generationId": task.generation_id, "taskId": task.task_id, "status": "pending"}
        )
        if faults.garbage:
            self._faults["submit.garbage"] += 1
            return _garbled(answer)
        return answer

    def _accept(
        self,
        key: str,
        kind: str,
        payload: dict[str, Any],
        request: dict[str, Any],
        model: Model,
        price: int,
        now: float,
        faults: SubmitFaults,
        answered: str,
        refused: bool = False,
    ) -> _Task:
        """Create, charge and start a task; it ends by the clock, settled in `_settle`
        (`refused`: it fails for its output's content)."""
        seconds = model.typical_seconds(request.get("duration"))
        seconds *= self.config.time_scale * faults.jitter
        task_id, generation_id = self._new_ids()
        task = _Task(
            task_id=task_id,
            generation_id=generation_id,
            key=key,
            kind=kind,
            payload=payload,
            price_micros=price,
            submitted_at=now,
            ends_at=now + seconds,
            fails=faults.fail,
            answered=answered,
            vanished=faults.vanish,
            refused=refused,
            progress_mode=self.config.progress,
            progress_draw=faults.progress_draw,
        )
        self._tasks[task.task_id] = task
        heapq.heappush(self._unsettled, (task.ends_at, len(self._tasks), task.task_id))
        self._balances[key] -= price
        self._money.append(MoneyEvent(now, key, "charge", price, task.task_id))
        self._active[key] += 1
        self._peak[key] = max(self._peak.get(key, 0), self._active[key])
        self._per_payload[payload_key(payload)] += 1
        self._save()  # before the answer: a task its client knows of is never forgotten
        return task

    def _new_ids(self) -> tuple[str, str]:
        """(task id, generation id) of the next task: from the seed and the number of tasks
        so far, so a seeded sandbox hands out the same ids, and files, every time."""
        seed = f"batchgen-sandbox/{self.config.seed}/task/{len(self._tasks)}".encode()
        digest = hashlib.sha256(seed).digest()
        return digest[:16].hex(), str(uuid.UUID(bytes=digest[16:32], version=4))

    def _poll(self, kind: str, task_id: str, headers: dict[str, str], now: float) -> Response:
        faults = self._dice.poll()
        key = self._authorized_key(headers)
        task = self._tasks.get(task_id)
        if task is not None and _bearer(headers) != task.key:
            self._foreign_polls[task.key] += 1  # whatever the answer: 401 or 404
        if key is None:
            response = _error(401, "Invalid or missing API key")
        elif task is None or task.key != key or task.kind != kind:
            response = _error(404, "Task not found")  # another key's task is not revealed
        elif task.vanished:
            self._faults["poll.vanished"] += 1
            response = _error(404, "Task not found")
        else:
            self._polls[task_id] += 1
            response = self._poll_answer(task, now, faults)
        return response._replace(delay_s=faults.latency_s)

    def _poll_answer(self, task: _Task, now: float, faults: PollFaults) -> Response:
        if faults.drop:
            self._faults["poll.drop"] += 1
            return Response(200, {}, DROP)
        if faults.error_500:
            self._faults["poll.500"] += 1
            return _error(500, "Internal server error")
        status, progress = task.state(now)
        answer: dict[str, Any]
        if status == "completed":
            answer = {"status": status, "resultUrls": [task.result_url(self.base_url)]}
        elif status == "failed":
            message = REFUSED_OUTPUT if task.refused else "Generation failed"
            answer = {"status": status, "errorMessage": message}
        elif progress is None:
            answer = {"status": status}
        else:
            answer = {"status": status, "progress": progress}
        response = _json(200, {**answer, "type": task.kind})
        if faults.garbage:
            self._faults["poll.garbage"] += 1
            return _garbled(response)
        return response

    def _file(self, task_id: str, index: int, ext: str) -> Response:
        """A finished task's result file: no auth, like a CDN; 404 for anything else. The
        file is made outside the lock: the API does not wait while a picture is drawn."""
        with self._lock:
            self._settle(self.clock())
            recipe = self._recipe(task_id, index)
            expected = RESULT_FILES[recipe[0]][0] if recipe else None
            status = "200" if recipe and ext == expected else "404"
            self._responses[FILES_ROUTE][status] += 1
        if recipe is None or ext != expected:
            return _error(404, "Not found")
        return Response(200, {"Content-Type": RESULT_FILES[recipe[0]][1]}, self._made(recipe))

    def result_file(self, task_id: str, index: int = 0) -> bytes | None:
        """The bytes a completed task's result file `index` holds (None: no such file)."""
        with self._lock:
            recipe = self._recipe(task_id, index)
        return None if recipe is None else self._made(recipe)

    def _made(self, recipe: tuple[str, str, str | None, int, int]) -> bytes:
        """The file `recipe` makes, signed when the sandbox plays a signing provider."""
        data = result_file(*recipe)
        return data if self.provider is None else self.provider.sign(recipe, data)

    def _recipe(self, task_id: str, index: int) -> tuple[str, str, str | None, int, int] | None:
        """What makes a completed task's file (media.result_file's arguments): its kind,
        its task id (its look), ratio, seconds and the padding knob; None if no file."""
        task = self._tasks.get(task_id)
        if task is None or task.status(self.clock()) != "completed" or index != 0:
            return None
        model = self.catalog.model(str(task.payload.get("model")))
        seconds = task.payload.get("duration")
        if not isinstance(seconds, int):
            default = model.defaults.get("duration") if model else None
            seconds = default if isinstance(default, int) else VEO_SECONDS
        ratio = task.payload.get("ratio")
        if not isinstance(ratio, str):
            default = model.defaults.get("ratio") if model else None
            ratio = default if isinstance(default, str) else None
        return task.kind, task.task_id, ratio, seconds, self.config.file_bytes

    # -- admin and bookkeeping ---------------------------------------------------------

    def _admin_top_up(self, body: bytes, now: float) -> Response:
        try:
            data = json.loads(body)
            key, micros = str(data["key"]), to_micros(str(data["usd"]))
            if not key or micros < 0:
                raise ValueError(key)
        except (ValueError, TypeError, KeyError, ArithmeticError):
            return _error(400, 'expected {"key": "...", "usd": "12.50"} with usd >= 0')
        balance = self._top_up(key, micros, now)
        return _json(200, {"key": key, "balance_usd": usd(balance)})

    def _top_up(self, key: str, micros: int, now: float) -> int:
        self._balances[key] = self._balances.get(key, 0) + micros
        self._money.append(MoneyEvent(now, key, "top_up", micros))
        self._save()
        return self._balances[key]

    # -- the state file (sandbox/state.py) ---------------------------------------------

    def _restore(self, saved: state_file.SavedState) -> None:
        """Take up a saved state. A task that ended meanwhile is settled (freed, refunded)
        at the next request, as if this process had served it all along."""
        assert self._state_path is not None
        try:
            tasks = [_Task(**record) for record in saved.tasks]
            money = [MoneyEvent(**event) for event in saved.money]
        except TypeError as e:
            raise state_file.StateUnusable(
                f"{self._state_path}: not a usable sandbox state ({e})"
            ) from None
        self._dice.skip_submits(saved.submits)
        self._balances.update(saved.balances)
        self._peak.update(saved.peak_active)
        self._money = money
        for task in tasks:
            self._tasks[task.task_id] = task
            self._per_payload[payload_key(task.payload)] += 1
            if not task.settled:
                heapq.heappush(self._unsettled, (task.ends_at, len(self._tasks), task.task_id))
                self._active[task.key] += 1

    def _save(self) -> None:
        """Write the state file, if any. A sandbox that cannot write it says so once and
        goes on answering: its tasks then end with its process."""
        if self._state_path is None:
            return
        saved = state_file.SavedState(
            self.config.seed, self._dice.submits, dict(self._balances), dict(self._peak)
        )
        for task in self._tasks.values():
            settled, _ = self._encoded_tasks.get(task.task_id, (None, ""))
            if settled is not task.settled:
                self._encoded_tasks[task.task_id] = (task.settled, state_file.encode(asdict(task)))
        for event in self._money[len(self._encoded_money) :]:
            self._encoded_money.append(state_file.encode(asdict(event)))
        tasks = [self._encoded_tasks[task_id][1] for task_id in self._tasks]
        try:
            state_file.write(self._state_path, saved, tasks, self._encoded_money)
        except OSError as e:
            if not self._save_failed:
                print(
                    f"sandbox: cannot save its state in {self._state_path} ({e}): "
                    "its tasks end with this process",
                    file=sys.stderr,
                    flush=True,
                )
            self._save_failed = True

    def _settle(self, now: float) -> None:
        """Free the slots of tasks that ended by `now`, refunding the failed ones."""
        refund = self.catalog.failed_tasks_refunded
        while self._unsettled and self._unsettled[0][0] <= now:
            _, _, task_id = heapq.heappop(self._unsettled)
            task = self._tasks[task_id]
            task.settled = True
            self._active[task.key] -= 1
            if task.fails and refund:
                self._balances[task.key] += task.price_micros
                self._money.append(
                    MoneyEvent(task.ends_at, task.key, "refund", task.price_micros, task_id)
                )

    def _snapshot(self, now: float) -> Truth:
        submissions = [
            Submission(
                task_id=t.task_id,
                generation_id=t.generation_id,
                key=t.key,
                kind=t.kind,
                payload=json.loads(json.dumps(t.payload)),  # a copy the caller may keep
                price_micros=t.price_micros,
                submitted_at=t.submitted_at,
                ends_at=t.ends_at,
                fails=t.fails,
                status=t.status(now),
                answered=t.answered,
                vanished=t.vanished,
                refused=t.refused,
            )
            for t in self._tasks.values()
        ]
        return Truth(
            submissions=submissions,
            money=list(self._money),
            balances=dict(self._balances),
            responses={route: dict(counts) for route, counts in self._responses.items()},
            faults=dict(self._faults),
            peak_active=dict(self._peak),
            polls=dict(self._polls),
            submissions_per_payload=dict(self._per_payload),
            foreign_polls=dict(self._foreign_polls),
            submits_by_key={key: dict(counts) for key, counts in self._submits_by_key.items()},
            refused_submits=dict(self._refused_submits),
            refused_payloads=dict(self._refused_payloads),
        )


def _with_defaults(payload: dict[str, Any], model: Model) -> dict[str, Any]:
    """The request as the service runs it: an omitted field takes the catalog default
    (e.g. a per-second model without `duration` runs, and is priced, at its default)."""
    request = dict(payload)
    for name, value in model.defaults.items():
        if request.get(name) is None and name in model.fields:
            request[name] = value
    return request

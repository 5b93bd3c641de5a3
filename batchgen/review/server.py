"""The review server: the page, its JSON, verdicts and the saved files, on Starlette.

Routes:
    GET  /                      the page (static/index.html); /static/… its CSS and script
    GET  /api/results           the first `limit` jobs (default 200, at most 2,000) grouped
                                by campaign and prompt, the newest campaign first, with a
                                version V; `more` says whether more match. Filters:
                                campaign, status, model, tag, verdict (approved | rejected |
                                unreviewed), reviewer, marks (valid | invalid | none |
                                unread: a saved file's provenance), q (text in the prompt
                                or id). With
                                since=V: {"version": V, "unchanged": true} while nothing
                                changed
    POST /api/verdict           {"campaign", "job_id", "task_id", "verdict": "approved" |
                                "rejected" | null, "note", "reviewer"}: the only write there is
    GET  /files/CAMPAIGN/JOB/N  a saved result file, with byte ranges

Routing, JSON, file responses with Range and static files are Starlette's; uvicorn serves
it (see __init__.py). What is ours is `Guard`, in front of every request:

- Host: a request must name the listener it came to (127.0.0.1 or localhost on the local
  one; on the shared one an IP address or this machine's own name), so a web page on
  another name that resolves here (DNS rebinding) gets nothing;
- the access token, on the shared listener only: `?token=` (the link `--share` prints)
  or the cookie that sets; anything else gets a 401 and nothing more, whatever its source
  (a loopback connection to the shared address is no exception);
- a write must come from the page's own origin (Origin is `http://` + Host) with a JSON
  body, which a page from elsewhere can neither forge nor send without a CORS preflight
  that is never granted.

Files are found through the ledger only (review/files.py). The page's
Content-Security-Policy lets it load scripts and styles from this server only.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import threading
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from importlib import resources
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from batchgen import catalog
from batchgen.errors import LedgerError
from batchgen.ledger import Ledger, VerdictRefused
from batchgen.ledger.base import _first_line
from batchgen.ledger.db import database_errors
from batchgen.ledger.review import ReviewFilters
from batchgen.review.files import content_type, locate
from batchgen.review.results import grouped

PAGE = 200  # results in a first page: enough for a morning, cheap on a million jobs
MAX_LIMIT = 2000  # results in one answer at most (the page asks for more, PAGE at a time)
FILTERS = ("campaign", "status", "model", "tag", "verdict", "reviewer", "marks", "q")
MAX_POST_BYTES = 64 * 1024
MAX_FILE_NUMBER = 10**6  # result files of one job: a handful; more is not a file number
TOKEN_COOKIE = "batchgen_review_token"
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
    " img-src 'self' http: https:; media-src 'self' http: https:;"
    " base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
REFUSED_STATUS = {"unknown": 404, "stale": 409, "invalid": 400}

ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]


class Review:
    """What the page reads and writes, over one ledger (one SQLite connection, shared by
    the server's worker threads under `lock`)."""

    def __init__(self, ledger: Ledger, campaigns: list[str], out_dir: str | Path) -> None:
        self.ledger = ledger
        self.campaigns = campaigns
        self.out_dir = Path(out_dir)
        self.lock = threading.Lock()
        self.instance = secrets.token_hex(4)  # versions of another server's answers never match

    def results(
        self, since: str | None, filters: ReviewFilters, limit: int = PAGE
    ) -> dict[str, Any]:
        """The page's data: the first `limit` results under `filters`, grouped, with the
        review's counts; or, when nothing changed since the version `since`, just that."""
        scope = self.campaigns or None
        with self.lock, self._reached(), self.ledger.snapshot():
            version = f"{self.instance}.{self.ledger.change_marker()}"
            if since == version:
                return {"version": version, "unchanged": True}
            jobs, more = self.ledger.review_page(scope, filters, limit)
            counts = self.ledger.verdict_counts(scope)
            total = sum(self.ledger.counts(scope).values())
            campaigns = self.ledger.select_campaigns(scope)
            reviewers = self.ledger.reviewers()
        return {
            "version": version,
            "ledger": self.ledger.name,  # a URL with its password redacted
            "out": str(self.out_dir),
            "counts": counts,
            "total_jobs": total,
            "shown": len(jobs),
            "more": more,
            "limit": limit,
            "campaigns": campaigns,
            "models": sorted(catalog.load().models),  # the catalog's: a DISTINCT would scan
            "reviewers": reviewers,
            "groups": grouped(jobs, self.out_dir),
        }

    def verdict(self, body: dict[str, Any]) -> dict[str, Any]:
        for name in ("campaign", "job_id", "task_id"):
            if not isinstance(body.get(name), str):
                raise VerdictRefused("invalid", f"{name} is required")
        verdict, note, reviewer = body.get("verdict"), body.get("note"), body.get("reviewer")
        if verdict is not None and not isinstance(verdict, str):
            raise VerdictRefused("invalid", "verdict must be approved, rejected or null")
        if note is not None and not isinstance(note, str):
            raise VerdictRefused("invalid", "note must be text")
        if not isinstance(reviewer, str):
            raise VerdictRefused("invalid", "reviewer (your name) is required")
        if self.campaigns and body["campaign"] not in self.campaigns:
            raise VerdictRefused("unknown", f"campaign {body['campaign']!r} is not under review")
        with self.lock, self._reached():
            return self.ledger.record_verdict(
                body["campaign"], body["job_id"], body["task_id"], verdict, note, reviewer
            )

    def saved_file(self, campaign: str, job_id: str, n: int) -> Path | None:
        if self.campaigns and campaign not in self.campaigns:
            return None
        with self.lock, self._reached():
            record = self.ledger.saved_file(campaign, job_id, n)
        if record is None:
            return None
        return locate(self.out_dir, record["path"], record["size"])

    @contextmanager
    def _reached(self) -> Iterator[None]:
        """A database error (a PostgreSQL server restarted or cut off) as a LedgerError of
        one line, which the page shows before it asks again (on a new connection)."""
        try:
            yield
        except database_errors() as e:
            said = f"{self.ledger.name}: cannot reach the ledger now ({_first_line(e)})"
            raise LedgerError(self.ledger.redact(said)) from e


# -- the guard in front of every request ---------------------------------------------------


@dataclass
class Guard:
    """Which listener a request came to (by the local port it reached), and what that
    listener demands of it: its Host, on the shared one the token, on a write the Origin."""

    local_port: int
    shared_port: int | None = None
    token: str | None = None
    names: set[str] = field(default_factory=set)  # this machine's names, for the shared Host

    def refusal(self, scope: MutableMapping[str, Any]) -> tuple[int, str, dict[str, str]]:
        """(0, "", headers to add) for a request to let through, else (status, why, {})."""
        headers = _headers(scope)
        port = (scope.get("server") or (None, None))[1]
        shared = self.shared_port is not None and port == self.shared_port
        host = headers.get("host", "")
        if not self._host_allowed(host, shared):
            return 421, "this server answers only to its own address", {}
        extra: dict[str, str] = {}
        if shared:
            given = _query_token(scope) or _cookie(headers, TOKEN_COOKIE)
            if not (given and self.token and secrets.compare_digest(given, self.token)):
                return 401, "this shared review page needs the link with its access token", {}
            if _query_token(scope):  # the link: remembered in the browser from now on
                extra["set-cookie"] = (
                    f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
                )
        if scope["method"] not in ("GET", "HEAD"):
            if headers.get("origin") != f"http://{host}" or headers.get(
                "sec-fetch-site", "same-origin"
            ) not in ("same-origin", "none"):
                return 403, "verdicts are taken from the review page only", {}
        return 0, "", extra

    def _host_allowed(self, host: str, shared: bool) -> bool:
        name, _, port = host.rpartition(":")
        expected = self.shared_port if shared else self.local_port
        if not port.isascii() or not port.isdigit() or int(port) != expected:
            return False
        if not shared:
            return name in ("127.0.0.1", "localhost")
        if name in self.names:
            return True
        try:  # an address: no name to rebind
            ipaddress.ip_address(name.removeprefix("[").removesuffix("]"))
        except ValueError:
            return False
        return True


def _headers(scope: MutableMapping[str, Any]) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _query_token(scope: MutableMapping[str, Any]) -> str | None:
    from urllib.parse import parse_qs

    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return (query.get("token") or [None])[0]


def _cookie(headers: dict[str, str], name: str) -> str | None:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(headers.get("cookie", ""))
    except Exception:  # a malformed Cookie header: no token
        return None
    morsel = jar.get(name)
    return morsel.value if morsel else None


class GuardMiddleware:
    """`Guard` as ASGI middleware, and the headers every answer carries."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status, why, extra = self.guard.refusal(scope)
        if status:
            await _error(status, why)(scope, receive, send)
            return

        if scope["path"].startswith("/static/"):
            # asked again each time (answered 304 when unchanged): never an old script
            # with a new page after an upgrade
            extra["cache-control"] = "no-cache"

        async def send_with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    *((k.encode(), v.encode("latin-1")) for k, v in extra.items()),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# -- routes ----------------------------------------------------------------------------------


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    # ASCII JSON: a message may quote what was sent, lone surrogates included
    data = json.dumps({"error": message}).encode()
    return Response(data, status_code=status, media_type="application/json", headers=headers)


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    data = json.dumps(obj, ensure_ascii=False).encode()
    return Response(data, status_code=status, media_type="application/json", headers=headers)


def _number(text: str, low: int, high: int) -> int | None:
    """`text` as a whole number from `low` to `high` written in ASCII digits, else None
    (`²` is a digit to str.isdigit, and int() refuses it; 20 digits overflow SQLite)."""
    if not (text.isascii() and text.isdigit() and len(text) <= len(str(high))):
        return None
    number = int(text)
    return number if low <= number <= high else None


def build_app(review: Review, guard: Guard) -> Starlette:
    """The review page's ASGI application over `review`, behind `guard`."""
    static = resources.files("batchgen.review").joinpath("static")

    def page(request: Request) -> Response:
        data = static.joinpath("index.html").read_bytes()
        return Response(
            data,
            media_type="text/html; charset=utf-8",
            headers={"Cache-Control": "no-cache", "Content-Security-Policy": PAGE_POLICY},
        )

    def results(request: Request) -> Response:
        query = {k: v for k, v in request.query_params.items() if v != ""}
        limit = _number(query.get("limit", str(PAGE)), 1, MAX_LIMIT)
        if limit is None:
            return _error(400, f"limit is a number from 1 to {MAX_LIMIT}")
        values = {("text" if k == "q" else k): query.get(k) for k in FILTERS}
        try:
            answer = review.results(query.get("since"), ReviewFilters(**values), limit)
        except LedgerError as e:
            return _error(503, str(e))
        return _json(answer, headers={"Cache-Control": "no-store"})

    async def verdict(request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return _error(415, "send JSON")
        length = request.headers.get("content-length")
        if length is not None and (_number(length, 0, MAX_POST_BYTES) is None):
            return _error(413, "body too large", {"Connection": "close"})
        data = b""
        async for chunk in request.stream():
            data += chunk
            if len(data) > MAX_POST_BYTES:
                return _error(413, "body too large", {"Connection": "close"})
        try:
            body = json.loads(data or b"null")
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            return _error(400, "send a JSON object")
        try:
            saved = await run_in_threadpool(review.verdict, body)
        except VerdictRefused as e:
            return _error(REFUSED_STATUS.get(e.reason, 400), str(e))
        except LedgerError as e:
            return _error(503, str(e))
        return _json(saved)

    def saved_file(request: Request) -> Response:
        params = request.path_params
        n = _number(params["n"], 0, MAX_FILE_NUMBER)
        if n is None:
            return _error(404, "not found")
        try:
            found = review.saved_file(params["campaign"], params["job_id"], n)
        except LedgerError as e:
            return _error(503, str(e))
        if found is None:
            return _error(404, "no saved file here")
        return FileResponse(
            found, media_type=content_type(found.name), headers={"Cache-Control": "no-cache"}
        )

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        return _error(status, "not found" if status == 404 else "not allowed here")

    app = Starlette(
        routes=[
            Route("/", page),
            Route("/api/results", results),
            Route("/api/verdict", verdict, methods=["POST"]),
            Route("/files/{campaign}/{job_id}/{n}", saved_file),
            Route("/favicon.ico", lambda request: Response(status_code=204)),
            Mount("/static", StaticFiles(packages=[("batchgen.review", "static")])),
        ],
        exception_handlers={404: not_found, 405: not_found},
    )
    app.add_middleware(GuardMiddleware, guard=guard)
    return app

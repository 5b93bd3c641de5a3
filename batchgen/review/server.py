"""The review server: the page, its JSON, verdicts, and the saved files, on 127.0.0.1 only.

Routes:
    GET  /                      the page (static/index.html), /review.css, /review.js
    GET  /api/results           the first `limit` jobs (default 200, at most 2,000) grouped
                                by campaign and prompt, the newest campaign first, with a
                                version V; `more` says whether more match. Filters:
                                campaign, status, model, tag, verdict (approved | rejected |
                                unreviewed), q (text in the prompt or id). With since=V:
                                {"version": V, "unchanged": true} while nothing changed
    POST /api/verdict           {"campaign", "job_id", "task_id", "verdict": "approved" |
                                "rejected" | null, "note"}: the only write there is
    GET  /files/CAMPAIGN/JOB/N  a saved result file, with Range support

Safety: the server listens on 127.0.0.1 only; every request must name this server in its
Host header (so a web page on another name that resolves here, DNS rebinding, gets
nothing); a POST must come from this page's own origin (Origin header) with a JSON body,
which a page from elsewhere can neither forge nor send without a CORS preflight that is
never granted. Files are found through the ledger only (review/files.py). The page's
Content-Security-Policy lets it load scripts and styles from this server only.
"""

from __future__ import annotations

import json
import secrets
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from batchgen import catalog
from batchgen.errors import LedgerError
from batchgen.ledger import Ledger, VerdictRefused
from batchgen.ledger.review import ReviewFilters
from batchgen.review.files import byte_range, content_type, locate
from batchgen.review.results import grouped

PAGE = 200  # results in a first page: enough for a morning, cheap on a million jobs
MAX_LIMIT = 2000  # results in one answer at most (the page asks for more, PAGE at a time)
FILTERS = ("campaign", "status", "model", "tag", "verdict", "q")
MAX_POST_BYTES = 64 * 1024
CHUNK = 1 << 16
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/review.css": ("review.css", "text/css; charset=utf-8"),
    "/review.js": ("review.js", "text/javascript; charset=utf-8"),
}
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
    " img-src 'self' http: https:; media-src 'self' http: https:;"
    " base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
REFUSED_STATUS = {
    "unknown": HTTPStatus.NOT_FOUND,
    "stale": HTTPStatus.CONFLICT,
    "invalid": HTTPStatus.BAD_REQUEST,
}


class ReviewServer(ThreadingHTTPServer):
    """The review page's server over one ledger; `url` is where a browser opens it."""

    daemon_threads = True

    def __init__(
        self, ledger: Ledger, campaigns: list[str], out_dir: str | Path, port: int = 0
    ) -> None:
        self.ledger = ledger
        self.campaigns = campaigns
        self.out_dir = Path(out_dir)
        self.lock = threading.Lock()  # one SQLite connection, shared by the handler threads
        self.token = secrets.token_hex(4)  # versions of another server's answers never match
        super().__init__(("127.0.0.1", port), _Handler)
        self.port = int(self.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/"
        self.origins = {f"http://127.0.0.1:{self.port}", f"http://localhost:{self.port}"}
        self.hosts = {f"127.0.0.1:{self.port}", f"localhost:{self.port}"}

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A browser drops connections all the time (a video seeked, a page closed).
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)

    def results(
        self, since: str | None, filters: ReviewFilters, limit: int = PAGE
    ) -> dict[str, Any]:
        """The page's data: the first `limit` results under `filters`, grouped, with the
        review's counts; or, when nothing changed since the version `since`, just that."""
        scope = self.campaigns or None
        with self.lock, self.ledger.snapshot():
            version = f"{self.token}.{self.ledger.change_marker()}"
            if since == version:
                return {"version": version, "unchanged": True}
            jobs, more = self.ledger.review_page(scope, filters, limit)
            counts = self.ledger.verdict_counts(scope)
            total = sum(self.ledger.counts(scope).values())
            campaigns = self.ledger.select_campaigns(scope)
        return {
            "version": version,
            "ledger": str(self.ledger.path),
            "out": str(self.out_dir),
            "counts": counts,
            "total_jobs": total,
            "shown": len(jobs),
            "more": more,
            "limit": limit,
            "campaigns": campaigns,
            "models": sorted(
                catalog.load().models
            ),  # the catalog's: a ledger-wide DISTINCT would scan it
            "groups": grouped(jobs, self.out_dir),
        }

    def verdict(self, body: dict[str, Any]) -> dict[str, Any]:
        fields = {"campaign": str, "job_id": str, "task_id": str}
        for name, kind in fields.items():
            if not isinstance(body.get(name), kind):
                raise VerdictRefused("invalid", f"{name} is required")
        verdict, note = body.get("verdict"), body.get("note")
        if verdict is not None and not isinstance(verdict, str):
            raise VerdictRefused("invalid", "verdict must be approved, rejected or null")
        if note is not None and not isinstance(note, str):
            raise VerdictRefused("invalid", "note must be text")
        if self.campaigns and body["campaign"] not in self.campaigns:
            raise VerdictRefused("unknown", f"campaign {body['campaign']} is not under review")
        with self.lock:
            return self.ledger.record_verdict(
                body["campaign"], body["job_id"], body["task_id"], verdict, note
            )

    def saved_file(self, campaign: str, job_id: str, n: int) -> Path | None:
        if self.campaigns and campaign not in self.campaigns:
            return None
        with self.lock:
            record = self.ledger.saved_file(campaign, job_id, n)
        if record is None:
            return None
        return locate(self.out_dir, record["path"], record["size"])


class _Handler(BaseHTTPRequestHandler):
    server: ReviewServer
    protocol_version = "HTTP/1.1"
    server_version = "batchgen-review"
    # Headers and body go out in two writes: without this, Nagle's algorithm holds the
    # body until the browser's delayed ACK, ~40 ms on every answer.
    disable_nagle_algorithm = True

    # -- routing -------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._get(head=False)

    def do_HEAD(self) -> None:
        self._get(head=True)

    def do_POST(self) -> None:
        if not self._host_allowed():
            return
        path = urlsplit(self.path).path
        if path != "/api/verdict":
            self._drain()
            self._error(HTTPStatus.NOT_FOUND, "not found")
            return
        if self.headers.get("Origin") not in self.server.origins or self.headers.get(
            "Sec-Fetch-Site", "same-origin"
        ) not in ("same-origin", "none"):
            self._drain()
            self._error(HTTPStatus.FORBIDDEN, "verdicts are taken from the review page only")
            return
        if self.headers.get_content_type() != "application/json":
            self._drain()
            self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send JSON")
            return
        body = self._json_body()
        if body is None:
            return
        try:
            saved = self.server.verdict(body)
        except VerdictRefused as e:
            self._error(REFUSED_STATUS.get(e.reason, HTTPStatus.BAD_REQUEST), str(e))
            return
        except LedgerError as e:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(e))
            return
        self._json(HTTPStatus.OK, saved)

    def _get(self, head: bool) -> None:
        if not self._host_allowed():
            return
        split = urlsplit(self.path)
        path = split.path
        if path in STATIC:
            name, kind = STATIC[path]
            data = resources.files("batchgen.review").joinpath("static", name).read_bytes()
            extra = {"Content-Security-Policy": PAGE_POLICY} if name.endswith(".html") else {}
            self._send(HTTPStatus.OK, data, kind, head, {"Cache-Control": "no-cache", **extra})
        elif path == "/api/results":
            query = {k: v[0] for k, v in parse_qs(split.query).items() if v and v[0] != ""}
            limit = query.get("limit", str(PAGE))
            if not limit.isdigit() or not 1 <= int(limit) <= MAX_LIMIT:
                self._error(HTTPStatus.BAD_REQUEST, f"limit is a number from 1 to {MAX_LIMIT}")
                return
            filters = ReviewFilters(**{("text" if k == "q" else k): query.get(k) for k in FILTERS})
            try:
                answer = self.server.results(query.get("since"), filters, int(limit))
                data = json.dumps(answer, ensure_ascii=False).encode()
            except LedgerError as e:
                self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(e))
                return
            self._send(HTTPStatus.OK, data, "application/json", head, {"Cache-Control": "no-store"})
        elif path.startswith("/files/"):
            self._file(path, head)
        elif path == "/favicon.ico":
            self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon", head)
        else:
            self._error(HTTPStatus.NOT_FOUND, "not found")

    # -- files -----------------------------------------------------------------------------

    def _file(self, path: str, head: bool) -> None:
        parts = path.split("/")[2:]
        if len(parts) != 3 or not parts[2].isdigit():
            self._error(HTTPStatus.NOT_FOUND, "not found")
            return
        campaign, job_id, n = unquote(parts[0]), unquote(parts[1]), int(parts[2])
        found = self.server.saved_file(campaign, job_id, n)
        if found is None:
            self._error(HTTPStatus.NOT_FOUND, "no saved file here")
            return
        try:
            handle = found.open("rb")
        except OSError:
            self._error(HTTPStatus.NOT_FOUND, "no saved file here")
            return
        with handle:
            size = found.stat().st_size
            wanted = byte_range(self.headers.get("Range"), size)
            headers = {"Accept-Ranges": "bytes", "Cache-Control": "no-cache"}
            if wanted == "unsatisfiable":
                headers["Content-Range"] = f"bytes */{size}"
                self._error(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, "range", headers)
                return
            status, first, last = HTTPStatus.OK, 0, size - 1
            if isinstance(wanted, tuple):
                status, (first, last) = HTTPStatus.PARTIAL_CONTENT, wanted
                headers["Content-Range"] = f"bytes {first}-{last}/{size}"
            self._head(status, content_type(found.name), max(0, last - first + 1), headers)
            if head:
                return
            handle.seek(first)
            left = last - first + 1
            try:
                while left > 0:
                    chunk = handle.read(min(CHUNK, left))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    left -= len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the browser seeked elsewhere: normal

    # -- helpers ---------------------------------------------------------------------------

    def _host_allowed(self) -> bool:
        if self.headers.get("Host") in self.server.hosts:
            return True
        self._drain()
        self._error(HTTPStatus.MISDIRECTED_REQUEST, "this server answers to 127.0.0.1 only")
        return False

    def _drain(self) -> None:
        """Read away a request body we will not use, so the connection stays in step."""
        length = self._length()
        if length is None or length > MAX_POST_BYTES:
            self.close_connection = True
        elif length:
            self.rfile.read(length)

    def _length(self) -> int | None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return None
        return length if length >= 0 else None

    def _json_body(self) -> dict[str, Any] | None:
        length = self._length()
        if length is None or length > MAX_POST_BYTES:
            self.close_connection = True
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large")
            return None
        try:
            body = json.loads(self.rfile.read(length) or b"null")
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            self._error(HTTPStatus.BAD_REQUEST, "send a JSON object")
            return None
        return body

    def _head(
        self, status: int, kind: str, length: int, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(length))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            # Said, not only done: a client that reused this connection for its next
            # request would find it closed under that request.
            self.send_header("Connection", "close")
        self.end_headers()

    def _send(
        self,
        status: int,
        data: bytes,
        kind: str,
        head: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._head(status, kind, len(data), headers)
        if not head:
            self.wfile.write(data)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode(), "application/json")

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        data = json.dumps({"error": message}, ensure_ascii=False).encode()
        self._send(status, data, "application/json", self.command == "HEAD", headers)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a page polls every few seconds: no line per request

    def log_error(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"review: {format % args}\n")

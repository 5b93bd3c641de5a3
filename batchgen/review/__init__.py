"""`batchgen review`: the morning review (PRODUCT §12), a web page of the results.

The server (server.py) is a Starlette application served by uvicorn, on 127.0.0.1 and,
with `--share`, on a second address behind an access token. The page is plain HTML, CSS
and JavaScript shipped in static/: nothing is fetched from the internet, so it works
offline and in a locked-down office, and there is no build step. It reads the ledger
(results.py shapes what the page shows), serves saved files (files.py decides which), and
writes only verdicts, notes and reviewer names (the ledger's `verdicts`).
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import socket
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from batchgen.errors import BatchgenError
from batchgen.ledger import Ledger
from batchgen.review.server import Guard, Review, build_app

DEFAULT_PORT = 8766  # beside the sandbox's 8765
DEFAULT_BIND = "0.0.0.0"  # --share: every interface, so a teammate on the LAN reaches it

__all__ = ["DEFAULT_BIND", "DEFAULT_PORT", "ReviewServer", "main", "open_review"]


class ReviewServer:
    """The review page served by uvicorn in a thread, on sockets bound when it is made:
    127.0.0.1:`port`, and with `share` (HOST, PORT) a second listener there whose every
    request needs the access token. `url` and `share_url` are what a browser opens."""

    def __init__(self, review: Review, port: int = 0, share: tuple[str, int] | None = None) -> None:
        self.review = review
        self.ledger = review.ledger
        self.sockets = [_listen("127.0.0.1", port)]
        self.port = int(self.sockets[0].getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}/"
        self.share_url: str | None = None
        guard = Guard(local_port=self.port)
        if share is not None:
            host, share_port = share
            try:
                self.sockets.append(_listen(host, share_port))
            except BaseException:
                self.sockets[0].close()
                raise
            guard.shared_port = int(self.sockets[1].getsockname()[1])
            guard.token = secrets.token_urlsafe(24)
            shown = _link_host(host)
            guard.names = {socket.gethostname(), socket.getfqdn(), shown} - {""}
            name = f"[{shown}]" if ":" in shown else shown
            self.share_url = f"http://{name}:{guard.shared_port}/?token={guard.token}"
        self.guard = guard
        self.app = build_app(review, guard)
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=2,  # a video being streamed does not hold the exit
        )
        self.server = uvicorn.Server(config)
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        """Serve in a thread of its own (the sockets already take connections)."""

        def serve() -> None:
            asyncio.run(self.server.serve(sockets=self.sockets))

        self.thread = threading.Thread(target=serve, name="review-server", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop serving, close the sockets and the ledger."""
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join()
        for sock in self.sockets:
            sock.close()
        self.ledger.close()


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (IPv6 when the host is an IPv6 address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP said, not left 0: asyncio turns Nagle's algorithm off only on sockets
    # that say so, and with it on, every answer waited ~40 ms for the browser's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise BatchgenError(
            f"cannot listen on {host}:{port}: {e.strerror or e} (try another --port or "
            "--bind, or port 0 for any free one)"
        ) from None
    sock.setblocking(False)
    return sock


def _link_host(host: str) -> str:
    """The address a teammate types for a listener on `host`: for every interface
    (0.0.0.0, ::), this machine's address on its outward route (found without sending
    anything), else its name."""
    if host not in ("0.0.0.0", "::", ""):
        return host
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: a route is chosen, no packet leaves
        address = str(probe.getsockname()[0])
    except OSError:
        address = ""
    finally:
        probe.close()
    return address if address and address != "0.0.0.0" else socket.gethostname()


def parse_bind(text: str, port: int) -> tuple[str, int]:
    """`--bind HOST[:PORT]` as (host, port); without a port, the one after the local
    page's (`port` + 1), or any free one when the local port is any free one (0)."""
    if text.startswith("["):  # [IPv6] or [IPv6]:PORT
        host, _, rest = text[1:].partition("]")
        given = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, given = text.partition(":")
    else:  # a name, an IPv4 address, or a bare IPv6 one
        host, given = text, ""
    host = host or DEFAULT_BIND
    if given:
        if not (given.isascii() and given.isdigit() and len(given) <= 5 and int(given) <= 65535):
            raise BatchgenError(f"--bind {text}: the port must be a number from 0 to 65535")
        return host, int(given)
    return host, (port + 1 if port else 0)


def open_review(
    ledger_path: str | Path,
    campaigns: list[str],
    out_dir: str | Path,
    port: int = 0,
    share: tuple[str, int] | None = None,
) -> ReviewServer:
    """A review server over the ledger, listening (call `start` to serve)."""
    ledger = Ledger(ledger_path, create=False)
    try:
        selected = ledger.select_campaigns(campaigns) if campaigns else []
        return ReviewServer(Review(ledger, selected, out_dir), port, share)
    except BaseException:
        ledger.close()
        raise


def main(
    ledger_path: str | Path,
    campaigns: list[str],
    out_dir: str | Path,
    port: int,
    share: tuple[str, int] | None = None,
) -> None:
    """Serve the review page until Ctrl-C or SIGTERM; its address (and with `share`, the
    shared link) go to stdout."""
    server = open_review(ledger_path, campaigns, out_dir, port, share)
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous: dict[int, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, request_stop)
    server.start()
    try:
        print(f"review page: {server.url}", flush=True)
        if server.share_url:
            print(f"shared review page: {server.share_url}", flush=True)
        print(
            f"ledger {server.ledger.name}, files from {out_dir}/; only verdicts, notes and "
            "reviewer names are written. Ctrl-C to stop.",
            file=sys.stderr,
            flush=True,
        )
        if server.share_url:
            print(
                "anyone with the shared link can see every result and give verdicts; it "
                "travels in plain HTTP (no TLS): share it on a network you trust.",
                file=sys.stderr,
                flush=True,
            )
        while not stop.wait(0.2):
            pass
    finally:
        server.stop()
        for restored, handler in previous.items():
            signal.signal(restored, handler)
        print("review stopped", file=sys.stderr, flush=True)

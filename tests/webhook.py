"""Notification targets for tests, on 127.0.0.1: a JSON webhook that records every message
Apprise posts to it (`json://127.0.0.1:PORT/hook`), and targets that misbehave: one that
refuses connections, one that accepts and never answers, one that answers a byte at a
time for ever, and one whose connections never open (as an unreachable host's)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Webhook:
    """A JSON webhook: `messages` holds each POST's path and JSON body, in order."""

    def __init__(self, status: int = 200) -> None:
        self.messages: list[dict[str, Any]] = []
        self.status = status
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                size = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(size) or b"null")
                hook.messages.append({"path": self.path, **body})
                self.send_response(hook.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, path: str = "/hook") -> str:
        """The Apprise URL of this webhook: `json://` posts a JSON object over http."""
        return f"json://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def webhook(status: int = 200) -> Iterator[Webhook]:
    hook = Webhook(status)
    try:
        yield hook
    finally:
        hook.stop()


# Bound and never listening, for the whole test session: their ports refuse every
# connection, and no other server (of this process or of a parallel test worker) gets them.
_REFUSING: list[socket.socket] = []


def refusing_url() -> str:
    """A port nothing listens on: every connection is refused at once."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    _REFUSING.append(probe)
    return f"json://127.0.0.1:{probe.getsockname()[1]}/hook"


@contextmanager
def silent_target() -> Iterator[str]:
    """Accepts each connection, reads the request, never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"json://127.0.0.1:{server.getsockname()[1]}/hook"
    finally:
        stop.set()
        thread.join(timeout=5)
        for connection in held:
            connection.close()
        server.close()


@contextmanager
def trickling_target(every: float = 0.5) -> Iterator[str]:
    """Answers a header line every `every` seconds, for ever: each read gets something
    within any read timeout, so only a deadline on the whole call can end it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    stop = threading.Event()

    def serve(connection: socket.socket) -> None:
        with connection:
            try:
                connection.recv(65536)
                connection.sendall(b"HTTP/1.1 200 OK\r\n")
                while not stop.wait(every):
                    connection.sendall(b"X-Slow: yes\r\n")
            except OSError:
                return

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                connection = server.accept()[0]
            except OSError:
                continue
            threading.Thread(target=serve, args=(connection,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"json://127.0.0.1:{server.getsockname()[1]}/hook"
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


@contextmanager
def unreachable_target() -> Iterator[str]:
    """A port whose connections never open, as a host that drops packets: it listens with
    its backlog full and accepts nothing, so the kernel drops every new SYN."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        try:
            filler.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(filler)
    try:
        yield f"json://127.0.0.1:{port}/hook"
    finally:
        for filler in fillers:
            filler.close()
        server.close()

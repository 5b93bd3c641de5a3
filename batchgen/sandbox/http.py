"""Serve a `Sandbox` over real HTTP/1.1 on 127.0.0.1, in a background thread.

Keep-alive is supported (batchgen's httpx client reuses connections), a DROP closes the
socket without writing a byte, and `stop()` also closes idle keep-alive connections so a
stopped sandbox really stops answering.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from batchgen.sandbox.service import Drop, Response, Sandbox, Stream

MAX_BODY_BYTES = 1_000_000  # a generate request is small; refuse anything absurd


class _Server(ThreadingHTTPServer):
    """A threading HTTP server that remembers its open connections, to close them on stop."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sandbox: Sandbox, verbose: bool) -> None:
        self.sandbox = sandbox
        self.verbose = verbose
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that hangs up (e.g. its read timeout is shorter than the latency knob)
        # is normal here, not worth a traceback
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            if self.verbose:
                sys.stderr.write(f"sandbox {client_address[0]} hung up: {sys.exc_info()[1]}\n")
            return
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    # Headers and body go out as separate writes: without TCP_NODELAY, Nagle's algorithm
    # holds the body back ~40 ms behind the client's delayed ACK, on every answer.
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def do_PUT(self) -> None:
        self._answer()

    def do_PATCH(self) -> None:
        self._answer()

    def do_DELETE(self) -> None:
        self._answer()

    def _answer(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self.close_connection = True
            self.send_error(413 if length > 0 else 400)
            return
        body = self.rfile.read(length) if length else b""
        try:
            response = self.server.sandbox.handle(self.command, self.path, dict(self.headers), body)
        except Exception as exc:  # a sandbox bug: say so loudly, answer like a server would
            traceback.print_exc()
            message = json.dumps({"error": f"sandbox bug: {exc!r}"}).encode()
            response = Response(500, {"Content-Type": "application/json"}, message)
        if response.delay_s > 0:
            time.sleep(response.delay_s)
        if isinstance(response.body, Drop):
            # a dropped connection: the request was handled, the client gets no answer
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.log_message('"%s" dropped', self.requestline)
            return
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if isinstance(response.body, Stream):
            self._stream(response.body)
            return
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    def _stream(self, body: Stream) -> None:
        self.send_header("Content-Length", str(body.length))
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()
        try:
            for chunk in body.chunks:
                self.wfile.write(chunk)
                self.wfile.flush()
        except OSError:  # the client hung up (its deadline, an interrupt): normal here
            pass

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            sys.stderr.write(f"sandbox {self.address_string()} {format % args}\n")


class Served:
    """A sandbox being served: its `base_url`; `stop()` ends it (also a context manager)."""

    def __init__(self, sandbox: Sandbox, server: _Server, thread: threading.Thread) -> None:
        self.sandbox = sandbox
        self._server = server
        self._thread = thread
        host, port = server.server_address[:2]
        self.host = str(host)
        self.port = int(port)
        self.base_url = f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        """Stop accepting, close every open connection, and wait for the server thread."""
        if not self._thread.is_alive():
            return
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Served:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve(
    sandbox: Sandbox, host: str = "127.0.0.1", port: int = 0, verbose: bool = False
) -> Served:
    """Serve `sandbox` on host:port (0 = any free port) in a daemon thread; return at once.

    The sandbox's `base_url` is set to the served address so result URLs point back here.
    """
    server = _Server((host, port), sandbox, verbose)
    served_thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},  # stop() returns within ~50 ms
        name=f"batchgen-sandbox-{server.server_address[1]}",
        daemon=True,
    )
    served = Served(sandbox, server, served_thread)
    sandbox.base_url = served.base_url
    served_thread.start()
    return served

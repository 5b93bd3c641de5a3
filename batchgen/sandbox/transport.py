"""The sandbox as an `httpx.MockTransport`: client unit tests without sockets or threads.

Same answers as over HTTP, except that latency is not waited for, and a DROP raises the
error httpx raises when a real server closes the connection without answering.
"""

from __future__ import annotations

import httpx

from batchgen.sandbox.service import Drop, Sandbox, Stream


def mock_transport(sandbox: Sandbox) -> httpx.MockTransport:
    """An httpx transport that hands every request to `sandbox.handle`."""

    def handler(request: httpx.Request) -> httpx.Response:
        target = request.url.raw_path.decode("ascii")
        response = sandbox.handle(request.method, target, dict(request.headers), request.read())
        if isinstance(response.body, Drop):
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            )
        body = response.body
        content = b"".join(body.chunks) if isinstance(body, Stream) else body
        return httpx.Response(response.status, headers=response.headers, content=content)

    return httpx.MockTransport(handler)

"""The okaypic HTTP client: sends requests and reports how far each got, never deciding.

Deciding what an answer means is `outcomes`' job; this module only tells apart a request
that never left (connect errors) from one that left and got no usable answer.

Every request has three deadlines (PRODUCT.md §6): to connect, for each read, and for the
whole request, so an answer trickling in a byte at a time cannot hold a slot, a run or a
Ctrl-C for ever. A request past its whole deadline had left: its outcome is unknown.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import httpx

from batchgen.keys import Redactor
from batchgen.outcomes import Answer, Transport

MAX_BODY = 1_000_000  # an answer larger than this is not one the API documents
USER_AGENT = "batchgen"
CONNECT_TIMEOUT = 10.0  # seconds to open a connection
READ_TIMEOUT = 60.0  # seconds between two reads of an answer
REQUEST_DEADLINE = 90.0  # seconds for the whole request, however the answer trickles in


class Client:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        deadline: float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        redactor: Redactor | None = None,
    ):
        # Read at call time, not import time: a test may tune the module's values.
        connect_timeout = CONNECT_TIMEOUT if connect_timeout is None else connect_timeout
        read_timeout = READ_TIMEOUT if read_timeout is None else read_timeout
        self.deadline = REQUEST_DEADLINE if deadline is None else deadline
        # Every answer is handed on without the key: a service that echoes the bearer
        # token in a message must not get it stored or shown.
        self._redact = redactor if redactor is not None else Redactor()
        self._redact.add(api_key)
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT},
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout, pool=None),
            transport=transport,
            follow_redirects=False,
        )

    async def submit(self, path: str, body: dict[str, Any]) -> Answer:
        return self._redacted(await self._send("POST", path, json=body))

    async def poll(self, path: str) -> Answer:
        return self._redacted(await self._send("GET", path))

    def _redacted(self, answer: Answer) -> Answer:
        return dataclasses.replace(
            answer,
            body=self._redact.bytes(answer.body),
            error=self._redact.text(answer.error),
            retry_after=self._redact.text(answer.retry_after),
            location=self._redact.text(answer.location),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, path: str, **kwargs: Any) -> Answer:
        try:
            async with asyncio.timeout(self.deadline):
                return await self._exchange(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as e:
            return Answer(Transport.NOT_SENT, error=_describe(e))
        except (httpx.TransportError, httpx.DecodingError) as e:
            # Read/write timeouts, resets, a server that hung up: the request left.
            return Answer(Transport.LOST, error=_describe(e))
        except TimeoutError:
            # Connecting has its own, shorter timeout: past the whole deadline, it had left.
            return Answer(Transport.LOST, error=f"no whole answer within {self.deadline:g} s")

    async def _exchange(self, method: str, path: str, **kwargs: Any) -> Answer:
        async with self._http.stream(method, path, **kwargs) as response:
            body = b""
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_BODY:
                    return Answer(
                        Transport.ANSWERED, response.status_code, b"", error="answer too large"
                    )
            return Answer(
                Transport.ANSWERED,
                response.status_code,
                body,
                retry_after=response.headers.get("Retry-After"),
                location=response.headers.get("Location"),
            )


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"[:300] if str(error) else type(error).__name__

"""A keep-alive HTTP/1.1 client for rng and hasher: one connection per mining loop.

Hand-made on asyncio and httptools (the parser uvicorn uses) rather than a
general client, because at batch=1 a hash costs two calls and the client's own
per-call overhead decides the hash rate: this one writes a prebuilt request head
and parses the answer in C, at half aiohttp's CPU per call (README, "Hot path").

Each call has a total deadline (connect, send and the whole answer), not a
per-read timeout, and an answer larger than the caller expects is cut off at the
limit: a trickling, lying or flooding upstream costs one bounded, counted error.
Redirects are not followed.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from typing import cast
from urllib.parse import urlsplit

import httptools

# Extra headers for one call (method, url, body), e.g. {"Authorization": ...};
# asked per call because tokens expire.
AuthHeaders = Callable[[str, str, bytes | None], Awaitable[dict[str, str]]]


class UpstreamError(Exception):
    """The upstream failed, was too slow, or answered outside the contract."""


class _Closed(Exception):
    """The connection closed before any of the answer came (a stale keep-alive)."""


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection carrying one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.answer: asyncio.Future[tuple[int, bytes]] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.body: list[bytes] = []
        self.limit = 0
        self.size = 0
        self.started = False  # a byte of the answer has arrived
        self.reusable = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.started = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(UpstreamError(f"malformed HTTP answer: {e}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.started:
            self._fail(UpstreamError("connection closed in the middle of the answer"))
        else:
            self._fail(_Closed())

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-length" and value.strip().isdigit():
            if int(value) > self.limit:
                self._fail(UpstreamError(f"answer of {int(value)} bytes, over {self.limit}"))

    def on_headers_complete(self) -> None:
        self.reusable = self.parser.should_keep_alive()

    def on_body(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            self._fail(UpstreamError(f"answer over {self.limit} bytes"))
        else:
            self.body.append(data)

    def on_message_complete(self) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_result((self.parser.get_status_code(), b"".join(self.body)))

    # our side
    def _fail(self, error: Exception) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(error)

    def _expire(self, seconds: float) -> None:
        self._fail(UpstreamError(f"no complete answer in {seconds:.3g} s"))

    async def exchange(
        self, request: bytes, body: bytes | None, limit: int, seconds: float
    ) -> tuple[int, bytes]:
        """Send one request and wait for its whole answer, `seconds` at most."""
        if self.transport is None:
            raise _Closed()
        loop = asyncio.get_running_loop()
        self.answer = loop.create_future()
        self.body, self.limit, self.size, self.started = [], limit, 0, False
        # A timer on the connection rather than asyncio.timeout(): a fraction of
        # its cost, on the hottest path there is.
        self.timer = loop.call_later(seconds, self._expire, seconds)
        try:
            # One write, so one send() to the kernel: a small body is copied to
            # its head; a large one goes with it as a second buffer of one writev.
            if not body:
                self.transport.write(request)
            elif len(body) < 16384:
                self.transport.write(request + body)
            else:
                self.transport.writelines((request, body))
            return await self.answer
        finally:
            self.timer.cancel()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()
            self.transport = None


class Upstream:
    """rng or hasher at `url`, called by one mining loop at a time."""

    def __init__(self, name: str, url: str, timeout: float, auth: AuthHeaders | None = None,
                 headers: dict[str, str] | None = None):
        """`headers` go with every call (the invocation's traceparent): they are
        part of the prebuilt head, so they cost nothing per call."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{name} URL must be http(s)://host[:port][/path], got {url!r}")
        self.name, self.timeout, self.auth = name, timeout, auth
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.tls = ssl.create_default_context() if parts.scheme == "https" else None
        self.prefix = parts.path.rstrip("/")
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.host_header = parts.netloc.encode()
        self.connection: _Connection | None = None
        self.heads: dict[tuple[str, str, int], bytes] = {}  # prebuilt, when no auth
        self.extra = b"".join(f"\r\n{k}: {v}".encode() for k, v in (headers or {}).items())

    async def call(
        self, method: str, path: str, body: bytes | None = None, *, limit: int,
        timeout: float | None = None,
    ) -> bytes:
        """The body of a 200 answer; anything else raises UpstreamError.

        `limit` caps the answer's size; the whole call ends within `timeout`
        (default: this upstream's), however the upstream behaves.
        """
        seconds = self.timeout if timeout is None else max(0.001, timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        try:
            head = self.heads.get((method, path, -1 if body is None else len(body)))
            if head is None:
                head = await self._head(method, path, body, deadline)
            status, data = await self._send(head, body, limit, deadline)
        except (TimeoutError, UpstreamError, OSError, ssl.SSLError) as e:
            self.close()
            reason = f"no complete answer in {seconds:.3g} s" if isinstance(e, TimeoutError) \
                else str(e) or repr(e)
            raise UpstreamError(f"{self.name}: {method} {path}: {reason}") from None
        if status != 200:
            raise UpstreamError(f"{self.name}: {method} {path}: HTTP {status} {data[:200]!r}")
        return data

    async def _send(
        self, head: bytes, body: bytes | None, limit: int, deadline: float
    ) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            reused = self.connection is not None
            if self.connection is None:
                async with asyncio.timeout_at(deadline):
                    _, self.connection = await loop.create_connection(
                        _Connection, self.host, self.port, ssl=self.tls,
                        server_hostname=self.host if self.tls else None,
                    )
            connection = self.connection
            try:
                answer = await connection.exchange(head, body, limit,
                                                   max(0.001, deadline - loop.time()))
            except _Closed:
                # The server closed an idle keep-alive connection as it was reused:
                # none of the request was processed, so sending it again is safe.
                self.close()
                if reused and attempt == 1:
                    continue
                raise UpstreamError("connection closed before an answer") from None
            if not connection.reusable:
                self.close()
            return answer
        raise AssertionError("unreachable")

    async def _head(self, method: str, path: str, body: bytes | None, deadline: float) -> bytes:
        lines = [f"{method} {self.prefix}{path} HTTP/1.1".encode(),
                 b"Host: " + self.host_header + self.extra]
        if body is not None:
            lines += [b"Content-Type: application/octet-stream",
                      b"Content-Length: %d" % len(body)]
        if self.auth is not None:
            async with asyncio.timeout_at(deadline):
                extra = await self.auth(method, self.origin + self.prefix + path, body)
            lines += [f"{name}: {value}".encode() for name, value in extra.items()]
        head = b"\r\n".join(lines) + b"\r\n\r\n"
        if self.auth is None and len(self.heads) < 16:
            self.heads[(method, path, -1 if body is None else len(body))] = head
        return head

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

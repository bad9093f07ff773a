"""The HTTP server's limits, set from inside the function's folder.

`functions-framework --target NAME` serves an async function with gunicorn running
one `uvicorn_worker.UvicornWorker` (uvicorn with uvloop and httptools). That path
reads no server settings from the environment: Functions Framework's gunicorn
application ignores GUNICORN_CMD_ARGS, and gunicorn's limit_request_* bind only
gunicorn's own parsers. So main.py calls configure() when it is imported, in the
gunicorn master before it forks the worker, and the worker's uvicorn gets:

- timeout_keep_alive: an idle keep-alive connection closes after HTTP_KEEP_ALIVE s;
- limit_concurrency: when HTTP_MAX_CONNECTIONS connections all have a request in
  flight, a new one is answered 503 (the limit is at most half the process's file
  descriptors, so that accepting a connection never fails for want of one);
- http: uvicorn's httptools protocol plus what it lacks, written here because
  uvicorn has none of it for httptools (only its slower h11 protocol limits a head):
  a request head over HTTP_MAX_HEAD bytes gets 431; a connection with no request
  in progress for HTTP_HEAD_TIMEOUT s is closed (408 if a head was begun); at
  HTTP_MAX_CONNECTIONS, the oldest such connection is closed to make room (uvicorn
  refuses requests, not connections, so idle ones could hold every descriptor).
  Every refusal of the server's own is JSON, as the function's are.

This file is the same in every function folder (each deploys alone); a test checks it.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import cast

from uvicorn._types import ASGI3Application, ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)


def env_number(name: str, default: float, low: float, high: float) -> float:
    """A number from the environment, or the default; out of [low, high], an error
    that names the variable, when the function is loaded."""
    raw = os.environ.get(name)
    try:
        value = default if raw is None else float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:
        raise ValueError(f"{name} must be a number from {low:g} to {high:g}, got {raw!r}")
    return value


MAX_HEAD = int(env_number("HTTP_MAX_HEAD", 16 * 1024, 1024, 1 << 20))  # h11's default
HEAD_TIMEOUT = env_number("HTTP_HEAD_TIMEOUT", 10, 0.1, 3600)
KEEP_ALIVE = env_number("HTTP_KEEP_ALIVE", 5, 0.1, 3600)  # uvicorn's default
MAX_CONNECTIONS = int(env_number("HTTP_MAX_CONNECTIONS", 1000, 2, 1_000_000))
SWEEP = 0.5  # seconds between looks for connections idle too long
# After a refusal, what the client still sends is read and dropped for up to
# LINGER s and LINGER_BYTES before the close, so that its kernel gets the answer
# rather than a reset.
LINGER, LINGER_BYTES = 2.0, 8 << 20

# The connections with no request in progress, oldest first, with since when.
_idle: dict[LimitedHttpToolsProtocol, float] = {}
_sweeping = False


def configure() -> None:
    """Give uvicorn, under gunicorn, the settings and the protocol above."""
    global MAX_CONNECTIONS
    try:
        import resource

        from uvicorn_worker import UvicornWorker  # type: ignore[import-untyped]
    except ImportError:  # no gunicorn (Windows): uvicorn runs with its defaults
        return
    descriptors = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if descriptors != resource.RLIM_INFINITY:
        MAX_CONNECTIONS = max(2, min(MAX_CONNECTIONS, descriptors // 2))
    UvicornWorker.CONFIG_KWARGS = {
        **UvicornWorker.CONFIG_KWARGS,
        "http": LimitedHttpToolsProtocol,
        "timeout_keep_alive": KEEP_ALIVE,
        # uvicorn counts connections too: the idle ones over the limit are closed first.
        "limit_concurrency": MAX_CONNECTIONS + 1,
    }


def _answer(status: int, message: str, headers: list[tuple[bytes, bytes]]) -> bytes:
    body = json.dumps({"error": message}).encode()
    head = [STATUS_LINE[status], *(b"%s: %s\r\n" % header for header in headers)]
    head.append(b"content-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n" % len(body))
    return b"".join(head) + body


async def _too_busy(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    """uvicorn's answer over limit_concurrency, as JSON."""
    body = json.dumps({"error": f"over {MAX_CONNECTIONS} requests at once; retry"}).encode()
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
        (b"connection", b"close"), (b"retry-after", b"1")]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _sweep(loop: asyncio.AbstractEventLoop) -> None:
    """Close the connections idle for over HEAD_TIMEOUT: a timer per connection would
    cost every request two timer operations."""
    expired = loop.time() - HEAD_TIMEOUT
    while _idle:
        connection, since = next(iter(_idle.items()))
        if since > expired:
            break
        connection.head_timeout()
    loop.call_later(SWEEP, _sweep, loop)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    head_left = MAX_HEAD  # bytes the request head now being read may still take
    in_body = False
    refused = False  # answered: what comes next is dropped until the close
    dropped = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        global _sweeping
        super().connection_made(transport)
        if not _sweeping:
            _sweeping = True
            _sweep(self.loop)
        self.idle()
        while len(self.connections) > MAX_CONNECTIONS and (oldest := next(iter(_idle))) is not self:
            oldest.drop()

    def connection_lost(self, exc: Exception | None) -> None:
        _idle.pop(self, None)
        super().connection_lost(exc)

    def idle(self) -> None:
        _idle.pop(self, None)  # to the end: _idle stays in the order of `since`
        _idle[self] = self.loop.time()

    def drop(self) -> None:
        _idle.pop(self, None)
        self.connections.discard(self)  # now, not when the loop gets to connection_lost
        self.transport.close()

    def head_timeout(self) -> None:
        if self.refused or self.head_left == MAX_HEAD:
            self.drop()
        else:
            self.refuse(408, f"request head not received within {HEAD_TIMEOUT:g} s")

    def data_received(self, data: bytes) -> None:
        room = MAX_HEAD if self.in_body else self.head_left
        if len(data) <= room and not self.refused:
            if not self.in_body:
                self.head_left -= len(data)
            super().data_received(data)
        else:
            self.data_sliced(memoryview(data))

    def data_sliced(self, data: memoryview) -> None:
        """Parse at most what the head's limit has room for at a time (and no more
        than a head's worth after a body, which may end inside it): httptools has
        no limit of its own and holds the whole head."""
        while data and not self.refused and not self.transport.is_closing():
            room = MAX_HEAD if self.in_body else self.head_left
            if not room:
                self.refuse(431, f"request head over the limit of {MAX_HEAD} bytes")
                break
            if not self.in_body:
                self.head_left -= min(room, len(data))
            super().data_received(cast(bytes, data[:room]))
            data = data[room:]
        if self.refused:
            self.dropped += len(data)
            if self.dropped > LINGER_BYTES:
                self.drop()

    def on_headers_complete(self) -> None:
        _idle.pop(self, None)
        self.in_body = True
        super().on_headers_complete()
        if self.cycle is not None:
            self.cycle.transport = _LingeringClose(self)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self.in_body, self.head_left = False, MAX_HEAD
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.cycle.response_complete and not self.transport.is_closing():
            _idle[self] = self.loop.time()  # not in _idle since its head came

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        super()._start_asgi_task(cycle, _too_busy if app is service_unavailable else app)

    def send_400_response(self, msg: str) -> None:
        self.refuse(400, "malformed HTTP request")

    def refuse(self, status: int, message: str) -> None:
        self.refused = True
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if cycle.response_started or self.pipeline or not self.in_body:
                self.drop()  # not this request's answer, or one is on its way
                return
            cycle.disconnected = True  # its body is refused: the function's answer is not sent
            cycle.message_event.set()
        self.transport.write(_answer(status, message, self.server_state.default_headers))
        self.linger()

    def linger(self) -> None:
        """Send a FIN after the answer, then read and drop what the client still
        sends for up to LINGER s and LINGER_BYTES before the close."""
        self.refused = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.flow.resume_reading()  # the body that piled up unread paused it
        self.idle()  # may be closed to make room, as idle ones are
        self.loop.call_later(LINGER, self.drop)


class _LingeringClose:
    """The transport as a request's cycle sees it. The function closes the
    connection after an answer it gave before reading the whole body (a 413 with
    Connection: close); a plain close would reset it, and the reset can take the
    answer with it, so the close lingers (LimitedHttpToolsProtocol.linger)."""

    __slots__ = ("protocol", "transport")

    def __init__(self, protocol: LimitedHttpToolsProtocol) -> None:
        self.protocol, self.transport = protocol, protocol.transport

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        if self.protocol.in_body and not self.protocol.refused:
            self.protocol.linger()
        else:
            self.transport.close()

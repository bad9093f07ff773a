"""The front door's bytes: one URL per function, a proxy to its instances.

The rules (which instance, the line, the timeouts) are door.py's; this module
moves bytes and asks it. Balancing per request, not per connection, is what makes
"scale rng" work in the DockerCoins lesson: a worker loop keeps one keep-alive
connection, and instances sharing a listening socket would pin it to one.

Everything runs in callbacks on the platform's one event loop, no task per
request: the request head is parsed (httptools) and re-sent, the body and the
answer pass through as they come, with back-pressure both ways. Memory is
bounded by reading a connection only while its request needs it: a client that
pipelines requests without reading the answers is read one request at a time,
and TCP holds the rest. What the door answers itself is JSON: 431 for a head
over 64 KiB, 400 for a malformed request, 501 for an upgrade, 502 when an
instance fails before answering, 429 with Retry-After when no instance frees up
in time or the line is full (throttled, as Cloud Run answers), 504
when the instance takes longer than the function's timeout.
"""

from __future__ import annotations

import asyncio
import json
import select
import time
from collections import deque
from collections.abc import Callable
from typing import cast

import httptools

from brkcoin.platform.door import Door, Instance, LineFull, Ticket

__all__ = ["FrontDoor", "Instance"]

MAX_HEAD = 64 * 1024
HEAD_TIMEOUT = 30.0  # seconds for a client to send a whole request head (or idle between)
SLICE = 16 * 1024  # bytes parsed at a time: what one pipelining client can make us hold
IDLE_REUSE = 1.0  # an idle instance connection older than this is not reused: the
#                   instance (uvicorn's keep-alive, 5 s) may be closing it right now
# A refused client's unread body is read and dropped for up to LINGER seconds and
# LINGER_BYTES before the close, so that its kernel gets our answer, not a reset.
LINGER, LINGER_BYTES = 2.0, 4 * 1024 * 1024
SWEEP = 0.1  # seconds between looks at the line's and the requests' deadlines
RETRIES = 3
HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
              b"transfer-encoding", b"upgrade", b"expect"}
SPECIAL = HOP_BY_HOP | {b"content-length"}
REASONS = {400: "Bad Request", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
           501: "Not Implemented",
           502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


def _error(status: int, message: str, retry_after: int | None = None) -> bytes:
    body = json.dumps({"error": message}).encode()
    retry = f"Retry-After: {retry_after}\r\n" if retry_after is not None else ""
    return (f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: application/json\r\n"
            f"{retry}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


class FrontDoor:
    """A function's URL, in front of its instances."""

    def __init__(self, name: str, concurrency: int = 0, line_timeout: float = 30.0,
                 request_timeout: float = 30.0, max_line: int = 1000) -> None:
        self.name = name
        self.rules = Door(name, concurrency, line_timeout, request_timeout, max_line)
        self.retry_after = 1  # seconds a throttled client is told to wait (the platform sets it)
        # Called when a request comes and no instance is there (scaled to zero):
        # the platform starts one while the request waits in line.
        self.wake: Callable[[], None] | None = None
        self.exchanges: dict[Ticket, _Exchange] = {}
        self.idle: dict[Instance, list[tuple[float, _Upstream]]] = {}
        self.clients: set[_Client] = set()
        self.server: asyncio.Server | None = None
        self.sweeper: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop  # set by start(): clients come after it

    # -- what the platform reads and sets --
    @property
    def concurrency(self) -> int:
        return self.rules.concurrency

    @property
    def instances(self) -> list[Instance]:
        return self.rules.instances

    @property
    def in_flight(self) -> int:
        return self.rules.in_flight

    @property
    def queued(self) -> int:
        return self.rules.queued

    def add(self, instance: Instance) -> None:
        self.idle.setdefault(instance, [])
        self._granted(self.rules.add(instance, time.monotonic()))

    async def remove(self, instance: Instance, timeout: float = 30.0) -> None:
        """Stop sending it requests, and wait (bounded) for those in flight."""
        instance.draining = True
        give_up = time.monotonic() + timeout
        while instance.in_flight and time.monotonic() < give_up:
            await asyncio.sleep(0.02)
        self.drop(instance)

    def drop(self, instance: Instance) -> None:
        """Forget it at once (it died): what it had in flight fails by itself."""
        self.rules.drop(instance)
        for _, upstream in self.idle.pop(instance, []):
            upstream.close()

    # -- serving --
    async def start(self, host: str, port: int) -> FrontDoor:
        loop = self.loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Client(self), host, port,
                                               reuse_address=True)
        self.sweeper = loop.call_later(SWEEP, self._sweep)
        return self

    async def close(self) -> None:
        """Stop listening, end every connection."""
        if self.server is not None:
            self.server.close()
        if self.sweeper is not None:
            self.sweeper.cancel()
        for client in list(self.clients):
            client.close()
        for instance in list(self.idle):
            self.drop(instance)

    def _sweep(self) -> None:
        """Answer what waited or ran too long, and serve the line after a rest."""
        now = time.monotonic()
        waited, slow = self.rules.expired(now)
        for ticket in waited:
            self.exchanges.pop(ticket).refuse(
                429, f"no {self.name} instance free within {self.rules.line_timeout:g} s: "
                     "throttled", self.retry_after)
        for ticket in slow:
            if (exchange := self.exchanges.get(ticket)) is not None:
                exchange.time_out()
        self._granted(self.rules.serve_line(now))
        self.sweeper = asyncio.get_running_loop().call_later(SWEEP, self._sweep)

    # -- tickets --
    def arrive(self, exchange: _Exchange) -> None:
        try:
            ticket = self.rules.arrive(time.monotonic())
        except LineFull as e:
            exchange.refuse(429, f"{e}: throttled", self.retry_after)
            return
        exchange.ticket = ticket
        self.exchanges[ticket] = exchange
        if ticket.instance is not None:
            exchange.send(ticket.instance)
        elif not self.rules.instances and self.wake is not None:
            self.wake()

    def finish(self, ticket: Ticket, outcome: str) -> None:
        self.exchanges.pop(ticket, None)
        self._granted(self.rules.finish(ticket, time.monotonic(), outcome))

    def _granted(self, tickets: list[Ticket]) -> None:
        for ticket in tickets:
            assert ticket.instance is not None
            self.exchanges[ticket].send(ticket.instance)

    # -- instance connections --
    def upstream(self, instance: Instance) -> _Upstream | None:
        """A kept-alive connection to the instance, if a fresh one is idle."""
        idle = self.idle.get(instance)
        now = time.monotonic()
        while idle:
            since, upstream = idle.pop()
            if now - since < IDLE_REUSE and upstream.transport is not None:
                return upstream
            upstream.close()
        return None

    def keep(self, instance: Instance, upstream: _Upstream) -> None:
        idle = self.idle.get(instance)
        if idle is None or instance.draining:
            upstream.close()
        else:
            idle.append((time.monotonic(), upstream))


class _Request:
    __slots__ = ("method", "url", "headers", "forward", "chunked", "keep_alive", "has_body",
                 "expects_continue", "head_size", "body", "complete", "refusal")

    def __init__(self) -> None:
        self.method = b""
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.forward: list[bytes] = []  # the header lines sent on
        self.chunked = self.has_body = self.complete = self.expects_continue = False
        self.keep_alive = True
        self.head_size = 0
        self.body: list[bytes] = []  # read from the client, not sent on yet
        self.refusal: tuple[int, str] | None = None

    def head(self) -> bytes:
        """The request head as sent on to the instance: hop-by-hop headers dropped."""
        head = b"%s %s HTTP/1.1\r\n%s" % (self.method, self.url, b"".join(
            line + b"\r\n" for line in self.forward))
        if self.chunked:
            head += b"Transfer-Encoding: chunked\r\n"
        return head + b"\r\n"

    def frame(self, part: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(part), part) if self.chunked else part


class _Client(asyncio.Protocol):
    """A client connection: its requests one at a time, in order, as HTTP/1.1 asks."""

    def __init__(self, door: FrontDoor) -> None:
        self.door = door
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.unparsed = b""  # read, not parsed yet: the rest of a pipeline
        self.parsing: _Request | None = None
        self.waiting: deque[_Request] = deque()  # parsed, their turn not come yet
        self.exchange: _Exchange | None = None
        self.upstream_full = False  # the instance reads the body slower than we get it
        self.writable = True
        self.eof = False
        self.lingering = False
        self.reading = True
        self.dropped = 0
        self.head_timer: asyncio.TimerHandle | None = None
        self.head_deadline: float | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.door.clients.add(self)
        self._await_head()

    def data_received(self, data: bytes) -> None:
        if self.lingering:  # a refused body: read and dropped, up to a bound
            self.dropped += len(data)
            if self.dropped > LINGER_BYTES and self.transport is not None:
                self.transport.close()
            return
        self.unparsed = self.unparsed + data if self.unparsed else data
        self._parse()

    def eof_received(self) -> bool:
        self.eof = True  # half-closed: the answers still go out
        if self.exchange is None and not self.waiting:
            self.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.door.clients.discard(self)
        self._stop_head_timer()
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        if self.exchange is not None:
            self.exchange.client_gone()
        self.waiting.clear()

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        if self.exchange is not None and self.exchange.upstream is not None:
            self.exchange.upstream.resume_reading()

    # reading, one request at a time
    def _parse(self) -> None:
        """Feed the parser while the requests need it; TCP holds the rest."""
        while self.unparsed and self._wants_more():
            piece = self.unparsed
            if len(piece) <= SLICE:
                self.unparsed = b""
            else:
                piece, self.unparsed = piece[:SLICE], piece[SLICE:]
            try:
                self.parser.feed_data(piece)
            except httptools.HttpParserUpgrade:
                self._refuse_now(501, "upgrades are not supported here")
                return
            except httptools.HttpParserError as e:  # what a callback raises comes wrapped
                if isinstance(e.__context__, _HeadTooLarge):
                    self._refuse_now(431, f"request head over {MAX_HEAD} bytes")
                else:
                    self._refuse_now(400, f"malformed request: {e}")
                return
            if self.exchange is None and self.waiting:
                # After the feed, not in its callbacks: a head and the body that
                # came with it go on in one write.
                self._start(self.waiting.popleft())
        transport = self.transport
        if transport is not None:
            # Paused only while read bytes wait unparsed: a client that sends
            # nothing until it has its answer (every keep-alive client) costs no
            # epoll change per request; one that pipelines is held at one read.
            if self.unparsed:
                if self.reading:
                    self.reading = False
                    transport.pause_reading()
            elif not self.reading:
                self.reading = True
                transport.resume_reading()

    def _wants_more(self) -> bool:
        if self.waiting or self.upstream_full or self.transport is None:
            return False
        current = self.parsing
        if current is None:
            return self.exchange is None  # the next request only once this one is answered
        # A body is read on only while it streams to an instance.
        return current.body == [] and (self.exchange is None or
                                       self.exchange.request is not current or
                                       self.exchange.streaming)

    def resume(self) -> None:
        self.upstream_full = False
        self._parse()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.parsing = _Request()

    def on_url(self, url: bytes) -> None:
        request = self.parsing
        assert request is not None
        request.head_size += len(url)
        if request.head_size > MAX_HEAD:
            raise _HeadTooLarge()
        request.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self.parsing
        assert request is not None
        request.head_size += len(name) + len(value) + 4
        if request.head_size > MAX_HEAD:
            raise _HeadTooLarge()
        request.headers.append((name, value))

    def on_headers_complete(self) -> None:
        request = self.parsing
        assert request is not None
        self._stop_head_timer()
        forward = request.forward
        for name, value in request.headers:
            lower = name.lower()
            if lower not in SPECIAL:
                forward.append(name + b": " + value)
                continue
            if lower not in HOP_BY_HOP:
                forward.append(name + b": " + value)
            if lower == b"transfer-encoding" and b"chunked" in value.lower():
                request.chunked = request.has_body = True
            elif lower == b"content-length" and value.strip() != b"0":
                request.has_body = True
            elif lower == b"expect" and value.lower() == b"100-continue":
                request.expects_continue = True
            elif lower == b"upgrade":
                request.refusal = (501, "upgrades are not supported here")
        request.method = self.parser.get_method()
        request.keep_alive = self.parser.should_keep_alive()
        if request.method == b"CONNECT":
            request.refusal = (501, "CONNECT is not supported here")
        self.waiting.append(request)

    def on_body(self, data: bytes) -> None:
        request = self.parsing
        assert request is not None
        exchange = self.exchange
        if exchange is not None and exchange.request is request and exchange.streaming:
            exchange.stream(data)
        else:
            request.body.append(data)

    def on_message_complete(self) -> None:
        request = self.parsing
        assert request is not None
        request.complete = True
        self.parsing = None
        exchange = self.exchange
        if exchange is not None and exchange.request is request and exchange.streaming:
            exchange.body_done()

    def _count(self, size: int) -> _Request:
        request = self.parsing
        assert request is not None
        request.head_size += size
        if request.head_size > MAX_HEAD:
            raise _HeadTooLarge()
        return request

    # answering
    def _start(self, request: _Request) -> None:
        exchange = self.exchange = _Exchange(self.door, self, request)
        if request.refusal is not None:
            exchange.refuse(*request.refusal)
            return
        if request.expects_continue and not request.complete:
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.door.arrive(exchange)

    def done(self, exchange: _Exchange, keep_open: bool) -> None:
        """The exchange is over: the next request, or the end of the connection."""
        if exchange is not self.exchange:
            return
        self.exchange = None
        if self.transport is None:
            return
        if exchange.cut_short:
            self.transport.abort()  # the client must not take a short answer for a whole one
            return
        if not (keep_open and exchange.request.keep_alive and exchange.request.complete):
            self.close(linger=not exchange.request.complete)
            return
        if self.waiting:
            self._start(self.waiting.popleft())
        elif self.eof and self.parsing is None and not self.unparsed:
            self.close()
        else:
            self._await_head()
        if self.unparsed or not self.reading:
            self._parse()

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _refuse_now(self, status: int, message: str) -> None:
        """A request the parser cannot read: this connection can carry no more."""
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.client_gone()
            if exchange.answered and self.transport is not None:
                self.transport.abort()  # our answer would land inside the instance's
                return
        self.door.rules.count(status)
        self.write(_error(status, message))
        self.close(linger=True)

    def close(self, linger: bool = False) -> None:
        """Close; with `linger`, send our answer and a FIN, then read and drop what
        the client still sends for a while, so it reads our answer, not a reset."""
        transport = self.transport
        if transport is None:
            return
        self._stop_head_timer()
        if linger and not self.lingering and transport.can_write_eof():
            self.lingering = True
            transport.write_eof()
            self.reading = True
            transport.resume_reading()
            asyncio.get_running_loop().call_later(LINGER, transport.close)
        else:
            transport.close()

    def _await_head(self) -> None:
        # A deadline, not a timer per request: the one timer fires at most every
        # HEAD_TIMEOUT and looks at the deadline then.
        self.head_deadline = time.monotonic() + HEAD_TIMEOUT
        if self.head_timer is None:
            self.head_timer = self.door.loop.call_later(HEAD_TIMEOUT, self._head_check)

    def _head_check(self) -> None:
        self.head_timer = None
        deadline = self.head_deadline
        if deadline is None:
            return
        left = deadline - time.monotonic()
        if left > 0:
            self.head_timer = self.door.loop.call_later(left, self._head_check)
        else:
            self.close()

    def _stop_head_timer(self) -> None:
        self.head_deadline = None


class _HeadTooLarge(Exception):
    pass


class _Exchange:
    """One request on its way to an instance and its answer on the way back."""

    def __init__(self, door: FrontDoor, client: _Client, request: _Request) -> None:
        self.door, self.client, self.request = door, client, request
        self.ticket: Ticket | None = None
        self.upstream: _Upstream | None = None
        self.streaming = False  # the body goes straight to the instance as it comes
        self.answered = False  # some of the answer went to the client
        self.cut_short = False  # ... and the rest never will
        self.tries = 0
        self.over = False

    def send(self, instance: Instance) -> None:
        """Our turn on `instance`: a connection to it, then the request."""
        upstream = self.door.upstream(instance)
        if upstream is None:
            self.door.loop.create_task(self._connect(instance))
        else:
            self._send_on(upstream, reused=True)

    async def _connect(self, instance: Instance) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(_Upstream, instance.host, instance.port)
        except OSError as e:
            self.failed(f"cannot connect: {e.strerror or e}", refused=True)
            return
        if self.over:
            upstream.close()
        else:
            self._send_on(upstream, reused=False)

    def _send_on(self, upstream: _Upstream, reused: bool) -> None:
        self.upstream = upstream
        upstream.begin(self, reused)
        request = self.request
        if request.chunked:
            parts = [request.head(), *map(request.frame, request.body)]
            if request.complete:
                parts.append(b"0\r\n\r\n")
            data = b"".join(parts)
        elif request.body:
            data = request.head() + b"".join(request.body)
        else:
            data = request.head()
        request.body.clear()
        upstream.write(data)
        self.streaming = request.has_body and not request.complete
        if self.streaming:
            self.client._parse()

    def stream(self, part: bytes) -> None:
        upstream = self.upstream
        assert upstream is not None
        if upstream.answering():
            # It answered (or closed) before reading the whole body: what it
            # said goes to the client; no more is sent on, nor read.
            self.streaming = False
            return
        upstream.write(self.request.frame(part))
        if upstream.full:
            self.client.upstream_full = True

    def body_done(self) -> None:
        self.streaming = False
        if self.request.chunked and self.upstream is not None:
            self.upstream.write(b"0\r\n\r\n")

    # the answer
    def answer(self, data: bytes) -> None:
        self.answered = True
        self.client.write(data)

    def answered_all(self, reusable: bool, closes: bool, status: int) -> None:
        upstream, ticket = self.upstream, self.ticket
        self.door.rules.count(status)
        self.over = True
        self.upstream = None
        body_sent = self.request.complete and not self.streaming
        if upstream is not None and ticket is not None and ticket.instance is not None:
            if reusable and body_sent:
                self.door.keep(ticket.instance, upstream)
            else:
                upstream.close()
        if ticket is not None:
            self.door.finish(ticket, "answered")
        self.client.done(self, keep_open=body_sent and not closes)

    def failed(self, reason: str, refused: bool = False, stale: bool = False) -> None:
        """The instance failed before the whole answer: send it again where it
        surely did not arrive (refused at connect, or a GET on a kept-alive
        connection the instance closed as it was reused), else tell the client."""
        if self.over:
            return
        ticket = self.ticket
        assert ticket is not None and ticket.instance is not None
        instance = ticket.instance
        self._end_upstream()
        resend = refused or (stale and self.request.method in (b"GET", b"HEAD"))
        self.door.finish(ticket, "refused" if refused else "failed")
        if resend and self.tries < RETRIES and not self.streaming and not self.answered:
            self.tries += 1
            self.door.arrive(self)
            return
        self.over = True
        if self.answered:
            self.cut_short = True
            self.client.done(self, keep_open=False)
        else:
            self.refuse(502, f"{self.door.name} instance {instance.name} failed: {reason}")

    def time_out(self) -> None:
        ticket = self.ticket
        assert ticket is not None
        self._end_upstream()
        self.door.finish(ticket, "timeout")
        self.over = True
        if self.answered:
            self.cut_short = True
            self.client.done(self, keep_open=False)
        else:
            self.refuse(504, f"{self.door.name} took longer than its timeout of "
                             f"{self.door.rules.request_timeout:g} s")

    def refuse(self, status: int, message: str, retry_after: int | None = None) -> None:
        """Our own answer, JSON; the connection closes after it."""
        self.door.rules.count(status)
        self.over = True
        self.client.write(_error(status, message, retry_after))
        self.client.done(self, keep_open=False)

    def client_gone(self) -> None:
        """The client went: its slot or its place in line is freed at once."""
        if self.over:
            return
        self.over = True
        self._end_upstream()
        if self.ticket is not None:
            self.door.finish(self.ticket, "gone")

    def _end_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None


class _Upstream(asyncio.Protocol):
    """A keep-alive connection to one instance; its answers go straight to the client."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: _Exchange | None = None
        self.reused = self.closes = self.head_only = self.started = False
        self.status = 0
        self.full = False

    def begin(self, exchange: _Exchange, reused: bool) -> None:
        self.exchange, self.reused = exchange, reused
        self.closes = self.started = False
        self.head_only = exchange.request.method == b"HEAD"

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def answering(self) -> bool:
        """Has the instance begun to answer, or closed? Looked at before more of a
        body is sent: a write after its close would reset the connection, and the
        reset would take its answer with it."""
        if self.started or self.transport is None:
            return True
        fd = self.transport.get_extra_info("socket").fileno()
        return bool(select.select([fd], [], [], 0)[0])

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            self.close()  # nobody asked: a stale connection talking
            return
        self.started = True
        exchange.answer(data)
        if not exchange.client.writable and self.transport is not None:
            self.transport.pause_reading()  # a slow client slows the instance, not memory
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._failed(f"malformed answer: {e}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._failed("connection closed before the whole answer")

    def pause_writing(self) -> None:
        self.full = True

    def resume_writing(self) -> None:
        self.full = False
        if self.exchange is not None:
            self.exchange.client.resume()

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.closes = not self.parser.should_keep_alive()
        self.status = self.parser.get_status_code()
        if self.head_only:
            self._done(reusable=False)  # a HEAD answer has no body to wait for

    def on_message_complete(self) -> None:
        self._done(reusable=not self.closes)

    def _done(self, reusable: bool) -> None:
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.answered_all(reusable, self.closes, self.status)

    def _failed(self, reason: str) -> None:
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.failed(reason, stale=self.reused and not self.started)

    def close(self) -> None:
        self.exchange = None
        if self.transport is not None:
            self.transport.close()
            self.transport = None

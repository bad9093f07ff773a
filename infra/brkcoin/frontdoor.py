"""The local platform's front door: one URL per function, in front of its instances.

What Cloud Run's front end and Knative's activator do, in small: each request
goes to the instance with the fewest requests in flight that still has a free
slot under the per-instance concurrency (Cloud Run's --concurrency, Knative's
containerConcurrency); when every slot is taken, requests wait in line, first
come first served. Balancing per request, not per connection, is what makes
"scale rng" work in the DockerCoins lesson: a worker loop keeps one keep-alive
connection, and instances sharing one listening socket (gunicorn workers,
SO_REUSEPORT) would pin it to whichever instance accepted it.

Requests and answers are streamed, not buffered: the request head is parsed
(httptools) and re-sent, the body and the answer pass through as they come,
with back-pressure both ways. What the front door answers itself is JSON:
431 for a head over 64 KiB, 400 for a malformed request, 502 when an instance
fails before answering, 503 when no instance frees up in time.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from dataclasses import dataclass, field
from typing import Any, cast

import httptools

MAX_HEAD = 64 * 1024
HEAD_TIMEOUT = 30.0  # seconds for a client to send a whole request head
IDLE_REUSE = 1.0  # an idle instance connection older than this is not reused: the
#                   instance (gunicorn keepalive, 2 s) may be closing it right now
HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
              b"transfer-encoding", b"upgrade", b"expect"}


def _error(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


@dataclass(eq=False)
class Instance:
    """One function instance (a functions-framework process) behind the door."""

    name: str
    host: str
    port: int
    in_flight: int = 0
    served: int = 0
    draining: bool = False
    resting_until: float = 0.0  # it refused a connection: none sent it until then
    idle: list[tuple[float, _ToInstance]] = field(default_factory=list)


class FrontDoor:
    def __init__(self, name: str, concurrency: int = 0, queue_timeout: float = 60.0) -> None:
        self.name = name
        self.concurrency = concurrency  # per instance; 0: no limit
        self.queue_timeout = queue_timeout
        self.instances: list[Instance] = []
        self.line: collections.deque[asyncio.Future[Instance]] = collections.deque()
        self.server: asyncio.Server | None = None
        self.clients: set[_FromClient] = set()

    # -- instances --
    def add(self, instance: Instance) -> None:
        self.instances.append(instance)
        self._serve_line()

    async def remove(self, instance: Instance, timeout: float = 30.0) -> None:
        """Stop sending it requests, and wait (bounded) for those in flight."""
        instance.draining = True
        give_up = time.monotonic() + timeout
        while instance.in_flight and time.monotonic() < give_up:
            await asyncio.sleep(0.02)
        self.drop(instance)

    def drop(self, instance: Instance) -> None:
        """Forget it at once (it died): what it had in flight has failed already."""
        instance.draining = True
        if instance in self.instances:
            self.instances.remove(instance)
        for _, connection in instance.idle:
            connection.close()
        instance.idle.clear()

    def rest(self, instance: Instance, seconds: float = 1.0) -> None:
        """It refused a connection: gone (the platform replaces a dead instance
        within a second) or only full for now. Either way, not the one to try
        again at once; the line is looked at again when the rest is over."""
        instance.resting_until = time.monotonic() + seconds
        asyncio.get_running_loop().call_later(seconds, self._serve_line)

    @property
    def in_flight(self) -> int:
        return sum(i.in_flight for i in self.instances)

    @property
    def queued(self) -> int:
        return len(self.line)

    def _has_room(self, instance: Instance) -> bool:
        return (not instance.draining and time.monotonic() >= instance.resting_until
                and (not self.concurrency or instance.in_flight < self.concurrency))

    def _free(self) -> Instance | None:
        free = [i for i in self.instances if self._has_room(i)]
        # The fewest in flight; among equals the one that served least, so
        # idle instances take turns.
        return min(free, key=lambda i: (i.in_flight, i.served)) if free else None

    async def acquire(self) -> Instance:
        """A slot on the least busy instance with room, waiting in line if none."""
        instance = self._free() if not self.line else None
        if instance is not None:
            instance.in_flight += 1
            return instance
        waiter: asyncio.Future[Instance] = asyncio.get_running_loop().create_future()
        self.line.append(waiter)
        try:
            return await asyncio.wait_for(waiter, self.queue_timeout)  # slot taken for us
        except TimeoutError:
            raise NoInstance(f"no {self.name} instance free within "
                             f"{self.queue_timeout:g} s") from None
        finally:
            if waiter in self.line:
                self.line.remove(waiter)

    def release(self, instance: Instance) -> None:
        instance.in_flight -= 1
        instance.served += 1
        self._serve_line()

    def _serve_line(self) -> None:
        while self.line:
            instance = self._free()
            if instance is None:
                return
            waiter = self.line.popleft()
            if not waiter.done():
                instance.in_flight += 1
                waiter.set_result(instance)

    # -- serving --
    async def start(self, host: str, port: int) -> FrontDoor:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _FromClient(self), host, port,
                                               reuse_address=True)
        return self

    async def close(self) -> None:
        """Stop listening, end every connection and what serves it."""
        if self.server is not None:
            self.server.close()
        for client in list(self.clients):
            client.end()
        for instance in list(self.instances):
            for _, connection in instance.idle:
                connection.close()
        await asyncio.sleep(0)  # let the cancelled tasks finish


class NoInstance(Exception):
    pass


@dataclass
class _Request:
    method: bytes = b""
    url: bytearray = field(default_factory=bytearray)
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    chunked: bool = False
    keep_alive: bool = True
    expects_continue: bool = False
    has_body: bool = False
    body_started: bool = False  # some of the body went to an instance
    body: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    head_size: int = 0

    def head(self) -> bytes:
        """The request head as sent on to the instance: hop-by-hop headers dropped."""
        lines = [self.method + b" " + bytes(self.url) + b" HTTP/1.1"]
        lines += [name + b": " + value for name, value in self.headers
                  if name.lower() not in HOP_BY_HOP]
        if self.chunked:
            lines.append(b"Transfer-Encoding: chunked")
        return b"\r\n".join(lines) + b"\r\n\r\n"


class _FromClient(asyncio.Protocol):
    """A client connection: parses requests, hands them to the door one at a time."""

    def __init__(self, door: FrontDoor) -> None:
        self.door = door
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.current: _Request | None = None
        self.ready: asyncio.Queue[_Request | None] = asyncio.Queue()
        self.buffered = 0  # body bytes read from the client, not yet sent on
        self.writable = asyncio.Event()
        self.writable.set()
        self.worker: asyncio.Task[None] | None = None
        self.head_timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        loop = asyncio.get_running_loop()
        self.head_timer = loop.call_later(HEAD_TIMEOUT, self._close)
        self.worker = loop.create_task(self._serve())
        self.door.clients.add(self)

    def end(self) -> None:
        self._close()
        if self.worker is not None:
            self.worker.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(501, "Not Implemented", "upgrades are not supported here")
        except httptools.HttpParserError as e:  # what a callback raises comes wrapped
            if isinstance(e.__context__, _HeadTooLarge):
                self._refuse(431, "Request Header Fields Too Large",
                             f"request head over {MAX_HEAD} bytes")
            else:
                self._refuse(400, "Bad Request", f"malformed request: {e}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.door.clients.discard(self)
        if self.head_timer:
            self.head_timer.cancel()
        if self.current is not None:
            self.current.body.put_nowait(None)
        self.ready.put_nowait(None)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.current = _Request()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        assert self.current is not None
        self.current.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        assert self.current is not None
        lower = name.lower()
        if lower == b"transfer-encoding" and b"chunked" in value.lower():
            self.current.chunked = self.current.has_body = True
        elif lower == b"content-length" and value.strip() != b"0":
            self.current.has_body = True
        elif lower == b"expect" and value.lower() == b"100-continue":
            self.current.expects_continue = True
        self.current.headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.current is not None
        if self.head_timer:
            self.head_timer.cancel()
            self.head_timer = None
        self.current.method = self.parser.get_method()
        self.current.keep_alive = self.parser.should_keep_alive()
        self.ready.put_nowait(self.current)

    def on_body(self, data: bytes) -> None:
        assert self.current is not None
        self.current.body.put_nowait(data)
        self.buffered += len(data)
        if self.buffered > 256 * 1024 and self.transport is not None:
            self.transport.pause_reading()  # back-pressure: the instance reads slower

    def on_message_complete(self) -> None:
        assert self.current is not None
        self.current.body.put_nowait(None)
        self.current = None

    def _count(self, size: int) -> None:
        assert self.current is not None
        self.current.head_size += size
        if self.current.head_size > MAX_HEAD:
            raise _HeadTooLarge()

    # our side
    def _refuse(self, status: int, reason: str, message: str) -> None:
        if self.transport is not None:
            self.transport.write(_error(status, reason, message))
            self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def body_taken(self, size: int) -> None:
        self.buffered -= size
        if self.buffered <= 64 * 1024 and self.transport is not None:
            self.transport.resume_reading()

    async def _serve(self) -> None:
        """The requests of this connection in order, one at a time, as HTTP/1.1 asks."""
        while (request := await self.ready.get()) is not None:
            keep = await _forward(self.door, self, request)
            if not (keep and request.keep_alive):
                self._close()
                return
            if self.transport is None:
                return
            self.head_timer = asyncio.get_running_loop().call_later(HEAD_TIMEOUT, self._close)


class _HeadTooLarge(Exception):
    pass


async def _forward(door: FrontDoor, client: _FromClient, request: _Request) -> bool:
    """Send one request to an instance and its answer back; True if the client
    connection may carry another request."""
    if request.expects_continue and client.transport is not None:
        client.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    for attempt in range(4):
        try:
            instance = await door.acquire()
        except NoInstance as e:
            client._refuse(503, "Service Unavailable", str(e))
            return False
        try:
            return await _exchange(instance, client, request)
        except _InstanceFailed as e:
            if e.refused:
                door.rest(instance)
            # Sent again, to whichever instance is free, only what surely did not
            # reach one: refused at connect, or a GET on a kept-alive connection
            # the instance closed as it was reused (POST /worker is no retry).
            resend = e.refused or (e.stale and request.method in (b"GET", b"HEAD"))
            if not (resend and not request.body_started and attempt < 3):
                if not e.answered:
                    client._refuse(502, "Bad Gateway",
                                   f"{door.name} instance {instance.name} failed: {e}")
                return False
        finally:
            door.release(instance)
    raise AssertionError("unreachable")


class _InstanceFailed(Exception):
    def __init__(self, message: str, answered: bool, stale: bool = False,
                 refused: bool = False) -> None:
        super().__init__(message)
        self.answered = answered  # part of the answer already went to the client
        self.stale = stale  # on a reused connection, before any of the answer
        self.refused = refused  # no connection at all: nothing was sent


async def _exchange(instance: Instance, client: _FromClient, request: _Request) -> bool:
    connection, reused = await _connection(instance)
    connection.begin(client, head_only=request.method == b"HEAD", reused=reused)
    connection.send(request.head())
    body_done = True
    if request.has_body:
        # The instance may answer before it has read the whole body (a 413 says
        # so and closes): then the rest is not sent on, nor read from the client.
        sending = asyncio.create_task(_send_body(connection, client, request))
        racing: set[asyncio.Future[Any]] = {sending, connection.finished}
        await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
        body_done = sending.done()
        sending.cancel()
    reusable, close_client = await connection.done()
    if reusable and body_done:
        instance.idle.append((time.monotonic(), connection))
    else:
        connection.close()
    return body_done and not close_client


async def _send_body(connection: _ToInstance, client: _FromClient, request: _Request) -> None:
    while (part := await request.body.get()) is not None:
        request.body_started = True
        client.body_taken(len(part))
        connection.send(b"%x\r\n%s\r\n" % (len(part), part) if request.chunked else part)
        await connection.writable.wait()
    if request.chunked:
        connection.send(b"0\r\n\r\n")


async def _connection(instance: Instance) -> tuple[_ToInstance, bool]:
    """A connection to the instance, and whether it is a kept-alive one."""
    now = time.monotonic()
    while instance.idle:
        since, connection = instance.idle.pop()
        if now - since < IDLE_REUSE and connection.transport is not None:
            return connection, True
        connection.close()
    loop = asyncio.get_running_loop()
    try:
        _, connection = await loop.create_connection(_ToInstance, instance.host, instance.port)
    except OSError as e:
        raise _InstanceFailed(f"cannot connect: {e.strerror or e}", answered=False,
                              refused=True) from None
    return connection, False


class _ToInstance(asyncio.Protocol):
    """A keep-alive connection to one instance; its answers go straight to the client."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.client: _FromClient | None = None
        self.finished: asyncio.Future[tuple[bool, bool]] = (
            asyncio.get_running_loop().create_future())
        self.head_only = False
        self.reused = False
        self.answered = False
        self.closes = False
        self.writable = asyncio.Event()
        self.writable.set()

    def begin(self, client: _FromClient, head_only: bool, reused: bool) -> None:
        self.client, self.head_only, self.reused = client, head_only, reused
        self.answered = self.closes = False
        self.finished = asyncio.get_running_loop().create_future()
        self.parser = httptools.HttpResponseParser(self)

    def send(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    async def done(self) -> tuple[bool, bool]:
        """(this connection is reusable, the client's must close) once answered."""
        return await self.finished

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None or client.transport is None:
            self.close()
            return
        client.transport.write(data)  # the answer as the instance sent it
        self.answered = True
        if not client.writable.is_set() and self.transport is not None:
            self.transport.pause_reading()  # a slow client slows the instance, not memory
            asyncio.get_running_loop().create_task(self._resume_when(client))
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._finish(error=f"malformed answer: {e}")

    async def _resume_when(self, client: _FromClient) -> None:
        await client.writable.wait()
        if self.transport is not None:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._finish(error="connection closed before the whole answer")

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"connection" and b"close" in value.lower():
            self.closes = True

    def on_headers_complete(self) -> None:
        if self.head_only:
            self._finish(reusable=False)  # a HEAD answer has no body to wait for

    def on_message_complete(self) -> None:
        self._finish(reusable=not self.closes and self.parser.should_keep_alive())

    def _finish(self, reusable: bool = False, error: str = "") -> None:
        if self.finished.done():
            return
        if error:
            stale = self.reused and not self.answered
            self.finished.set_exception(_InstanceFailed(error, self.answered, stale))
        else:
            self.finished.set_result((reusable, self.closes))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

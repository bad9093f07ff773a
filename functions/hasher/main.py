"""hasher: SHA-256 hex digests, wire-compatible with DockerCoins' hasher.

GET /           -> "HASHER running on <hostname>\n"
POST /          -> 64-char lowercase hex SHA-256 of the raw body, text/plain
POST /?chunk=K  -> one digest per K-byte chunk of the body, newline-separated
                   (lets a worker hash a whole batch of units in one call)

The body is refused as soon as it is known to be too large: before reading when
Content-Length says so, else at the limit + 1 byte. K is at least 32 bytes, so an
answer is never much larger than its request (65 bytes per chunk).
An async function (functions_framework.aio), served by uvicorn.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
from collections.abc import Callable
from importlib import import_module
from typing import cast

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

import tracing
from serving import configure, env_number

configure()  # the server's limits (see serving.py)

DELAY = env_number("HASHER_DELAY", 0.1, 0, 60)  # demo latency, as the original
MAX_BYTES = int(env_number("HASHER_MAX_BYTES", 1 << 20, 1, 1 << 30))
BODY_TIMEOUT = env_number("HASHER_BODY_TIMEOUT", 10, 0.01, 900)  # to receive a body
MIN_CHUNK = 32  # the unit of work; smaller chunks would answer far more than they take


def _builtin_sha256() -> Callable[[bytes], hashlib._Hash]:
    """CPython's own SHA-256 (_sha2 from 3.12, _sha256 before) rather than OpenSSL's,
    which hashlib prefers: for small chunks its per-object cost is far lower, which
    nearly halves a batch's time."""
    for name in ("_sha2", "_sha256"):
        try:
            return cast(Callable[[bytes], hashlib._Hash], import_module(name).sha256)
        except (ImportError, AttributeError):
            pass
    return hashlib.sha256


small_sha256 = _builtin_sha256()
# Requests one instance serves at once (0: no limit), the rest waiting their
# turn; for targets whose platform does not limit it (see rng's main.py).
CONCURRENCY = int(env_number("INSTANCE_CONCURRENCY", 0, 0, 100_000))
_turns = asyncio.Semaphore(CONCURRENCY) if CONCURRENCY else None
HELLO = f"HASHER running on {socket.gethostname()}\n"


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _error(status: int, message: str, **headers: str) -> Response:
    return Response(json.dumps({"error": message}), status, headers,
                    media_type="application/json")


def _chunk(request: Request) -> int | None:
    if not request.scope["query_string"]:
        return None
    raw = request.query_params.get("chunk")
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 10
            and MIN_CHUNK <= int(raw) <= MAX_BYTES):
        shown = raw if len(raw) <= 40 else raw[:40] + "..."
        raise Refused(400, f"chunk must be an integer from {MIN_CHUNK} to {MAX_BYTES}, "
                           f"got {shown!r}")
    return int(raw)


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BYTES:
        raise Refused(413, f"body of {declared} bytes is over the limit of {MAX_BYTES} bytes")
    # The ASGI messages themselves, under a plain timer: on the hot path (a
    # 32-byte body per hash) Starlette's stream() and asyncio.timeout() cost a
    # good part of the request.
    task = asyncio.current_task()
    assert task is not None
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = asyncio.get_running_loop().call_later(BODY_TIMEOUT, expire)
    chunks, size, more = [], 0, True
    try:
        while more:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                raise Refused(400, "client went away before sending the whole body")
            part = message.get("body", b"")
            size += len(part)
            if size > MAX_BYTES:
                raise Refused(413, f"body is over the limit of {MAX_BYTES} bytes")
            chunks.append(part)
            more = message.get("more_body", False)
    except asyncio.CancelledError:
        if not expired:
            raise
        task.uncancel()
        raise Refused(408, f"body not received within {BODY_TIMEOUT:g} s") from None
    finally:
        timer.cancel()
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _digests(body: bytes, chunk: int) -> bytes:
    sha256 = small_sha256 if chunk < 4096 else hashlib.sha256
    return "\n".join(
        [sha256(body[i : i + chunk]).hexdigest() for i in range(0, len(body), chunk)]
    ).encode()


@functions_framework.aio.http
async def hasher(request: Request) -> Response:
    span = tracing.served(request.scope["headers"], "POST /", "hasher")
    answer = await _answer(request)
    if span is not None:  # the caller traces this call
        tracing.log(f"hasher {request.method} {request.scope['path']}: {answer.status_code}",
                    span)
        span.end()
    return answer


async def _answer(request: Request) -> Response:
    if request.method in ("GET", "HEAD"):
        return PlainTextResponse(HELLO)
    if request.method != "POST":
        return _error(405, f"method {request.method} not allowed; use POST /",
                      Allow="GET, HEAD, POST", Connection="close")
    path = request.scope["path"]  # the scope itself: request.url costs more
    if path.strip("/"):
        shown = path if len(path) <= 40 else path[:40] + "..."
        return _error(404, f"no such path {shown!r}; POST to /", Connection="close")
    try:
        chunk = _chunk(request)
        body = await _body(request)
    except Refused as e:  # the rest of the body, if any, is never read
        return _error(e.status, str(e), Connection="close")
    if chunk is not None and len(body) % chunk:
        return _error(400, f"body length {len(body)} is not a multiple of chunk={chunk}")
    if _turns is None:
        return await _hashed(body, chunk)
    async with _turns:
        return await _hashed(body, chunk)


async def _hashed(body: bytes, chunk: int | None) -> Response:
    if DELAY:
        await asyncio.sleep(DELAY)
    if chunk is None:
        return Response(hashlib.sha256(body).hexdigest(), media_type="text/plain")
    return Response(_digests(body, chunk), media_type="text/plain")

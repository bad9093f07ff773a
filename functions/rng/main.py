"""rng: serves random bytes, wire-compatible with DockerCoins' rng.

GET /    -> "RNG running on <hostname>\n"
GET /<n> -> exactly n bytes from os.urandom, application/octet-stream
HEAD /<n> -> the same head as GET, without making the bytes

An async function (functions_framework.aio): the plain `functions-framework
--target rng` command serves it with uvicorn, and a request waiting out the demo
latency holds no thread.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

import tracing
from serving import configure, env_number

configure()  # the server's limits (see serving.py)

DELAY = env_number("RNG_DELAY", 0.1, 0, 60)  # demo latency, as the original
MAX_BYTES = int(env_number("RNG_MAX_BYTES", 1 << 20, 1, 1 << 30))
# Requests one instance serves at once (0: no limit), the rest waiting their
# turn: 1 is the original single-threaded rng of the DockerCoins lesson. For
# targets whose platform does not limit it (compose, plain Kubernetes); Cloud Run,
# Knative and `brkcoin up` hold requests at their front door instead.
CONCURRENCY = int(env_number("INSTANCE_CONCURRENCY", 0, 0, 100_000))
_turns = asyncio.Semaphore(CONCURRENCY) if CONCURRENCY else None
HELLO = f"RNG running on {socket.gethostname()}\n"
MAX_DIGITS = len(str(MAX_BYTES))


def _error(status: int, message: str, **headers: str) -> Response:
    return Response(json.dumps({"error": message}), status, headers,
                    media_type="application/json")


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(
        name == b"transfer-encoding" or (name == b"content-length" and value != b"0")
        for name, value in headers
    )


@functions_framework.aio.http
async def rng(request: Request) -> Response:
    span = tracing.served(request.scope["headers"], "GET /{n}", "rng")
    answer = await _answer(request)
    if span is not None:  # the caller traces this call
        tracing.log(f"rng {request.method} {request.scope['path']}: {answer.status_code}", span)
        span.end()
    return answer


async def _answer(request: Request) -> Response:
    if request.method not in ("GET", "HEAD"):
        return _error(405, f"method {request.method} not allowed; use GET /<n>",
                      Allow="GET, HEAD", Connection="close")
    if _has_body(request.scope["headers"]):
        # A body is never read: the answer closes the connection instead.
        return _error(400, "GET /<n> takes no request body", Connection="close")
    path = request.scope["path"].strip("/")  # the scope itself: request.url costs more
    if not path:
        return PlainTextResponse(HELLO)
    if not (path.isascii() and path.isdigit() and len(path) <= MAX_DIGITS
            and 1 <= int(path) <= MAX_BYTES):
        shown = path if len(path) <= 40 else path[:40] + "..."
        return _error(400, f"n must be an integer from 1 to {MAX_BYTES}, got {shown!r}")
    if request.method == "HEAD":  # GET's head, with no bytes made for it
        return Response(headers={"Content-Length": str(int(path))},
                        media_type="application/octet-stream")
    if _turns is None:
        return await _random_bytes(int(path))
    async with _turns:
        return await _random_bytes(int(path))


async def _random_bytes(n: int) -> Response:
    if DELAY:
        await asyncio.sleep(DELAY)
    return Response(os.urandom(n), media_type="application/octet-stream")

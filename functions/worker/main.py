"""worker: mines BRK coins for a bounded time and records them in the Redis wallet.

Two triggers, one job (see mining.py):
- `worker`: HTTP, as Cloud Scheduler, EventBridge or the local scheduler call it:
  POST / with optional JSON {"seconds", "concurrency", "batch"}; GET / is a health check.
- `worker_event`: a CloudEvent over HTTP (Pub/Sub push, Knative PingSource,
  Eventarc), binary or structured mode, whose data holds the same inputs.

Both answer the invocation's JSON summary: 200 when every count is in Redis, 503
with `unrecorded` and `in_doubt` when Redis did not take them, 4xx for bad input.
They are async functions (functions_framework.aio), so the plain
`functions-framework --target worker` command serves them with uvicorn.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import signal
import socket
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

import tracing
from auth import upstream_auth
from inputs import (
    BadRequest,
    Inputs,
    event_data,
    mining_inputs,
    parse_json,
    pubsub_unwrapped,
    read_body,
)
from mining import Busy, Instance, Invocation
from serving import configure
from settings import Settings

configure()  # the server's limits (see serving.py)

SETTINGS = Settings.from_env()
HELLO = f"WORKER running on {socket.gethostname()}\n"
UNAUTHORIZED = "missing or wrong 'Authorization: Bearer <WORKER_TOKEN>'"

_instance: Instance | None = None
_auth = upstream_auth(SETTINGS)


def _json(status: int, body: object, **headers: str) -> Response:
    return Response(json.dumps(body), status, headers, media_type="application/json")


def _error(status: int, message: str, **extra: str) -> Response:
    # A request refused before its body was read may still be sending it: close
    # rather than read on.
    headers = {"Connection": "close"} if status in (400, 401, 405, 408, 413) else {}
    if status == 429:
        headers["Retry-After"] = "1"
    return _json(status, {"error": message}, **headers, **extra)


def instance() -> Instance:
    """This process's Instance, made on the first invocation (inside the event loop),
    when SIGTERM also starts to drain it."""
    global _instance
    if _instance is None:
        _instance = Instance(SETTINGS)
        _drain_on(_instance, signal.SIGTERM, signal.SIGINT)
    return _instance


def _drain_on(target: Instance, *signals: signal.Signals) -> None:
    """On SIGTERM (every scale-in on Cloud Run and Kubernetes), stop mining, flush
    and answer, then let the server's own handler (uvicorn's) shut it down."""
    if threading.current_thread() is not threading.main_thread():
        return  # signals reach only the main thread; an in-process test client
    loop = asyncio.get_running_loop()
    for signum in signals:
        previous = signal.getsignal(signum)
        if not callable(previous):
            continue  # no server to shut down after us (Lambda): keep the default

        def handler(sig: int, frame: FrameType | None, previous: Callable[..., object] = previous
                    ) -> None:
            loop.call_soon_threadsafe(target.draining.set)
            previous(sig, frame)

        signal.signal(signum, handler)


def _authorized(request: Request) -> bool:
    if not SETTINGS.token:
        return True
    given = request.headers.get("authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {SETTINGS.token}".encode())


async def _mine(inputs: Inputs, span: tracing.Span) -> Response:
    invocation = Invocation(SETTINGS, instance(), inputs.seconds, inputs.concurrency,
                            inputs.batch, _auth, span)
    try:
        status, summary = await invocation.run()
    except Busy as e:
        return _error(429, str(e))
    summary["trace"] = span.trace_id
    # A structured log line as Cloud Logging reads it: severity, its own time
    # (RFC 3339, which `brkcoin logs` also merges by) and its trace and span.
    severity = "INFO" if status == 200 else "ERROR"
    when = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    _log(json.dumps({"severity": severity, "time": when, **span.log_fields(tracing.PROJECT),
                     "worker": summary}))
    return _json(status, summary)


def _log(line: str) -> None:
    """Print a log line; one that can't be written (a full disk) is reported on
    stderr if that works, and never fails the invocation: its counts are recorded
    and its summary is answered all the same."""
    try:
        print(line, flush=True)
    except (OSError, ValueError) as e:  # ValueError: stdout closed
        try:
            print(f"worker: log line not written ({e}): {line}", file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass


async def _answer(request: Request, data_of: Callable[[Request, bytes], object]) -> Response:
    if request.method in ("GET", "HEAD"):
        return PlainTextResponse(HELLO)
    if request.method != "POST":
        return _error(405, f"method {request.method} not allowed; POST / to mine",
                      Allow="GET, HEAD, POST")
    if not _authorized(request):  # before reading anything of the body
        return _error(401, UNAUTHORIZED)
    try:
        body = await read_body(request, SETTINGS.max_body, SETTINGS.body_timeout)
        inputs = mining_inputs(data_of(request, body), SETTINGS)
    except BadRequest as e:
        return _error(e.status, str(e))
    # The caller's trace (a scheduler's tick; a CloudEvent's distributed-tracing
    # extension), or a new one.
    caller = request.headers.get("traceparent") or request.headers.get("ce-traceparent")
    span = tracing.start(tracing.parse(caller), name="invocation", service="worker")
    try:
        return await _mine(inputs, span)
    finally:
        span.end()


@functions_framework.aio.http
async def worker(request: Request) -> Response:
    return await _answer(request, lambda _, body: parse_json(body))


@functions_framework.aio.http
async def worker_event(request: Request) -> Response:
    """An HTTP function that reads CloudEvents itself (rather than the aio
    cloud_event signature), so that every answer, a malformed event's included, is
    JSON, and the summary comes back in the body."""
    return await _answer(request, lambda r, body: pubsub_unwrapped(event_data(r.headers, body)))

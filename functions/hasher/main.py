"""hasher: SHA-256 hex digests, wire-compatible with DockerCoins' hasher.

GET /           -> "HASHER running on <hostname>\n"
POST /          -> 64-char lowercase hex SHA-256 of the raw body, text/plain
POST /?chunk=K  -> one digest per K-byte chunk of the body, newline-separated
                   (lets a worker hash a whole batch of units in one call)
"""

import hashlib
import json
import os
import socket
import time

import flask
import functions_framework

DELAY = float(os.environ.get("HASHER_DELAY", "0.1"))  # demo latency, as the original
MAX_BYTES = int(os.environ.get("HASHER_MAX_BYTES", str(1024 * 1024)))
HELLO = f"HASHER running on {socket.gethostname()}\n"


def _error(status: int, message: str) -> flask.Response:
    return flask.Response(
        json.dumps({"error": message}), status, mimetype="application/json"
    )


def _read_body(request: flask.Request) -> bytes | None:
    """The body, or None when it is over the limit (checked before reading it all)."""
    if request.content_length is not None and request.content_length > MAX_BYTES:
        return None
    body = request.stream.read(MAX_BYTES + 1)  # chunked bodies have no length
    return None if len(body) > MAX_BYTES else body


def _digests(body: bytes, chunk: int) -> str:
    view = memoryview(body)
    sha256 = hashlib.sha256
    return "\n".join(
        [sha256(view[i : i + chunk]).hexdigest() for i in range(0, len(body), chunk)]
    )


@functions_framework.http
def hasher(request: flask.Request) -> flask.Response:
    if request.method in ("GET", "HEAD"):
        return flask.Response(HELLO, mimetype="text/plain")
    if request.method != "POST":
        return _error(405, f"method {request.method} not allowed; use POST /")
    if request.path.strip("/"):
        return _error(404, f"no such path {request.path[:40]!r}; POST to /")
    chunk_arg = request.args.get("chunk")
    chunk = None
    if chunk_arg is not None:
        if not (chunk_arg.isascii() and chunk_arg.isdigit()) or not (
            1 <= int(chunk_arg) <= MAX_BYTES
        ):
            return _error(
                400, f"chunk must be an integer from 1 to {MAX_BYTES}, got {chunk_arg[:40]!r}"
            )
        chunk = int(chunk_arg)
    body = _read_body(request)
    if body is None:
        return _error(413, f"body larger than the limit of {MAX_BYTES} bytes")
    if chunk is not None and len(body) % chunk:
        return _error(
            400, f"body length {len(body)} is not a multiple of chunk={chunk}"
        )
    if DELAY:
        time.sleep(DELAY)
    if chunk is None:
        text = hashlib.sha256(body).hexdigest()
    else:
        text = _digests(body, chunk)
    return flask.Response(text, mimetype="text/plain")

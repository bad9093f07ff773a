"""rng: serves random bytes, wire-compatible with DockerCoins' rng.

GET /    -> "RNG running on <hostname>\n"
GET /<n> -> exactly n bytes from os.urandom, application/octet-stream
"""

import json
import os
import socket
import time

import flask
import functions_framework

DELAY = float(os.environ.get("RNG_DELAY", "0.1"))  # demo latency, as the original
MAX_BYTES = int(os.environ.get("RNG_MAX_BYTES", str(1024 * 1024)))
HELLO = f"RNG running on {socket.gethostname()}\n"


def _error(status: int, message: str) -> flask.Response:
    return flask.Response(
        json.dumps({"error": message}), status, mimetype="application/json"
    )


@functions_framework.http
def rng(request: flask.Request) -> flask.Response:
    if request.method not in ("GET", "HEAD"):
        return _error(405, f"method {request.method} not allowed; use GET /<n>")
    path = request.path.strip("/")
    if not path:
        return flask.Response(HELLO, mimetype="text/plain")
    if not (path.isascii() and path.isdigit()):
        return _error(400, f"n must be an integer from 1 to {MAX_BYTES}, got {path[:40]!r}")
    n = int(path)
    if not 1 <= n <= MAX_BYTES:
        return _error(400, f"n must be an integer from 1 to {MAX_BYTES}, got {n}")
    if DELAY:
        time.sleep(DELAY)
    return flask.Response(os.urandom(n), mimetype="application/octet-stream")

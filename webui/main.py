"""webui: the live mining page and its read-only JSON API over the Redis wallet.

GET /           -> index.html (and the page's own files: app.js, style.css, vendor/...)
GET /json       -> {"coins": HLEN wallet, "hashes": GET hashes, "now": epoch seconds}
                   as DockerCoins' webui serves it, so the original page works against it
GET /coins      -> the most recent coins, newest first, from the worker's `coins:recent`
GET /health     -> whether redis, rng, hasher and worker answer, probed concurrently

Read-only: it never writes to Redis. Errors are JSON {"error": "..."}: Redis down
answers 503, unknown paths 404, bad input 400. Every answer carries CORS headers so
the same static files work from any host when told where this function is (?api=).
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import flask
import functions_framework
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6380/0")
FUNCTION_URLS = {
    "rng": os.environ.get("RNG_URL", "http://127.0.0.1:8001"),
    "hasher": os.environ.get("HASHER_URL", "http://127.0.0.1:8002"),
    "worker": os.environ.get("WORKER_URL", "http://127.0.0.1:8003"),
}
PROBE_TIMEOUT = float(os.environ.get("WEBUI_PROBE_TIMEOUT", "1.0"))
# Many viewers each polling /health must not multiply the probes sent to the functions.
HEALTH_TTL = float(os.environ.get("WEBUI_HEALTH_TTL", "2.0"))
RECENT_KEY = "coins:recent"  # written by the worker beside `wallet`, newest first
MAX_RECENT = 100

HERE = Path(__file__).resolve().parent
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
# The page's files, fixed at start-up. Serving only names in this table (never a
# path joined from the request) makes traversal impossible and keeps main.py and
# requirements.txt private.
STATIC: dict[str, tuple[Path, str]] = {
    "/" + path.relative_to(HERE).as_posix(): (
        path,
        CONTENT_TYPES.get(path.suffix, "text/plain; charset=utf-8"),
    )
    for path in sorted(HERE.rglob("*"))
    if path.is_file()
    and not any(part.startswith((".", "_")) for part in path.relative_to(HERE).parts)
    and (path.suffix in CONTENT_TYPES or path.name == "LICENSE")
}
STATIC["/"] = STATIC["/index.html"]

# connect-src allows other origins because a statically hosted copy of the page
# reads the API from wherever ?api= points.
PAGE_CSP = (
    "default-src 'self'; connect-src 'self' http: https:; img-src 'self' data:; "
    "style-src 'self'; script-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


def _redis_client(url: str) -> redis.Redis:
    # Short timeouts so a dead Redis turns into a quick 503, never a hanging page.
    # One immediate retry replaces a pooled connection that a Redis restart closed.
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=1,
        socket_timeout=2,
        retry=Retry(NoBackoff(), 1),
        decode_responses=True,
    )


_redis = _redis_client(REDIS_URL)
_where = urlsplit(REDIS_URL)
REDIS_WHERE = f"{_where.hostname}:{_where.port or 6379}"  # no password in messages


def _json(status: int, body: object, **headers: str) -> flask.Response:
    response = flask.Response(json.dumps(body), status, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    response.headers.update(headers)
    return response


def _redis_down(error: redis.RedisError) -> flask.Response:
    return _json(503, {"error": f"Redis unreachable at {REDIS_WHERE}: {error}"})


def wallet_json() -> dict:
    """The DockerCoins /json triple, read in one transaction so it is consistent.

    `now` is Redis' clock, not this host's: several webui instances behind one URL
    then share one clock, and the page's rate (delta hashes / delta now) stays right
    whichever instance answers. `hashes` is a JSON number (0 before the first hash)
    where DockerCoins sent Redis' string or null: its page only ever subtracts two
    readings, which gives the same result for numbers, and numbers stay right for
    any other client.
    """
    pipe = _redis.pipeline(transaction=True)
    pipe.time().get("hashes").hlen("wallet")
    (seconds, micros), hashes, coins = pipe.execute()
    return {"coins": int(coins), "hashes": int(hashes or 0), "now": seconds + micros / 1e6}


def recent_coins(limit: int) -> dict:
    pipe = _redis.pipeline(transaction=True)
    pipe.lrange(RECENT_KEY, 0, limit - 1).hlen("wallet")
    entries, total = pipe.execute()
    coins = []
    for entry in entries:
        try:
            coin = json.loads(entry)
            digest, when = coin["digest"], float(coin["time"])
        except (ValueError, TypeError, KeyError):
            continue  # a malformed entry must not hide the good ones
        if isinstance(digest, str) and len(digest) == 64:
            coins.append({"digest": digest, "time": when})
    return {"coins": coins, "total": int(total)}


def _probe(url: str) -> dict:
    """GET {url}/ as the functions answer it: 200 and '<NAME> running on <host>'."""
    started = time.monotonic()
    result: dict = {"url": url}
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/", timeout=PROBE_TIMEOUT) as answer:
            text = answer.read(200).decode("utf-8", "replace").strip()
            result.update(up=answer.status == 200, detail=text.splitlines()[0] if text else "")
    except urllib.error.HTTPError as e:
        result.update(up=False, detail=f"HTTP {e.code}")
    except (OSError, ValueError) as e:  # refused, timeout, DNS, bad URL
        reason = getattr(e, "reason", e)
        result.update(up=False, detail=str(reason) or type(e).__name__)
    result["ms"] = round((time.monotonic() - started) * 1000, 1)
    return result


def _probe_redis() -> dict:
    started = time.monotonic()
    try:
        _redis.ping()
        result = {"up": True, "detail": f"PING ok at {REDIS_WHERE}"}
    except redis.RedisError as e:
        result = {"up": False, "detail": f"unreachable at {REDIS_WHERE}: {e}"}
    result["ms"] = round((time.monotonic() - started) * 1000, 1)
    return result


_health_lock = threading.Lock()
_health_cache: tuple[float, dict] = (0.0, {})


def health() -> dict:
    """Probe Redis and the functions at once; bounded by the probe timeout."""
    global _health_cache
    with _health_lock:  # one probe round at a time, shared by concurrent viewers
        checked, report = _health_cache
        if time.monotonic() - checked < HEALTH_TTL:
            return report
        with ThreadPoolExecutor(max_workers=len(FUNCTION_URLS) + 1) as pool:
            redis_future = pool.submit(_probe_redis)
            futures = {name: pool.submit(_probe, url) for name, url in FUNCTION_URLS.items()}
            report = {
                "redis": redis_future.result(),
                "functions": {name: future.result() for name, future in futures.items()},
                "checked": time.time(),
            }
        _health_cache = (time.monotonic(), report)
        return report


def _limit(request: flask.Request) -> int:
    raw = request.args.get("limit", "20")
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_RECENT):
        raise ValueError(f"limit must be an integer from 1 to {MAX_RECENT}, got {raw[:20]!r}")
    return int(raw)


def _static(path: str) -> flask.Response | None:
    found = STATIC.get(path)
    if found is None:
        return None
    file, content_type = found
    response = flask.send_file(file, conditional=True, etag=True)
    response.headers["Content-Type"] = content_type  # as is: Flask would add a 2nd charset
    # Names are not fingerprinted, so revalidate each load (cheap: ETag -> 304).
    response.headers["Cache-Control"] = "no-cache"
    if content_type.startswith("text/html"):
        response.headers["Content-Security-Policy"] = PAGE_CSP
    return response


def _route(request: flask.Request) -> flask.Response:
    path = request.path
    if path == "/json":
        try:
            return _json(200, wallet_json())
        except redis.RedisError as e:
            return _redis_down(e)
    if path == "/coins":
        try:
            limit = _limit(request)
        except ValueError as e:
            return _json(400, {"error": str(e)})
        try:
            return _json(200, recent_coins(limit))
        except redis.RedisError as e:
            return _redis_down(e)
    if path == "/health":
        return _json(200, health())
    response = _static(path)
    if response is None:
        shown = path if len(path) <= 80 else path[:80] + "..."
        return _json(404, {"error": f"no such path {shown!r}; try / or /json"})
    return response


@functions_framework.http
def webui(request: flask.Request) -> flask.Response:
    if request.method == "OPTIONS":  # CORS preflight
        response = flask.Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = "GET, HEAD, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = "Content-Type"
        response.headers["Access-Control-Max-Age"] = "3600"
    elif request.method in ("GET", "HEAD"):
        response = _route(request)
    else:
        response = _json(
            405,
            {"error": f"method {request.method} not allowed; webui is read-only (GET)"},
            Allow="GET, HEAD, OPTIONS",
        )
    # On every answer, errors included, so a page on another origin can read them.
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response

"""webui: the live mining page and its read-only JSON API over the Redis wallet.

GET /           -> index.html (and the page's own files: app.js, style.css, vendor/...)
GET /json       -> {"coins": HLEN wallet, "hashes": GET hashes, "now": epoch seconds}
                   as DockerCoins' webui serves it, so the original page works against it
GET /coins      -> the most recent coins, newest first, from the worker's `coins:recent`
GET /history    -> {"points": [[epoch second, hashes], ...], "now"}: the counter's
                   recent history, oldest first, from the worker's `hashes:history`
GET /stats      -> the last 5 s of the worker's telemetry (`brkcoin:stats`) added up
                   per function, with the local platform's report (`brkcoin:platform`):
                   each function's `instance_seconds` comes from it (null elsewhere),
                   and so do the worker's `invocations` when its scheduler counts them
GET /health     -> whether redis, rng, hasher and worker answer: up, ms and the banner

Read-only: it never writes to Redis and never reads a request body (one over 1 KiB,
or chunked, is refused at once and the connection closed). Errors are JSON
{"error": "..."}: Redis unreachable answers 503, unknown paths 404, bad input 400.
A key holding what the worker never writes there (a wrong type, a non-count, an
entry too long) is no error: what it gives reads as null (unknown), and the
answer's `unreadable` ({key: why}, present only then) says why. Reads are
bounded whatever a key holds (see the limits below). Every answer carries CORS
headers so the same static files work from any host when told where this function is (?api=).

An async function (functions_framework.aio): the plain `functions-framework
--target webui` command serves it with uvicorn, so a slow client holds no thread.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import logging
import math
import os
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote, urlsplit

import functions_framework.aio
import readings  # webui/readings.py: Functions Framework puts this folder on sys.path
from starlette.requests import Request
from starlette.responses import Response

if TYPE_CHECKING:
    import redis.asyncio


def _env_number(name: str, default: float, low: float, high: float) -> float:
    raw = os.environ.get(name)
    try:
        value = default if raw is None else float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:
        raise ValueError(f"{name} must be a number from {low:g} to {high:g}, got {raw!r}")
    return value


class Target(NamedTuple):
    """Where a function answers its `GET /` banner."""

    host: str
    port: int
    tls: bool
    request: bytes  # the request's head, but the blank line that ends it
    host_header: str
    path: str


def _env_target(name: str, default: str) -> Target:
    raw = os.environ.get(name, default)
    url = urlsplit(raw)
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
    except ValueError:
        port = 0
    if not (url.scheme in ("http", "https") and url.hostname and port and raw.isascii()
            and raw.isprintable() and " " not in raw):
        raise ValueError(f"{name} must be an http:// or https:// URL, got {raw!r}")
    path = url.path.rstrip("/") + "/"
    host_header = url.netloc.rpartition("@")[2]  # never send the URL's credentials
    request = (f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: brkcoin-webui\r\n"
               "Accept: text/plain\r\nConnection: close\r\n").encode()
    return Target(url.hostname, port, url.scheme == "https", request, host_header, path)


def _aws_credentials() -> tuple[str, str, str, str] | None:
    """UPSTREAM_AUTH=aws-sigv4 (on Lambda, where the functions' URLs are AWS_IAM):
    the key, secret, session token and region Lambda gives, to sign the probes."""
    mode = os.environ.get("UPSTREAM_AUTH", "")
    if mode not in ("", "aws-sigv4"):
        raise ValueError(f"UPSTREAM_AUTH must be unset or 'aws-sigv4', got {mode!r}")
    env = os.environ
    key, secret = env.get("AWS_ACCESS_KEY_ID", ""), env.get("AWS_SECRET_ACCESS_KEY", "")
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION", "")
    if mode and not (key and secret and region):
        raise ValueError("UPSTREAM_AUTH=aws-sigv4 needs AWS_ACCESS_KEY_ID, "
                         "AWS_SECRET_ACCESS_KEY and AWS_REGION (Lambda sets them)")
    return (key, secret, env.get("AWS_SESSION_TOKEN", ""), region) if mode else None


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _signature(target: Target) -> bytes:
    """The SigV4 headers (service `lambda`) of the probe of `target`, a GET / with
    no body, or nothing. hashlib and hmac rather than botocore: this folder takes
    nothing beyond its requirements.txt."""
    if CREDENTIALS is None:
        return b""
    key, secret, token, region = CREDENTIALS
    now = time.gmtime()
    stamp, day = time.strftime("%Y%m%dT%H%M%SZ", now), time.strftime("%Y%m%d", now)
    headers = {"host": target.host_header, "x-amz-date": stamp}  # in sorted order
    if token:
        headers["x-amz-security-token"] = token
    signed = ";".join(headers)
    canonical = "\n".join(["GET", quote(target.path, safe="/~"), "",
                           *(f"{k}:{v}" for k, v in headers.items()), "", signed,
                           hashlib.sha256(b"").hexdigest()])
    scope = f"{day}/{region}/lambda/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    signing_key = ("AWS4" + secret).encode()
    for part in (day, region, "lambda", "aws4_request"):
        signing_key = _hmac(signing_key, part)
    signature = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={key}/{scope}, "
                                f"SignedHeaders={signed}, Signature={signature}")
    del headers["host"]  # already in the request
    return "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()


def _redis_where(url: str) -> str:
    """host:port (or the socket path) of REDIS_URL for messages: no password."""
    parts = urlsplit(url)
    try:
        if parts.scheme == "unix":
            return parts.path
        if parts.scheme in ("redis", "rediss") and parts.hostname:
            return f"{parts.hostname}:{parts.port or 6379}"
    except ValueError:
        pass
    raise ValueError("REDIS_URL must be a redis://, rediss:// or unix:// URL with a host")


REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6380/0")
REDIS_WHERE = _redis_where(REDIS_URL)
FUNCTIONS = {
    "rng": _env_target("RNG_URL", "http://127.0.0.1:8001"),
    "hasher": _env_target("HASHER_URL", "http://127.0.0.1:8002"),
    "worker": _env_target("WORKER_URL", "http://127.0.0.1:8003"),
}
CREDENTIALS = _aws_credentials()
PROBE_TIMEOUT = _env_number("WEBUI_PROBE_TIMEOUT", 1.0, 0.01, 60)  # total, per probe
# Many viewers each polling /health must not multiply the probes sent to the functions.
HEALTH_TTL = _env_number("WEBUI_HEALTH_TTL", 2.0, 0, 3600)
MAX_BODY = 1024  # a GET has no use for a body; anything larger is refused unread
RECENT_KEY = "coins:recent"  # written by the worker beside `wallet`, newest first
MAX_RECENT = 100
HISTORY_KEY = "hashes:history"  # written by the worker: newest first, one point a second
MAX_HISTORY = 600
STATS_KEY = "brkcoin:stats"  # written by the worker: a telemetry line per flush
STATS_WINDOW = 5  # seconds of telemetry that /stats adds up
# A line a second from each of at most 80 invocations (the spec's MAX_WORKERS)
# over the 6 s read is 480: twice that.
STATS_LINES = 1000
PLATFORM_KEY = "brkcoin:platform"  # written by the local platform only, every second
KEY_TYPES = {"hashes": "string", "wallet": "hash", RECENT_KEY: "list", HISTORY_KEY: "list",
             STATS_KEY: "zset", PLATFORM_KEY: "string"}
# What a read may take from Redis, whatever a key holds: 41 bytes of `hashes`,
# 64 KiB of the platform's report; a list or a set is read only while it holds at
# most MAX_ENTRIES entries and the bytes below (as MEMORY USAGE counts them; the
# worker's own take 11 KiB, 13 KiB and ~5 MiB), and no entry over its bound is
# sent: at most 100 KiB of coins, 38 KiB of history and 8 MiB of telemetry.
MAX_ENTRIES = 100_000  # keeps MEMORY USAGE's walk of a sorted set short
BOUNDS = {  # key: (bytes of the key, bytes of an entry)
    RECENT_KEY: (1024 * 1024, 1024),  # 100 coins of ~100 bytes
    HISTORY_KEY: (1024 * 1024, readings.MAX_POINT),  # 600 points of ~25 bytes
    STATS_KEY: (16 * 1024 * 1024, readings.MAX_LINE),  # 60 s of lines from 80 invocations
}
COUNTER = re.compile(rb"[0-9]{1,19}")  # what INCRBY of counts leaves: 0 to 2**63 - 1
SHOWN = 40  # bytes of a bad counter shown in `unreadable`; one more is read
DIGEST = re.compile(r"[0-9a-f]{64}")
BANNER_BYTES = 256  # read of a function's banner; only its first line is shown...
BANNER_CHARS = 80  # ...cut to this length

HERE = Path(__file__).resolve().parent
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}


class StaticFile(NamedTuple):
    body: bytes
    content_type: str
    etag: str


def _static_file(path: Path) -> StaticFile:
    body = path.read_bytes()
    content_type = CONTENT_TYPES.get(path.suffix, "text/plain; charset=utf-8")
    return StaticFile(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:20] + '"')


# The page's files, read at start-up. Serving only names in this table (never a
# path joined from the request) makes traversal impossible and keeps main.py and
# requirements.txt private.
STATIC: dict[str, StaticFile] = {
    "/" + path.relative_to(HERE).as_posix(): _static_file(path)
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


# ---- Redis ----

_client: tuple[asyncio.AbstractEventLoop, redis.asyncio.Redis] | None = None


def _redis() -> redis.asyncio.Redis:
    """The Redis client of the running event loop: one for the server's life (a
    test client may run a loop per request, and connections belong to their loop)."""
    global _client
    # redis is imported here and in the functions that catch its errors, not at
    # the top: it is the webui's heaviest import (0.1 to 0.2 s) and the page
    # itself does not need it, so a cold start answers sooner.
    import redis.asyncio
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    loop = asyncio.get_running_loop()
    if _client is None or _client[0] is not loop:
        # Short timeouts so a dead Redis turns into a quick 503, never a hanging page.
        # One immediate retry replaces a pooled connection that a Redis restart closed.
        _client = (loop, redis.asyncio.Redis.from_url(
            REDIS_URL, socket_connect_timeout=1, socket_timeout=2, retry=Retry(NoBackoff(), 1)
        ))
    return _client[1]


# A range read of KEYS[1], a list or a sorted set, bounded whatever it holds.
# Redis has no command that measures an entry without copying it, which takes
# Redis seconds for huge ones: so a key of over ARGV[2] entries (counted by
# ARGV[1], LLEN or ZCARD) or ARGV[3] bytes (MEMORY USAGE, which reads no entry)
# is not read at all, and an entry over ARGV[4] bytes is sent as nil (the bound
# that still holds where MEMORY is refused). ARGV[5...]: the read, but the key.
# pcall: a wrong type answers its WRONGTYPE error.
BOUNDED_READ = """
local count = redis.pcall(ARGV[1], KEYS[1])
if type(count) ~= 'number' then return count end
if count > tonumber(ARGV[2]) then
  return redis.error_reply('TOOBIG holds ' .. count .. ' entries')
end
local size = redis.pcall('MEMORY', 'USAGE', KEYS[1], 'SAMPLES', '0')
if type(size) == 'number' and size > tonumber(ARGV[3]) then
  return redis.error_reply('TOOBIG holds ' .. size .. ' bytes')
end
local reply = redis.call(ARGV[5], KEYS[1], unpack(ARGV, 6))
for i, entry in ipairs(reply) do
  if #entry > tonumber(ARGV[4]) then reply[i] = false end
end
return reply
"""


def _bounded(key: str, *read: str) -> tuple[str, ...]:
    """The range read `read` (a command and its arguments but the key) of `key`,
    bounded as BOUNDS says, for _transaction: an entry over its bound reads as None."""
    count = "ZCARD" if KEY_TYPES[key] == "zset" else "LLEN"
    most, entry = BOUNDS[key]
    return ("EVAL", BOUNDED_READ, "1", key, count, str(MAX_ENTRIES), str(most), str(entry), *read)


async def _transaction(*commands: tuple[str, ...]) -> list[Any]:
    """Run read commands (name, key, args...) in one MULTI, so they see one moment.
    The result of a read of a key of the wrong type, or too big, is Malformed, saying why."""
    from redis import ResponseError  # see _redis()

    pipe = _redis().pipeline(transaction=True)
    for command in commands:
        pipe.execute_command(*command)
    results: list[Any] = await pipe.execute(raise_on_error=False)
    for i, (command, result) in enumerate(zip(commands, results, strict=True)):
        if not isinstance(result, ResponseError):
            continue
        key = command[3] if command[0] == "EVAL" else command[1] if len(command) > 1 else ""
        if str(result).startswith("TOOBIG "):
            results[i] = readings.Malformed(f"{str(result)[7:]}, more than the worker keeps there")
        elif key in KEY_TYPES and str(result).startswith("WRONGTYPE"):
            kind = await _redis().type(key)
            kind = kind.decode() if isinstance(kind, bytes) else kind
            results[i] = readings.Malformed(f"holds a {kind}, not a {KEY_TYPES[key]}")
        else:
            raise result
    return results


class Reading:
    """The values of one answer. A key that holds what the worker never writes
    there reads as None (unknown), and `unreadable` keeps why, by key."""

    def __init__(self) -> None:
        self.unreadable: dict[str, str] = {}

    def of(self, key: str, result: Any, parse: Callable[[Any], Any] = lambda value: value) -> Any:
        try:
            if isinstance(result, readings.Malformed):
                raise result
            return parse(result)
        except readings.Malformed as e:
            self.unreadable[key] = str(e)
            return None

    def answer(self, **fields: Any) -> dict[str, Any]:
        return {**fields, "unreadable": self.unreadable} if self.unreadable else fields


def _counter(raw: bytes) -> int:
    """The first SHOWN + 1 bytes of `hashes` as a count."""
    if COUNTER.fullmatch(raw) and int(raw) < 2**63:
        return int(raw)
    shown = raw[:SHOWN].decode("utf-8", "replace") + ("..." if len(raw) > SHOWN else "")
    raise readings.Malformed(f"holds {shown!r}, not a count")


async def wallet_json() -> dict[str, Any]:
    """The DockerCoins /json triple, read in one transaction so it is consistent.

    `now` is Redis' clock, not this host's: several webui instances behind one URL
    then share one clock, and the page's rate (delta hashes / delta now) stays right
    whichever instance answers. `hashes` is a JSON number (0 before the first hash)
    where DockerCoins sent Redis' string or null: its page only ever subtracts two
    readings, which gives the same result for numbers, and numbers stay right for
    any other client. Only the counter's first bytes are read: a count has at most 19.
    """
    (seconds, micros), exists, hashes, coins = await _transaction(
        ("TIME",), ("EXISTS", "hashes"), ("GETRANGE", "hashes", "0", str(SHOWN)),
        ("HLEN", "wallet"),
    )
    read = Reading()
    return read.answer(coins=read.of("wallet", coins),
                       hashes=read.of("hashes", hashes, _counter) if exists else 0,
                       now=seconds + micros / 1e6)


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        return None
    return number if math.isfinite(number) else None


def _coin(entry: bytes | None) -> dict[str, Any] | None:
    """A `coins:recent` entry as the page shows it; None when malformed or too long."""
    if entry is None:
        return None
    try:
        coin = json.loads(entry)
    except (ValueError, RecursionError):
        return None
    if not isinstance(coin, dict):
        return None
    digest, when = coin.get("digest"), _finite(coin.get("time"))
    if not (isinstance(digest, str) and DIGEST.fullmatch(digest) and when is not None):
        return None
    return {"digest": digest, "time": when}


async def recent_coins(limit: int) -> dict[str, Any]:
    entries, total = await _transaction(
        _bounded(RECENT_KEY, "LRANGE", "0", str(limit - 1)), ("HLEN", "wallet")
    )
    read = Reading()
    # A malformed entry must not hide the good ones.
    coins = read.of(RECENT_KEY, entries,
                    lambda entries: [coin for coin in map(_coin, entries) if coin is not None])
    return read.answer(coins=coins, total=read.of("wallet", total))


def _points(entries: list[bytes | None]) -> list[list[int]]:
    points = [point for point in map(readings.history_point, entries) if point is not None]
    return points[::-1]


async def history() -> dict[str, Any]:
    (seconds, micros), entries = await _transaction(
        ("TIME",), _bounded(HISTORY_KEY, "LRANGE", "0", str(MAX_HISTORY - 1))
    )
    read = Reading()
    return read.answer(points=read.of(HISTORY_KEY, entries, _points), now=seconds + micros / 1e6)


def _scored(reply: list[Any]) -> list[tuple[bytes | None, float]]:
    """ZRANGEBYSCORE's WITHSCORES reply, [member (None if too long), score, ...],
    as (member, score) pairs."""
    return [(member, float(score)) for member, score in zip(reply[::2], reply[1::2], strict=True)]


async def stats() -> dict[str, Any]:
    """The last STATS_WINDOW seconds of telemetry by Redis' clock, added up.

    The set keeps a minute of lines: reading only the window's moves ~12 times
    less for each viewer each second. Where the window starts is known only from
    Redis' clock, so a first TIME places the range (a second early, should the
    clock step back), and the lines are cut exactly at the TIME read in the same
    MULTI as the range: one moment, as for /json.
    """
    [(seconds, micros)] = await _transaction(("TIME",))
    since = seconds + micros / 1e6 - STATS_WINDOW - 1
    (seconds, micros), entries, report = await _transaction(
        ("TIME",),
        _bounded(STATS_KEY, "ZRANGEBYSCORE", repr(since), "+inf", "WITHSCORES",
                 "LIMIT", "0", str(STATS_LINES)),
        ("GETRANGE", PLATFORM_KEY, "0", str(readings.MAX_REPORT)),
    )
    read = Reading()
    lines = read.of(STATS_KEY, entries, _scored)
    platform = read.of(PLATFORM_KEY, report, readings.platform)
    summary = readings.summarize(lines, seconds + micros / 1e6, STATS_WINDOW, platform)
    return read.answer(**summary, platform=platform)


# ---- /health ----


@functools.cache
def _tls() -> ssl.SSLContext:
    return ssl.create_default_context()


def _why(error: Exception) -> str:
    """A short reason that names no host: /health is public, the functions are not."""
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, ConnectionRefusedError):
        return "refused"
    if isinstance(error, socket.gaierror):
        return "unknown host"
    if isinstance(error, ssl.SSLError):
        return "TLS error"
    if isinstance(error, ConnectionError | asyncio.IncompleteReadError):
        return "connection closed"
    if isinstance(error, OSError):
        return "unreachable"
    return "not an HTTP answer"


async def _read_up_to(reader: asyncio.StreamReader, size: int) -> bytes:
    data = b""
    while len(data) < size and (part := await reader.read(size - len(data))):
        data += part
    return data


async def _banner(reader: asyncio.StreamReader, headers: dict[str, str]) -> str:
    """The first line of a 200 answer's body, printable and cut short."""
    size = BANNER_BYTES
    if "chunked" in headers.get("transfer-encoding", "").lower():
        size = min(size, int((await reader.readline()).split(b";")[0], 16))
    elif headers.get("content-length", "").isdigit():
        size = min(size, int(headers["content-length"]))
    text = (await _read_up_to(reader, size)).decode("utf-8", "replace")
    first = text.splitlines()[0] if text.strip() else ""
    return "".join(c for c in first.strip() if c.isprintable())[:BANNER_CHARS]


async def _get_banner(target: Target) -> tuple[bool, str]:
    """GET / once, following no redirect: (up, detail). A body is read only from a 200."""
    reader, writer = await asyncio.open_connection(
        target.host, target.port, ssl=_tls() if target.tls else None, limit=16 * 1024
    )
    try:
        writer.write(target.request + _signature(target) + b"\r\n")
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status_line, *lines = head.split("\r\n")
        version, _, rest = status_line.partition(" ")
        if not (version.startswith("HTTP/") and rest[:3].isdigit()):
            raise ValueError("not an HTTP status line")
        if rest[:3] != "200":
            return False, f"HTTP {rest[:3]}"
        headers = {name.strip().lower(): value.strip()
                   for name, _, value in (line.partition(":") for line in lines)}
        return True, await _banner(reader, headers)
    finally:
        writer.close()


async def _probe(target: Target) -> dict[str, Any]:
    started = time.monotonic()
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):  # the whole exchange, however it trickles
            up, detail = await _get_banner(target)
    except (OSError, ValueError, EOFError, asyncio.LimitOverrunError) as e:
        up, detail = False, _why(e)
    return {"up": up, "ms": round((time.monotonic() - started) * 1000, 1), "detail": detail}


async def _probe_redis() -> dict[str, Any]:
    import redis  # see _redis()

    started = time.monotonic()
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            await _redis().ping()
        up, detail = True, "PING ok"
    except (TimeoutError, redis.TimeoutError):
        up, detail = False, "timed out"
    except redis.RedisError:
        up, detail = False, "unreachable"
    return {"up": up, "ms": round((time.monotonic() - started) * 1000, 1), "detail": detail}


_report: tuple[float, dict[str, Any]] | None = None  # (monotonic time, report)
_round: asyncio.Task[dict[str, Any]] | None = None  # the probe round in flight


async def _probe_all() -> dict[str, Any]:
    global _report
    redis_probe, *probes = await asyncio.gather(
        _probe_redis(), *map(_probe, FUNCTIONS.values())
    )
    report = {"redis": redis_probe, "functions": dict(zip(FUNCTIONS, probes, strict=True)),
              "checked": time.time()}
    _report = (time.monotonic(), report)
    return report


async def health() -> dict[str, Any]:
    """The latest probe round if fresh; else one round, shared by every caller
    who asks while it runs."""
    global _round
    if _report is not None and time.monotonic() - _report[0] < HEALTH_TTL:
        return _report[1]
    loop = asyncio.get_running_loop()
    if _round is None or _round.done() or _round.get_loop() is not loop:
        _round = loop.create_task(_probe_all())
    # shield: a viewer who goes away must not cancel the round the others await.
    return await asyncio.shield(_round)


# ---- HTTP ----


def _json(status: int, body: object, **headers: str) -> Response:
    # allow_nan=False: a slip becomes a clear error, never NaN that no page can parse.
    return Response(json.dumps(body, allow_nan=False), status,
                    {"Cache-Control": "no-store", **headers}, media_type="application/json")


def _error(status: int, message: str, **headers: str) -> Response:
    return _json(status, {"error": message}, **headers)


async def _from_redis(read: Awaitable[dict[str, Any]]) -> Response:
    import redis  # see _redis()

    try:
        return _json(200, await read)
    except (redis.ConnectionError, redis.TimeoutError) as e:
        return _error(503, f"Redis unreachable at {REDIS_WHERE}: {e}")
    except redis.RedisError as e:
        return _error(503, f"Redis at {REDIS_WHERE} refused the read: {e}")


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", "20")
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_RECENT):
        raise ValueError(f"limit must be an integer from 1 to {MAX_RECENT}, got {raw[:20]!r}")
    return int(raw)


def _etag_matches(if_none_match: str | None, etag: str) -> bool:
    if if_none_match is None:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


def _static(request: Request, file: StaticFile) -> Response:
    # Names are not fingerprinted, so revalidate each load (cheap: ETag -> 304).
    headers = {"ETag": file.etag, "Cache-Control": "no-cache"}
    if file.content_type.startswith("text/html"):
        headers["Content-Security-Policy"] = PAGE_CSP
    if _etag_matches(request.headers.get("if-none-match"), file.etag):
        return Response(status_code=304, headers=headers)
    return Response(file.body, headers=headers, media_type=file.content_type)


async def _route(request: Request) -> Response:
    path = request.scope["path"]
    if path == "/json":
        return await _from_redis(wallet_json())
    if path == "/coins":
        try:
            limit = _limit(request)
        except ValueError as e:
            return _error(400, str(e))
        return await _from_redis(recent_coins(limit))
    if path == "/history":
        return await _from_redis(history())
    if path == "/stats":
        return await _from_redis(stats())
    if path == "/health":
        return _json(200, await health())
    file = STATIC.get(path)
    if file is None:
        shown = path if len(path) <= 80 else path[:80] + "..."
        return _error(404, f"no such path {shown!r}; try / or /json")
    return _static(request, file)


def _body_refusal(request: Request) -> Response | None:
    """413 for a body webui would have to read: chunked, or over MAX_BODY. The
    answer closes the connection, so the server never reads the rest."""
    if "chunked" in request.headers.get("transfer-encoding", "").lower():
        declared = "a chunked body"
    else:
        length = request.headers.get("content-length", "0")
        if not length.isdigit() or int(length) <= MAX_BODY:
            return None  # a small body is ignored (a bad Content-Length never gets here)
        declared = f"a body of {length[:20]} bytes"
    return _error(413, f"webui is read-only and takes no request body, got {declared}",
                  Connection="close")


async def _answer(request: Request) -> Response:
    refusal = _body_refusal(request)
    if refusal is not None:
        return refusal
    if request.method == "OPTIONS":  # CORS preflight
        return Response(status_code=204, headers={
            "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
            "Access-Control-Allow-Headers": "Content-Type",
            "Access-Control-Max-Age": "3600",
        })
    if request.method not in ("GET", "HEAD"):
        return _error(405, f"method {request.method} not allowed; webui is read-only (GET)",
                      Allow="GET, HEAD, OPTIONS", Connection="close")
    return await _route(request)


@functions_framework.aio.http
async def webui(request: Request) -> Response:
    try:
        response = await _answer(request)
    except Exception:  # a bug: still JSON with CORS, so the page can say what broke
        logging.exception("webui: %s %s failed", request.method, request.scope["path"])
        response = _error(500, "webui failed on this request; see its log")
    # On every answer, errors included, so a page on another origin can read them.
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response

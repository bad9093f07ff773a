"""worker: mines BRK coins for a bounded time and records them in the Redis wallet.

One invocation runs `concurrency` mining loops for `seconds`, each unit of work
being: demo sleep -> GET {RNG_URL}/32*batch -> POST {HASHER_URL}/ -> coins (digests
starting with "0") into the wallet. Counts reach Redis at least once a second and
at the end, in one atomic, idempotent script call, so the web UI's rate is live and
`hashes` equals the hashes computed. See DESIGN.md for the contract.

HTTP trigger `worker` (Cloud Scheduler, EventBridge, the local scheduler) and
CloudEvent trigger `worker_event` (Pub/Sub push, Knative PingSource).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
import random
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import flask
import functions_framework
import redis

UNIT = 32  # random bytes per unit of work, as the original worker
MAX_BATCH = 32768  # 32 x 32768 = 1 MiB, the rng and hasher body limits

RNG_URL = os.environ.get("RNG_URL", "http://127.0.0.1:8001")
HASHER_URL = os.environ.get("HASHER_URL", "http://127.0.0.1:8002")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6380/0")
DELAY = float(os.environ.get("WORKER_DELAY", "0.1"))
TOKEN = os.environ.get("WORKER_TOKEN", "")
DEFAULT_SECONDS = float(os.environ.get("WORKER_SECONDS", "10"))
MAX_SECONDS = float(os.environ.get("WORKER_MAX_SECONDS", "900"))  # Lambda's limit
MAX_CONCURRENCY = int(os.environ.get("WORKER_MAX_CONCURRENCY", "256"))
HTTP_TIMEOUT = float(os.environ.get("WORKER_HTTP_TIMEOUT", "10"))
# "google-id-token": call private Cloud Run rng/hasher with an ID token from the
# metadata server, as Google's service-to-service auth expects.
UPSTREAM_AUTH = os.environ.get("UPSTREAM_AUTH", "")
METADATA_HOST = os.environ.get("GCE_METADATA_HOST", "metadata.google.internal")
if UPSTREAM_AUTH not in ("", "google-id-token"):
    raise ValueError(f"UPSTREAM_AUTH must be unset or 'google-id-token', not {UPSTREAM_AUTH!r}")
FLUSH_INTERVAL = 1.0
# How long the end of an invocation waits for an unreachable Redis before it
# gives up and answers 503 with the counts it could not record.
FLUSH_GRACE = float(os.environ.get("WORKER_FLUSH_GRACE", "10"))
RECENT_COINS = 100  # capped list `coins:recent` beside the wallet, for the web UI

HELLO = f"WORKER running on {socket.gethostname()}\n"
UNAUTHORIZED = "missing or wrong 'Authorization: Bearer <WORKER_TOKEN>'"
INPUTS = {  # name: (default, low, high, type)
    "seconds": (DEFAULT_SECONDS, 0.0, MAX_SECONDS, float),
    "concurrency": (1, 1, MAX_CONCURRENCY, int),
    "batch": (1, 1, MAX_BATCH, int),
}

# Adds one flush to the wallet exactly once: a retried flush (same marker key,
# e.g. after a reply lost to a Redis restart) returns its first result instead
# of counting twice.
# KEYS: hashes, wallet, recent, marker. ARGV: now, hashes, cap, digest1, bytes1, ...
_FLUSH_LUA = """
local done = redis.call('GET', KEYS[4])
if done then return tonumber(done) end
redis.call('INCRBY', KEYS[1], ARGV[2])
local new = {}
for i = 4, #ARGV, 2 do
  if redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) == 1 then new[#new + 1] = ARGV[i] end
end
local cap = tonumber(ARGV[3])
for j = math.max(1, #new - cap + 1), #new do
  redis.call('LPUSH', KEYS[3], cjson.encode({digest = new[j], time = tonumber(ARGV[1])}))
end
if #new > 0 then redis.call('LTRIM', KEYS[3], 0, cap - 1) end
redis.call('SET', KEYS[4], #new, 'EX', 3600)
return #new
"""

_redis = redis.Redis.from_url(
    REDIS_URL, socket_timeout=5, socket_connect_timeout=2, retry_on_timeout=False
)
_flush_script = _redis.register_script(_FLUSH_LUA)


class BadInput(ValueError):
    """A request input that is missing, of the wrong type or out of bounds."""


class UpstreamError(Exception):
    """rng or hasher failed or answered something that is not the contract."""


def parse_inputs(data: object) -> dict:
    """Validated mining inputs from a JSON object (all optional, all bounded)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BadInput("body must be a JSON object like {\"seconds\": 10}")
    unknown = sorted(set(data) - set(INPUTS))
    if unknown:
        raise BadInput(f"unknown input(s) {unknown}; known: {sorted(INPUTS)}")
    inputs = {}
    for name, (default, low, high, kind) in INPUTS.items():
        value = data.get(name, default)
        ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is int:
            ok_type = ok_type and float(value).is_integer()
        if not ok_type or not (low < value <= high if kind is float else low <= value <= high):
            if kind is float:
                wanted = f"a number above {low:g} and at most {high:g}"
            else:
                wanted = f"an integer from {low} to {high}"
            raise BadInput(f"{name} must be {wanted}, got {value!r}")
        inputs[name] = kind(value)
    return inputs


class IdTokens:
    """Google ID tokens per audience, fetched from the metadata server and reused
    until five minutes before they expire (they live an hour)."""

    def __init__(self) -> None:
        self._tokens: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def get(self, audience: str) -> str:
        with self._lock:
            token, expires = self._tokens.get(audience, ("", 0.0))
            if time.time() < expires - 300:
                return token
            token = self._fetch(audience)
            payload = token.split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            self._tokens[audience] = (token, float(claims["exp"]))
            return token

    @staticmethod
    def _fetch(audience: str) -> str:
        conn = http.client.HTTPConnection(METADATA_HOST, timeout=HTTP_TIMEOUT)
        try:
            conn.request(
                "GET",
                "/computeMetadata/v1/instance/service-accounts/default/identity"
                f"?audience={audience}",
                headers={"Metadata-Flavor": "Google"},
            )
            response = conn.getresponse()
            token = response.read().decode()
        except OSError as e:
            raise UpstreamError(f"metadata server unreachable for an ID token: {e!r}") from e
        finally:
            conn.close()
        if response.status != 200:
            raise UpstreamError(f"metadata server: HTTP {response.status} {token[:200]!r}")
        return token


_id_tokens = IdTokens()


class Endpoint:
    """One keep-alive HTTP connection to rng or hasher, for one mining loop.

    http.client rather than requests: the batch=1 hot path is two calls per
    hash, and requests' per-call overhead alone halves the hash rate.
    """

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._audience = f"{parts.scheme}://{parts.netloc}"
        self._conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=HTTP_TIMEOUT)

    def call(self, method: str, path: str, body: bytes | None = None) -> bytes:
        headers = {"Content-Type": "application/octet-stream"} if body is not None else {}
        if UPSTREAM_AUTH == "google-id-token":
            headers["Authorization"] = f"Bearer {_id_tokens.get(self._audience)}"
        reused = self._conn is not None
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = self._connect()
            try:
                self._conn.request(method, self._prefix + path, body, headers)
                response = self._conn.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                self.close()
                if reused and attempt == 1:  # the server closed an idle keep-alive
                    continue
                raise UpstreamError(f"{method} {path}: {e!r}") from e
            except (OSError, http.client.HTTPException) as e:
                self.close()
                raise UpstreamError(f"{method} {path}: {e!r}") from e
            if response.status != 200:
                raise UpstreamError(f"{method} {path}: HTTP {response.status} {data[:200]!r}")
            return data
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@dataclass
class Tally:
    """What the loops of one invocation found, and what is not yet in Redis."""

    hashes: int = 0
    coins: int = 0
    new_coins: int = 0
    errors: dict = field(default_factory=lambda: {"rng": 0, "hasher": 0, "redis": 0})
    last_errors: dict = field(default_factory=dict)  # kind -> the latest message, for logs
    pending_hashes: int = 0
    pending_coins: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, hashes: int, coins: list[tuple[str, bytes]]) -> None:
        with self.lock:
            self.hashes += hashes
            self.pending_hashes += hashes
            self.coins += len(coins)
            self.pending_coins.update(coins)

    def error(self, kind: str, message: str) -> None:
        with self.lock:
            self.errors[kind] += 1
            self.last_errors[kind] = message[:300]

    def take(self) -> tuple[int, dict]:
        with self.lock:
            taken = self.pending_hashes, self.pending_coins
            self.pending_hashes, self.pending_coins = 0, {}
            return taken


class Recorder:
    """Moves a tally's pending counts into Redis, one idempotent flush at a time.

    A flush that fails stays in flight and is retried with the same marker, so
    a Redis outage delays counts but never loses or doubles them.
    """

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.inflight: tuple[str, int, dict] | None = None

    def flush(self) -> bool:
        """Record a flush still in flight, then what is pending; True when all is in."""
        if self.inflight and not self._send():
            return False
        hashes, coins = self.tally.take()
        if not hashes and not coins:
            return True
        self.inflight = (f"brkcoin:flush:{uuid.uuid4().hex}", hashes, coins)
        return self._send()

    def _send(self) -> bool:
        marker, hashes, coins = self.inflight
        args: list = [time.time(), hashes, RECENT_COINS]
        for digest, data in coins.items():
            args += [digest, data]
        try:
            new = _flush_script(keys=["hashes", "wallet", "coins:recent", marker], args=args)
        except redis.RedisError as e:
            self.tally.error("redis", repr(e))
            return False
        self.tally.new_coins += int(new)
        self.inflight = None
        return True

    def unrecorded(self) -> dict:
        hashes, coins = self.tally.pending_hashes, dict(self.tally.pending_coins)
        if self.inflight:
            hashes += self.inflight[1]
            coins.update(self.inflight[2])
        return {"hashes": hashes, "coins": {d: b.hex() for d, b in coins.items()}}


def mine_loop(tally: Tally, deadline: float, batch: int) -> None:
    """One mining loop: units of work until the deadline, errors retried with backoff."""
    rng, hasher = Endpoint(RNG_URL), Endpoint(HASHER_URL)
    size = UNIT * batch
    hash_path = "/" if batch == 1 else f"/?chunk={UNIT}"  # batch=1: the original protocol
    failures = 0
    try:
        while time.monotonic() < deadline:
            if DELAY:
                time.sleep(max(0.0, min(DELAY, deadline - time.monotonic())))
            kind = "rng"
            try:
                data = rng.call("GET", f"/{size}")
                if len(data) != size:
                    raise UpstreamError(f"rng sent {len(data)} bytes, wanted {size}")
                kind = "hasher"
                text = hasher.call("POST", hash_path, data).decode("ascii")
                if len(text) != 65 * batch - 1:
                    raise UpstreamError(f"hasher answer of {len(text)} chars for {batch} units")
            except (UpstreamError, UnicodeDecodeError) as e:
                tally.error(kind, str(e))
                failures += 1
                pause = min(1.0, 0.05 * 2 ** min(failures, 5)) * random.uniform(0.5, 1.0)
                time.sleep(max(0.0, min(pause, deadline - time.monotonic())))
                continue
            failures = 0
            coins = [
                (digest, data[i * UNIT : (i + 1) * UNIT])
                for i, digest in enumerate(text.split("\n") if batch > 1 else [text])
                if digest[0] == "0"
            ]
            # The worker is the wallet's only writer: a coin is checked before it
            # goes in (1 digest in 16, so cheap), whatever hasher answered.
            if any(hashlib.sha256(unit).hexdigest() != digest for digest, unit in coins):
                tally.error("hasher", "hasher answered a wrong digest; batch dropped")
                continue
            tally.add(batch, coins)
    finally:
        rng.close()
        hasher.close()


def mine(seconds: float, concurrency: int, batch: int) -> tuple[int, dict]:
    """Run one invocation; returns (HTTP status, JSON summary)."""
    started = time.monotonic()
    deadline = started + seconds
    tally = Tally()
    recorder = Recorder(tally)
    loops = [
        threading.Thread(target=mine_loop, args=(tally, deadline, batch), daemon=True)
        for _ in range(concurrency)
    ]
    for loop in loops:
        loop.start()
    while alive := [loop for loop in loops if loop.is_alive()]:
        alive[0].join(FLUSH_INTERVAL)  # returns early once the loops are done
        recorder.flush()
    give_up = time.monotonic() + FLUSH_GRACE
    while not recorder.flush() and time.monotonic() < give_up:
        time.sleep(0.5)
    summary = {
        "hashes": tally.hashes,
        "coins": tally.coins,
        "new_coins": tally.new_coins,
        "errors": tally.errors,
        "last_errors": tally.last_errors,
        "seconds": round(time.monotonic() - started, 3),
        "concurrency": concurrency,
        "batch": batch,
    }
    left = recorder.unrecorded()
    if left["hashes"] or left["coins"]:
        reason = tally.last_errors.get("redis", "")
        summary["error"] = f"redis unreachable, counts not recorded: {reason}"
        summary["unrecorded"] = left
        return 503, summary
    return 200, summary


def _json(status: int, body: dict) -> flask.Response:
    return flask.Response(json.dumps(body), status, mimetype="application/json")


def _authorized(request: flask.Request) -> bool:
    if not TOKEN:
        return True
    given = request.headers.get("Authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {TOKEN}".encode())


def _run(data: object) -> flask.Response:
    try:
        inputs = parse_inputs(data)
    except BadInput as e:
        return _json(400, {"error": str(e)})
    status, summary = mine(**inputs)
    severity = "INFO" if status == 200 else "ERROR"  # structured log for Cloud Logging
    print(json.dumps({"severity": severity, "worker": summary}), flush=True)
    return _json(status, summary)


@functions_framework.http
def worker(request: flask.Request) -> flask.Response:
    if request.method in ("GET", "HEAD"):
        return flask.Response(HELLO, mimetype="text/plain")
    if request.method != "POST":
        return _json(405, {"error": f"method {request.method} not allowed; POST / to mine"})
    if not _authorized(request):
        return _json(401, {"error": UNAUTHORIZED})
    body = request.get_data()
    if not body.strip():
        return _run(None)
    try:
        data = json.loads(body)
    except ValueError:
        return _json(400, {"error": "body is not valid JSON"})
    return _run(data)


def event_inputs(data: object) -> object:
    """Mining inputs from a CloudEvent's data: plain JSON, bytes, or a Pub/Sub push."""
    if isinstance(data, (bytes, str)):
        data = json.loads(data) if data.strip() else None
    if isinstance(data, dict) and isinstance(data.get("message"), dict):  # Pub/Sub
        encoded = data["message"].get("data") or ""
        decoded = base64.b64decode(encoded, validate=True) if encoded else b""
        data = json.loads(decoded) if decoded.strip() else None
    return data


@functions_framework.cloud_event
def worker_event(event) -> None:
    """CloudEvent trigger; answers like `worker` (400, 401, 503 with a JSON body)."""
    if not _authorized(flask.request):
        flask.abort(_json(401, {"error": UNAUTHORIZED}))
    try:
        data = event_inputs(event.get_data())
    except ValueError as e:  # bad JSON or base64
        flask.abort(_json(400, {"error": f"event data is not a JSON object: {e}"}))
    response = _run(data)
    if response.status_code != 200:
        flask.abort(response)

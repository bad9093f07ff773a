"""Contract tests of the webui function through Functions Framework's test client,
against a real redis-server (no fakes)."""

from __future__ import annotations

import ast
import json
import re
import socket
import sys
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from brkcoin.platform.processes import free_port
from support import serve

WEBUI = Path(__file__).resolve().parents[2] / "webui"
DIGEST = "0" + "ab" * 31 + "c"  # 64 hex chars, a coin


def _coin(n: int) -> str:
    return f"0{n:063x}"


@pytest.fixture
def client(function_client, redis_server):
    # Nothing listens on the function URLs: /health must report them down, quickly.
    dead = f"http://127.0.0.1:{free_port()}"
    with function_client(  # entered: one event loop for all requests, as in the server
        "webui",
        REDIS_URL=redis_server.url, RNG_URL=dead, HASHER_URL=dead, WORKER_URL=dead,
        WEBUI_HEALTH_TTL="0",
    ) as running:
        yield running


@pytest.fixture
def down_client(function_client):
    """The webui pointed at a port where no Redis listens."""
    return function_client("webui", REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")


def test_json_matches_redis(client, redis_server):
    r = redis_server.client()
    r.incrby("hashes", 12345)
    r.incrby("hashes", 5)
    r.hset("wallet", mapping={_coin(1): b"x" * 32, _coin(2): b"y" * 32, _coin(3): b"z" * 32})
    before = time.time()
    response = client.get("/json")
    after = time.time()
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"coins", "hashes", "now"}
    assert body["coins"] == r.hlen("wallet") == 3
    assert body["hashes"] == int(r.get("hashes")) == 12350
    assert isinstance(body["now"], float)
    assert before - 1 <= body["now"] <= after + 1  # Redis' clock, the same host here
    assert response.headers["Cache-Control"] == "no-store"


def test_json_before_any_hash(client):
    body = client.get("/json").json()
    # DockerCoins sent null here; 0 subtracts the same in its page and types cleanly.
    assert body["coins"] == 0 and body["hashes"] == 0


def test_json_now_advances(client):
    first = client.get("/json").json()["now"]
    time.sleep(0.05)
    second = client.get("/json").json()["now"]
    assert 0.04 < second - first < 1


def test_recent_coins_newest_first(client, redis_server, add_coin):
    r = redis_server.client()
    for n in range(1, 6):
        add_coin(r, _coin(n), 1_700_000_000.0 + n)
    r.lpush("coins:recent", "not json", json.dumps({"digest": 5}))  # junk must not break it
    body = client.get("/coins?limit=4").json()
    assert body["total"] == 5
    # The 4 newest entries hold 2 junk ones: they are skipped, the rest keep their order.
    assert [c["digest"] for c in body["coins"]] == [_coin(5), _coin(4)]
    assert body["coins"][0]["time"] == 1_700_000_005.0
    assert len(client.get("/coins").json()["coins"]) == 5


@pytest.mark.parametrize("limit", ["0", "101", "-1", "abc", "1e3", "", "٣"])
def test_recent_coins_bad_limit(client, limit):
    response = client.get(f"/coins?limit={limit}")
    assert response.status_code == 400
    assert "limit must be an integer from 1 to 100" in response.json()["error"]


@pytest.mark.parametrize("path", ["/json", "/coins"])
def test_redis_down_is_503_json(down_client, path):
    started = time.monotonic()
    response = down_client.get(path)
    assert time.monotonic() - started < 5
    assert response.status_code == 503
    assert response.headers["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error.startswith("Redis unreachable at 127.0.0.1:")
    assert "Traceback" not in error
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_redis_password_not_in_errors(function_client):
    port = free_port()
    client = function_client("webui", REDIS_URL=f"redis://:s3cret-pw@127.0.0.1:{port}/0")
    response = client.get("/json")
    assert response.status_code == 503
    assert "s3cret-pw" not in response.text


def test_recovers_after_redis_restart(client, redis_server):
    redis_server.client().incrby("hashes", 7)
    assert client.get("/json").json()["hashes"] == 7  # a pooled connection now exists
    redis_server.stop()
    assert client.get("/json").status_code == 503
    redis_server.start()  # AOF: the counter survives
    response = client.get("/json")
    assert response.status_code == 200, response.json()
    assert response.json()["hashes"] == 7


def test_stale_connection_after_restart_is_replaced(client, redis_server):
    assert client.get("/json").status_code == 200
    redis_server.stop()
    redis_server.start()
    # The pooled connection died with the old server; the first request must still work.
    assert client.get("/json").status_code == 200


@pytest.mark.parametrize(
    "path", ["/json", "/coins", "/history", "/stats", "/health", "/", "/app.js", "/nope"]
)
def test_cors_headers(client, path):
    response = client.get(path, headers={"Origin": "http://127.0.0.1:9999"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_cors_preflight(client):
    response = client.options(
        "/json",
        headers={"Origin": "http://example.test", "Access-Control-Request-Method": "GET"},
    )
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "GET" in response.headers["Access-Control-Allow-Methods"]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_read_only(client, redis_server, method):
    response = client.request(method, "/json", content=b"{}")
    assert response.status_code == 405
    assert "read-only" in response.json()["error"]
    assert "GET" in response.headers["Allow"]
    assert redis_server.client().keys("*") == []


@pytest.mark.parametrize(
    "path, content_type",
    [
        ("/", "text/html; charset=utf-8"),
        ("/index.html", "text/html; charset=utf-8"),
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/style.css", "text/css; charset=utf-8"),
        ("/favicon.svg", "image/svg+xml"),
        ("/vendor/uplot/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
        ("/vendor/uplot/uPlot.min.css", "text/css; charset=utf-8"),
        ("/vendor/uplot/LICENSE", "text/plain; charset=utf-8"),
    ],
)
def test_static_files(client, path, content_type):
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == content_type
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    name = "index.html" if path == "/" else path.lstrip("/")
    assert response.content == (WEBUI / name).read_bytes()


def test_page_has_csp_and_revalidates(client):
    response = client.get("/")
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    etag = response.headers["ETag"]
    assert client.get("/", headers={"If-None-Match": etag}).status_code == 304


def test_head(client):
    response = client.head("/json")
    assert response.status_code == 200 and response.content == b""


def test_etag_lists_and_wildcard(client):
    etag = client.get("/app.js").headers["ETag"]
    for header in (f'"other", {etag}', f"W/{etag}", "*"):
        assert client.get("/app.js", headers={"If-None-Match": header}).status_code == 304
    stale = client.get("/app.js", headers={"If-None-Match": '"other"'})
    assert stale.status_code == 200 and stale.content == (WEBUI / "app.js").read_bytes()


@pytest.mark.parametrize(
    "path",
    [
        "/main.py",
        "/readings.py",
        "/requirements.txt",
        "/vendor/uplot/README.md",
        "/../pyproject.toml",
        "/..%2fpyproject.toml",
        "/%2e%2e/pyproject.toml",
        "/%2e%2e%2fpyproject.toml",
        "/vendor/../main.py",
        "/vendor/uplot/..%2f..%2fmain.py",
        "/..%5cpyproject.toml",
        "/%252e%252e%252fpyproject.toml",
        "/etc/passwd",
        "/.git/config",
        "/__pycache__/main.cpython-311.pyc",
        "/json/",
        "/index.html%00.js",
    ],
)
def test_unknown_and_traversal_paths_404(client, path):
    response = client.get(path)
    assert response.status_code == 404, path
    assert response.headers["Content-Type"] == "application/json"
    assert "no such path" in response.json()["error"]
    assert b"[build-system]" not in response.content
    assert b"functions_framework" not in response.content


def test_raw_traversal_over_a_socket(stack):
    """The same against the real process, with the request line sent unnormalized."""
    host, port = "127.0.0.1", stack.ports["webui"]
    for raw in ("/../pyproject.toml", "/%2e%2e/pyproject.toml", "/../../etc/passwd"):
        with socket.create_connection((host, port), timeout=5) as conn:
            conn.sendall(f"GET {raw} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
        status = answer.split(b"\r\n", 1)[0]
        assert b" 404 " in status or b" 400 " in status, (raw, status)
        assert b"[build-system]" not in answer and b"root:" not in answer


class _Neighbour(BaseHTTPRequestHandler):
    """Stand-in for a function that answers in odd or hostile ways, one per path:
    the probe GETs the path of the URL it is given."""

    protocol_version = "HTTP/1.1"
    hits: list[str]

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.hits.append(self.path)
        if self.path == "/banner/":
            self._answer(200, b"RNG running on testhost\nsecond line\n")
        elif self.path == "/long/":
            self._answer(200, b"A" * 10_000 + b"\x07\n")
        elif self.path == "/error/":
            self._answer(503, b"internal details of another service")
        elif self.path == "/redirect/":
            self.send_response(302)
            self.send_header("Location", "/secret/")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/chunked/":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"17\r\nWORKER running on host\n\r\n0\r\n\r\n")
        else:  # /secret/: another service's page, which must never be fetched
            self._answer(200, b"SECRET page of another service\n")

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def neighbour() -> Iterator[tuple[str, list[str]]]:
    """(URL, paths requested) of a fresh _Neighbour server."""
    hits: list[str] = []
    with serve(type("Neighbour", (_Neighbour,), {"hits": hits})) as url:
        yield url, hits


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers: a hung function."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


def test_health_up_down_and_hung(function_client, redis_server, neighbour, silent_port):
    url, _ = neighbour
    client = function_client(
        "webui",
        REDIS_URL=redis_server.url,
        RNG_URL=url + "/banner",
        HASHER_URL=f"http://127.0.0.1:{free_port()}",  # refused
        WORKER_URL=f"http://127.0.0.1:{silent_port}",  # hangs
        WEBUI_PROBE_TIMEOUT="0.5",
        WEBUI_HEALTH_TTL="0",
    )
    started = time.monotonic()
    body = client.get("/health").json()
    elapsed = time.monotonic() - started
    assert elapsed < 1.5, "probes must run concurrently and time out"
    assert body["redis"]["up"] is True
    rng, hasher, worker = (body["functions"][n] for n in ("rng", "hasher", "worker"))
    assert rng["up"] is True and rng["detail"] == "RNG running on testhost"
    assert hasher["up"] is False and hasher["detail"] == "refused"
    assert worker["up"] is False and worker["detail"] == "timed out"
    assert 400 <= worker["ms"] < 1500
    # /json never waits on the functions.
    started = time.monotonic()
    assert client.get("/json").status_code == 200
    assert time.monotonic() - started < 0.5


def test_health_publishes_no_url_and_no_neighbour_content(function_client, redis_server,
                                                           neighbour):
    url, hits = neighbour
    client = function_client(
        "webui", REDIS_URL=redis_server.url, WEBUI_HEALTH_TTL="0",
        RNG_URL=url + "/redirect", HASHER_URL=url + "/error", WORKER_URL=url + "/long",
    )
    response = client.get("/health")
    body = response.json()
    rng, hasher, worker = (body["functions"][n] for n in ("rng", "hasher", "worker"))
    # A redirect is not followed: the page it points to is neither fetched nor shown.
    assert rng == {"up": False, "ms": rng["ms"], "detail": "HTTP 302"}
    assert "/secret/" not in hits and "SECRET" not in response.text
    # An error answer's body is not published.
    assert hasher == {"up": False, "ms": hasher["ms"], "detail": "HTTP 503"}
    assert "internal details" not in response.text
    # A banner is cut to one short printable line.
    assert worker["up"] is True and worker["detail"] == "A" * 80
    # Not the functions' URLs, not even their host or port.
    port = url.rsplit(":", 1)[1]
    assert "127.0.0.1" not in response.text and port not in response.text
    assert set(body) == {"redis", "functions", "checked"}
    assert set(body["redis"]) == {"up", "ms", "detail"}


def test_health_reads_a_chunked_banner(function_client, redis_server, neighbour):
    url, _ = neighbour
    client = function_client("webui", REDIS_URL=redis_server.url, WORKER_URL=url + "/chunked")
    worker = client.get("/health").json()["functions"]["worker"]
    assert worker["up"] is True and worker["detail"] == "WORKER running on host"


def test_health_with_redis_down(down_client):
    body = down_client.get("/health").json()
    assert body["redis"]["up"] is False
    assert body["redis"]["detail"] == "unreachable"


# ---- Redis holding what the worker never writes: unknown (null), and why ----


@pytest.mark.parametrize(
    "raw", ["abc", "1.5", "", " 12", "1e3", "0x10", "99999999999999999999", "٣", "12\n", "-5"]
)
def test_hashes_not_a_count_reads_as_unknown(client, redis_server, raw):
    r = redis_server.client()
    r.set("hashes", raw)
    r.hset("wallet", _coin(1), b"x" * 32)
    response = client.get("/json")
    assert response.status_code == 200
    body = response.json()
    assert (body["hashes"], body["coins"]) == (None, 1)
    assert body["unreadable"] == {"hashes": f"holds {raw!r}, not a count"}
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_hashes_shown_short_and_as_text(client, redis_server):
    redis_server.client().set("hashes", b"\xff" * 10_000)
    response = client.get("/json")
    assert response.status_code == 200
    why = response.json()["unreadable"]["hashes"]
    assert why.startswith("holds '\ufffd") and why.endswith("...', not a count")
    assert len(why) < 80


def test_hashes_at_the_counter_limits(client, redis_server):
    r = redis_server.client()
    r.set("hashes", 2**63 - 1)
    assert client.get("/json").json()["hashes"] == 2**63 - 1
    r.set("hashes", -(2**63))  # INCRBY takes it; no count of hashes is negative
    assert client.get("/json").json()["hashes"] is None


@pytest.mark.parametrize(
    "key, write, path, field, kind, expected",
    [
        ("wallet", lambda r: r.set("wallet", "x"), "/json", "coins", "string", "hash"),
        ("hashes", lambda r: r.rpush("hashes", "1"), "/json", "hashes", "list", "string"),
        ("coins:recent", lambda r: r.hset("coins:recent", "a", "b"), "/coins", "coins", "hash",
         "list"),
        ("wallet", lambda r: r.sadd("wallet", "x"), "/coins", "total", "set", "hash"),
    ],
)
def test_key_of_the_wrong_type_reads_as_unknown(client, redis_server, key, write, path, field,
                                                kind, expected):
    write(redis_server.client())
    response = client.get(path)
    assert response.status_code == 200
    body = response.json()
    assert body[field] is None
    assert body["unreadable"] == {key: f"holds a {kind}, not a {expected}"}


def _strict_json(text: str) -> object:
    def refuse(constant: str) -> None:
        raise AssertionError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_recent_coins_skip_malformed_and_non_finite(client, redis_server, add_coin):
    r = redis_server.client()
    add_coin(r, _coin(1), 1_700_000_001.0)
    bad = [
        f'{{"digest": "{_coin(2)}", "time": {when}}}'
        for when in ("NaN", "Infinity", "-Infinity", "1e999", "-1e999", "10" * 200,
                     '"1700000000"', "true", "null", "[1]")
    ]
    bad += [
        json.dumps({"digest": _coin(2)}),
        json.dumps({"digest": DIGEST.upper(), "time": 1.0}),
        json.dumps({"digest": _coin(2)[:63], "time": 1.0}),
        json.dumps({"digest": "g" * 64, "time": 1.0}),
        "[" * 100_000,
        b"\xff\xfe\x00",
        "[1, 2]",
        '"text"',
        "42",
    ]
    r.lpush("coins:recent", *bad)
    add_coin(r, _coin(3), 1_700_000_003.0)
    response = client.get("/coins?limit=100")
    assert response.status_code == 200
    body = _strict_json(response.text)
    assert body["coins"] == [
        {"digest": _coin(3), "time": 1_700_000_003.0},
        {"digest": _coin(1), "time": 1_700_000_001.0},
    ]


def test_every_answer_of_ours_is_json(client, redis_server):
    """Whatever the request and whatever Redis holds: JSON (or no body), CORS, no 500,
    and no 503 while Redis answers."""
    r = redis_server.client()
    r.set("hashes", "abc")
    r.hset("coins:recent", "a", "b")
    r.set("hashes:history", "x")
    r.zadd("brkcoin:stats", {"not json": 1e18, '{"hashes": NaN}': 1e18})
    paths = ["/json", "/json?x=%zz", "/coins", "/coins?limit=%ff", "/coins?limit=1&limit=x",
             "/history", "/stats", "/stats?window=x", "/health", "/nope", "/%ff", "/" + "a" * 5000]
    for method in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"):
        for path in paths:
            response = client.request(method, path)
            where = (method, path[:40], response.status_code)
            assert response.status_code < 500, where
            assert response.headers["Access-Control-Allow-Origin"] == "*", where
            if response.content:
                assert response.headers["Content-Type"] == "application/json", where
                assert isinstance(_strict_json(response.text), dict), where


# ---- request bodies: webui reads none ----


def test_small_body_on_get_is_ignored(client):
    assert client.request("GET", "/json", content=b"{}").status_code == 200


@pytest.mark.parametrize("method", ["GET", "POST", "OPTIONS"])
def test_large_body_is_413_and_closes(client, method):
    response = client.request(method, "/json", content=b"x" * 2000)
    assert response.status_code == 413
    assert response.json() == {
        "error": "webui is read-only and takes no request body, got a body of 2000 bytes"
    }
    assert response.headers["Connection"] == "close"
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_chunked_body_is_413(client):
    response = client.request("GET", "/json", content=iter([b"a", b"b"]))
    assert response.status_code == 413
    assert "chunked" in response.json()["error"]
    assert response.headers["Connection"] == "close"


# ---- settings ----


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("WEBUI_PROBE_TIMEOUT", "x",
         "WEBUI_PROBE_TIMEOUT must be a number from 0.01 to 60, got 'x'"),
        ("WEBUI_PROBE_TIMEOUT", "0", "WEBUI_PROBE_TIMEOUT must be a number from 0.01 to 60"),
        ("WEBUI_HEALTH_TTL", "nan", "WEBUI_HEALTH_TTL must be a number from 0 to 3600, got 'nan'"),
        ("RNG_URL", "ftp://x", "RNG_URL must be an http:// or https:// URL, got 'ftp://x'"),
        ("WORKER_URL", "http://", "WORKER_URL must be an http:// or https:// URL"),
        ("HASHER_URL", "http://h:99999", "HASHER_URL must be an http:// or https:// URL"),
        ("REDIS_URL", "http://h", "REDIS_URL must be a redis://, rediss:// or unix:// URL"),
    ],
)
def test_bad_settings_name_the_variable(function_client, name, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        function_client("webui", **{name: value})


def test_folder_deploys_alone():
    """webui/*.py import only the standard library, their requirements.txt and
    each other (Functions Framework puts the folder on sys.path)."""
    requirements = {
        line.split(">")[0].split("=")[0].split("<")[0].strip().replace("-", "_")
        for line in (WEBUI / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert requirements == {"functions_framework", "redis", "httptools", "uvloop"}
    siblings = {path.stem for path in WEBUI.glob("*.py")}
    # Names the worker's folder uses too would collide when both load in one process.
    assert not siblings & {p.stem for p in (WEBUI.parent / "functions" / "worker").glob("*.py")
                           if p.stem != "main"}
    allowed = requirements | {"starlette"} | siblings  # starlette comes with functions-framework
    trees = [ast.parse(path.read_text()) for path in WEBUI.glob("*.py")]
    for node in (node for tree in trees for node in ast.walk(tree)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            names = [node.module or ""]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            assert top in sys.stdlib_module_names or top in allowed, name


def test_vendored_chart_library_has_its_licence():
    licence = (WEBUI / "vendor" / "uplot" / "LICENSE").read_text()
    assert "MIT License" in licence and "Leon Sorokin" in licence
    page = (WEBUI / "index.html").read_text()
    assert "vendor/uplot/uPlot.iife.min.js" in page
    # Offline: no script, style or image from another host.
    assert re.search(r'(src|href)="(https?:)?//', page) is None

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

from brkcoin.processes import free_port
from support import serve

WEBUI = Path(__file__).resolve().parents[2] / "webui"
DIGEST = "0" + "ab" * 31 + "c"  # 64 hex chars, a coin


def _coin(n: int) -> str:
    return f"0{n:063x}"


@pytest.fixture
def client(function_client, redis_server):
    # Nothing listens on the function URLs: /health must report them down, quickly.
    dead = f"http://127.0.0.1:{free_port()}"
    return function_client(
        "webui",
        REDIS_URL=redis_server.url, RNG_URL=dead, HASHER_URL=dead, WORKER_URL=dead,
        WEBUI_HEALTH_TTL="0",
    )


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
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"coins", "hashes", "now"}
    assert body["coins"] == r.hlen("wallet") == 3
    assert body["hashes"] == int(r.get("hashes")) == 12350
    assert isinstance(body["now"], float)
    assert before - 1 <= body["now"] <= after + 1  # Redis' clock, the same host here
    assert response.headers["Cache-Control"] == "no-store"


def test_json_before_any_hash(client):
    body = client.get("/json").get_json()
    # DockerCoins sent null here; 0 subtracts the same in its page and types cleanly.
    assert body["coins"] == 0 and body["hashes"] == 0


def test_json_now_advances(client):
    first = client.get("/json").get_json()["now"]
    time.sleep(0.05)
    second = client.get("/json").get_json()["now"]
    assert 0.04 < second - first < 1


def test_recent_coins_newest_first(client, redis_server, add_coin):
    r = redis_server.client()
    for n in range(1, 6):
        add_coin(r, _coin(n), 1_700_000_000.0 + n)
    r.lpush("coins:recent", "not json", json.dumps({"digest": 5}))  # junk must not break it
    body = client.get("/coins?limit=4").get_json()
    assert body["total"] == 5
    # The 4 newest entries hold 2 junk ones: they are skipped, the rest keep their order.
    assert [c["digest"] for c in body["coins"]] == [_coin(5), _coin(4)]
    assert body["coins"][0]["time"] == 1_700_000_005.0
    assert len(client.get("/coins").get_json()["coins"]) == 5


@pytest.mark.parametrize("limit", ["0", "101", "-1", "abc", "1e3", "", "٣"])
def test_recent_coins_bad_limit(client, limit):
    response = client.get(f"/coins?limit={limit}")
    assert response.status_code == 400
    assert "limit must be an integer from 1 to 100" in response.get_json()["error"]


@pytest.mark.parametrize("path", ["/json", "/coins"])
def test_redis_down_is_503_json(down_client, path):
    started = time.monotonic()
    response = down_client.get(path)
    assert time.monotonic() - started < 5
    assert response.status_code == 503
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert error.startswith("Redis unreachable at 127.0.0.1:")
    assert "Traceback" not in error
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_redis_password_not_in_errors(function_client):
    port = free_port()
    client = function_client("webui", REDIS_URL=f"redis://:s3cret-pw@127.0.0.1:{port}/0")
    response = client.get("/json")
    assert response.status_code == 503
    assert "s3cret-pw" not in response.get_data(as_text=True)


def test_recovers_after_redis_restart(client, redis_server):
    redis_server.client().incrby("hashes", 7)
    assert client.get("/json").get_json()["hashes"] == 7  # a pooled connection now exists
    redis_server.stop()
    assert client.get("/json").status_code == 503
    redis_server.start()  # AOF: the counter survives
    response = client.get("/json")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["hashes"] == 7


def test_stale_connection_after_restart_is_replaced(client, redis_server):
    assert client.get("/json").status_code == 200
    redis_server.stop()
    redis_server.start()
    # The pooled connection died with the old server; the first request must still work.
    assert client.get("/json").status_code == 200


@pytest.mark.parametrize("path", ["/json", "/coins", "/health", "/", "/app.js", "/nope"])
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
    response = client.open("/json", method=method, data=b"{}")
    assert response.status_code == 405
    assert "read-only" in response.get_json()["error"]
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
    assert response.get_data() == (WEBUI / name).read_bytes()


def test_page_has_csp_and_revalidates(client):
    response = client.get("/")
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    etag = response.headers["ETag"]
    assert client.get("/", headers={"If-None-Match": etag}).status_code == 304


def test_head(client):
    response = client.head("/json")
    assert response.status_code == 200 and response.get_data() == b""


@pytest.mark.parametrize(
    "path",
    [
        "/main.py",
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
    assert response.mimetype == "application/json"
    assert "no such path" in response.get_json()["error"]
    assert b"[build-system]" not in response.get_data()
    assert b"functions_framework" not in response.get_data()


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


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body = b"RNG running on testhost\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hello_server() -> Iterator[str]:
    with serve(_Hello) as url:
        yield url


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers: a hung function."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


def test_health_up_down_and_hung(function_client, redis_server, hello_server, silent_port):
    client = function_client(
        "webui",
        REDIS_URL=redis_server.url,
        RNG_URL=hello_server,
        HASHER_URL=f"http://127.0.0.1:{free_port()}",  # refused
        WORKER_URL=f"http://127.0.0.1:{silent_port}",  # hangs
        WEBUI_PROBE_TIMEOUT="0.5",
        WEBUI_HEALTH_TTL="0",
    )
    started = time.monotonic()
    body = client.get("/health").get_json()
    elapsed = time.monotonic() - started
    assert elapsed < 1.5, "probes must run concurrently and time out"
    assert body["redis"]["up"] is True
    rng, hasher, worker = (body["functions"][n] for n in ("rng", "hasher", "worker"))
    assert rng["up"] is True and rng["detail"] == "RNG running on testhost"
    assert hasher["up"] is False and "refused" in hasher["detail"].lower()
    assert worker["up"] is False and "timed out" in worker["detail"].lower()
    # /json never waits on the functions.
    started = time.monotonic()
    assert client.get("/json").status_code == 200
    assert time.monotonic() - started < 0.5


def test_health_with_redis_down(down_client):
    body = down_client.get("/health").get_json()
    assert body["redis"]["up"] is False
    assert "unreachable" in body["redis"]["detail"]


def test_folder_deploys_alone():
    """webui/main.py imports only the standard library and its requirements.txt."""
    requirements = {
        line.split(">")[0].split("=")[0].split("<")[0].strip().replace("-", "_")
        for line in (WEBUI / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert requirements == {"functions_framework", "redis"}
    allowed = requirements | {"flask"}  # flask comes with functions-framework
    tree = ast.parse((WEBUI / "main.py").read_text())
    for node in ast.walk(tree):
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

"""Hostile clients and hostile neighbours against the real webui: a functions-framework
process and a real redis-server. Only the hostile third parties (a function that
trickles its answer) are loopback stand-ins."""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler

import psutil
import pytest

from brkcoin.platform.processes import FunctionProcess, free_port
from support import serve

MIB = 1 << 20


@pytest.fixture
def webui(start_function, redis_server) -> FunctionProcess:
    dead = f"http://127.0.0.1:{free_port()}"
    return start_function(
        "webui",
        {"REDIS_URL": redis_server.url, "RNG_URL": dead, "HASHER_URL": dead, "WORKER_URL": dead},
    )


def _connect(port: int, timeout: float = 5) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def _answer(conn: socket.socket) -> tuple[http.client.HTTPResponse, bytes]:
    response = http.client.HTTPResponse(conn)
    response.begin()
    return response, response.read()


def _get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read()


def _rss(pid: int) -> int:
    """Resident memory of a process and its children (the gunicorn worker)."""
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])


def test_stalled_clients_do_not_stop_answers(webui):
    halves = [b"GET /js", b"GET /json HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: appl"]
    stalled = []
    try:
        for n in range(200):
            conn = _connect(webui.port)
            conn.sendall(halves[n % 2])  # ...and then silence
            stalled.append(conn)
        time.sleep(0.2)  # let the server take them all in
        started = time.monotonic()
        try:
            status, body = _get(webui.url + "/json", timeout=1)
        except TimeoutError:
            pytest.fail("no answer within 1 s while 200 clients stall")
        assert status == 200 and set(json.loads(body)) == {"coins", "hashes", "now"}
        assert time.monotonic() - started < 1
    finally:
        for conn in stalled:
            conn.close()


@pytest.mark.parametrize(
    "method, header",
    [
        ("GET", "Content-Length: 1000000000"),
        ("POST", "Content-Length: 1000000000"),
        ("GET", "Transfer-Encoding: chunked"),
    ],
)
def test_body_that_never_comes_is_refused_at_once(webui, method, header):
    with _connect(webui.port, timeout=2) as conn:
        started = time.monotonic()
        conn.sendall(f"{method} /json HTTP/1.1\r\nHost: 127.0.0.1\r\n{header}\r\n\r\n".encode())
        response, body = _answer(conn)  # the body is never sent
        assert time.monotonic() - started < 1
        assert response.status == 413
        assert response.getheader("Content-Type") == "application/json"
        assert "takes no request body" in json.loads(body)["error"]
        assert response.getheader("Connection") == "close"
        assert conn.recv(1) == b"", "the server closes instead of waiting for the body"


def test_500_mib_body_is_not_read(webui):
    size = 500 * MIB
    before = _rss(webui.process.pid)
    sent = 0

    def send_body(conn: socket.socket) -> None:
        nonlocal sent
        chunk = bytes(MIB)
        try:
            while sent < size:
                conn.sendall(chunk)
                sent += len(chunk)
        except OSError:  # the server closed the connection: what we want
            pass

    with _connect(webui.port, timeout=10) as conn:
        conn.sendall(f"GET /json HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {size}\r\n\r\n"
                     .encode())
        sender = threading.Thread(target=send_body, args=(conn,), daemon=True)
        sender.start()
        response, body = _answer(conn)
        sender.join(20)
    assert response.status == 413 and response.getheader("Connection") == "close"
    assert "takes no request body" in json.loads(body)["error"]
    assert not sender.is_alive() and sent < 100 * MIB, f"the server took {sent // MIB} MiB"
    assert _rss(webui.process.pid) - before < 20 * MIB
    assert _get(webui.url + "/json")[0] == 200  # and it still serves


class _Trickle(BaseHTTPRequestHandler):
    """A function that sends its status, then its headers a byte every 0.1 s for 10 s."""

    connections: list[float]

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.connections.append(time.monotonic())
        try:
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            for _ in range(100):
                self.wfile.write(b"X")
                time.sleep(0.1)
        except OSError:  # the prober hung up
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def trickle() -> Iterator[tuple[str, list[float]]]:
    """(URL, connection times) of a trickling stand-in."""
    connections: list[float] = []
    with serve(type("Trickle", (_Trickle,), {"connections": connections})) as url:
        yield url, connections


def _health_viewers(webui: FunctionProcess, n: int) -> list[dict]:
    start = threading.Barrier(n)

    def view() -> dict:
        start.wait()
        status, body = _get(webui.url + "/health", timeout=10)
        assert status == 200
        return json.loads(body)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: view(), range(n)))


def test_trickling_function_cannot_stall_health_or_the_page(start_function, redis_server,
                                                            trickle):
    url, connections = trickle
    webui = start_function("webui", {
        "REDIS_URL": redis_server.url, "RNG_URL": url, "HASHER_URL": url, "WORKER_URL": url,
        "WEBUI_PROBE_TIMEOUT": "0.5", "WEBUI_HEALTH_TTL": "0",
    })
    started = time.monotonic()
    with ThreadPoolExecutor(1) as pool:
        viewers = pool.submit(_health_viewers, webui, 10)
        time.sleep(0.1)
        # Meanwhile the numbers and the page answer at once.
        for path in ("/json", "/"):
            asked = time.monotonic()
            assert _get(webui.url + path, timeout=1)[0] == 200
            assert time.monotonic() - asked < 1, path
        reports = viewers.result(timeout=20)
    # One total deadline per probe, however slowly the answer trickles (10 s here).
    assert time.monotonic() - started < 3
    for report in reports:
        for probe in report["functions"].values():
            assert probe["up"] is False and probe["detail"] == "timed out"
            assert probe["ms"] < 1000
    # The ten viewers shared one probe round: one connection per function.
    assert len(connections) == 3, connections


def test_health_round_is_reused_for_its_ttl(start_function, redis_server, trickle):
    url, connections = trickle
    webui = start_function("webui", {
        "REDIS_URL": redis_server.url, "RNG_URL": url, "HASHER_URL": url, "WORKER_URL": url,
        "WEBUI_PROBE_TIMEOUT": "0.2", "WEBUI_HEALTH_TTL": "60",
    })
    first = json.loads(_get(webui.url + "/health")[1])
    second = json.loads(_get(webui.url + "/health")[1])
    assert first == second
    assert len(connections) == 3


# ---- hostile neighbours in Redis: whatever a key holds, a bounded read ----

COIN = json.dumps({"digest": "0" * 64, "time": 1_800_000_000.0})
LINE = json.dumps({"instance": "host:1", "invocation": "inv", "loops": 1, "hashes": 5,
                   "bounds_ms": [1], "rng": {"calls": 0, "errors": 0, "buckets": [0, 0]},
                   "hasher": {"calls": 0, "errors": 0, "buckets": [0, 0]}})


def _fill_with_huge(r, huge: bytes) -> None:
    """A good entry and two huge ones in each key the webui reads."""
    r.set("hashes", huge)
    r.set("brkcoin:platform", huge)
    r.lpush("coins:recent", huge, COIN, huge)
    r.lpush("hashes:history", huge, "[1800000000,5]", huge)
    seconds, _ = r.time()
    r.zadd("brkcoin:stats", {LINE: seconds, huge + b"1": seconds, huge + b"2": seconds})


def _read_all(webui: FunctionProcess) -> dict[str, dict]:
    """Each Redis-reading path, answered 200 within 1 s."""
    answers = {}
    for path in ("/json", "/coins?limit=100", "/history", "/stats"):
        started = time.monotonic()
        status, body = _get(webui.url + path)
        assert status == 200 and time.monotonic() - started < 1, path
        answers[path] = json.loads(body)
    return answers


def test_huge_keys_read_as_unknown_and_are_never_read(webui, redis_server):
    """Before: /coins and /history read every byte, then answered 503 "Redis
    unreachable" (Redis was fine) after 4-7 s; /json read all of `hashes`."""
    r = redis_server.client(socket_timeout=30)
    _fill_with_huge(r, b"1" * (8 * MIB))
    r.zadd("brkcoin:stats", {str(n): 1 for n in range(100_001)})  # one more than is read
    before = _rss(webui.process.pid)
    answers = _read_all(webui)
    assert _rss(webui.process.pid) - before < 10 * MIB
    assert answers["/json"]["hashes"] is None
    assert answers["/json"]["unreadable"]["hashes"].startswith("holds '1111")
    assert answers["/coins?limit=100"]["coins"] is None
    assert answers["/history"]["points"] is None
    stats = answers["/stats"]
    assert stats["platform"] is None and stats["functions"]["worker"]["loops"] is None
    assert stats["unreadable"] == {
        "brkcoin:stats": "holds 100004 entries, more than the worker keeps there",
        "brkcoin:platform": "holds over 65536 bytes, too many for the platform's report",
    }
    for path in ("/coins?limit=100", "/history"):
        [(key, why)] = answers[path]["unreadable"].items()
        assert re.fullmatch(r"holds \d+ bytes, more than the worker keeps there", why), path
        assert int(why.split()[1]) > 16 * MIB, path


def test_huge_entries_stay_in_redis_where_memory_usage_is_refused(start_function,
                                                                  redis_server):
    """A managed Redis may refuse MEMORY USAGE: then no entry over its bound is
    sent, and the good ones still show."""
    r = redis_server.client(socket_timeout=30)
    r.execute_command("ACL", "SETUSER", "webui", "on", ">pw", "~*", "+@all", "-memory")
    _fill_with_huge(r, b"x" * (4 * MIB))
    webui = start_function("webui", {
        "REDIS_URL": f"redis://webui:pw@127.0.0.1:{redis_server.port}/0",
        "RNG_URL": "http://127.0.0.1:9", "HASHER_URL": "http://127.0.0.1:9",
        "WORKER_URL": "http://127.0.0.1:9",
    })
    before = _rss(webui.process.pid)
    answers = _read_all(webui)
    assert _rss(webui.process.pid) - before < 10 * MIB
    assert answers["/coins?limit=100"]["coins"] == [json.loads(COIN)]
    assert answers["/history"]["points"] == [[1_800_000_000, 5]]
    stats = answers["/stats"]
    assert stats["skipped"] == 2 and stats["functions"]["worker"]["hashes_per_s"] == 1.0

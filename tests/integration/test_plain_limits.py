"""The plain functions (`functions-framework --target NAME`, no platform in front)
bound what a client can hold: the request head's size and time, idle and total
connections, keep-alive time; and every refusal the server makes itself is JSON.
(functions/*/serving.py sets these in uvicorn, under Functions Framework's gunicorn.)

Each test runs against real `functions-framework` processes on loopback ports.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing
from pathlib import Path

import pytest
import requests

from brkcoin.layout import FUNCTIONS
from brkcoin.platform.processes import FunctionProcess, free_port

NO_DELAYS = {"RNG_DELAY": "0", "HASHER_DELAY": "0", "WORKER_DELAY": "0"}
PLAIN = ["rng", "hasher", "worker"]


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, FunctionProcess]]:
    """rng, hasher and worker with their default limits, started once for the module."""
    logs = tmp_path_factory.mktemp("logs")
    started = {name: FunctionProcess(FUNCTIONS[name], free_port(), NO_DELAYS, logs).start()
               for name in PLAIN}
    for function in started.values():
        function.wait_ready()
    yield started
    for function in started.values():
        function.stop()


def _connect(function: FunctionProcess) -> socket.socket:
    return socket.create_connection((function.host, function.port), timeout=5)


def _answer(sock: socket.socket, timeout: float = 5) -> tuple[int, dict[str, str], bytes]:
    """Read an answer up to the close: its status, headers and body."""
    sock.settimeout(timeout)
    data = b""
    try:
        while part := sock.recv(65536):
            data += part
    except OSError:
        pass
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1]) if lines[0].startswith("HTTP/1.1 ") else 0
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return status, headers, body


def _closed(sock: socket.socket, within: float) -> bool:
    """The server closed the connection without a word, within `within` s."""
    sock.settimeout(within)
    try:
        return sock.recv(65536) == b""
    except TimeoutError:
        return False


def _json_error(status: int, headers: dict[str, str], body: bytes) -> str:
    assert headers.get("content-type") == "application/json", (status, headers, body)
    error: str = json.loads(body)["error"]
    return error


@pytest.mark.parametrize("name", PLAIN)
def test_a_1_mib_header_line_gets_a_json_431_within_1_s(plain, name):
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
    with closing(_connect(plain[name])) as sock:
        started = time.monotonic()
        # sent from a thread: the server stops reading at its limit, and answers
        threading.Thread(target=lambda: _send_quietly(sock, head), daemon=True).start()
        status, headers, body = _answer(sock)
        took = time.monotonic() - started
    assert status == 431, (headers, body[:200])
    assert "request head over the limit of 16384 bytes" in _json_error(status, headers, body)
    assert took < 1.0
    assert requests.get(plain[name].url + "/", timeout=5).status_code == 200


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass  # refused and closed before all of it was read


MALFORMED = {
    "not HTTP": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 40 + b"\r\n\r\n",
    "header without colon": b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
    "bad version": b"GET / HTTP/9.Z\r\nHost: x\r\n\r\n",
    "space in method": b"G T / HTTP/1.1\r\nHost: x\r\n\r\n",
    "two lengths": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n"
                   b"\r\nab",
    "bad chunk": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
}


@pytest.mark.parametrize("name", PLAIN)
@pytest.mark.parametrize("payload", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_http_gets_a_json_400(plain, name, payload):
    with closing(_connect(plain[name])) as sock:
        sock.sendall(payload)
        status, headers, body = _answer(sock)
    assert status == 400, (headers, body[:200])
    assert "malformed HTTP request" in _json_error(status, headers, body)


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FunctionProcess]:
    """rng with short head and keep-alive times, and room for 2 connections; each
    request for /<n> waits 2 s, so that it is in flight while the test looks."""
    env = {**NO_DELAYS, "RNG_DELAY": "2", "HTTP_HEAD_TIMEOUT": "0.5",
           "HTTP_KEEP_ALIVE": "0.3", "HTTP_MAX_CONNECTIONS": "2"}
    logs = tmp_path_factory.mktemp("logs")
    rng = FunctionProcess(FUNCTIONS["rng"], free_port(), env, logs).start()
    yield rng.wait_ready()
    rng.stop()


def test_head_and_keep_alive_times_are_bounded(tight):
    with closing(_connect(tight)) as silent, closing(_connect(tight)) as slow:
        slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # then nothing more
        started = time.monotonic()
        status, headers, body = _answer(slow)
        assert status == 408
        assert "request head not received within 0.5 s" in _json_error(status, headers, body)
        assert _closed(silent, within=1.5)  # nothing said: it asked nothing
        assert time.monotonic() - started < 1.5
    with closing(_connect(tight)) as kept:
        kept.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = http.client.HTTPResponse(kept)
        answer.begin()
        assert answer.status == 200 and answer.read().startswith(b"RNG running")
        assert _closed(kept, within=1.0)  # its keep-alive time is over


def test_idle_connections_make_room_and_busy_ones_get_a_json_503(tight):
    with ExitStack() as stack:
        idle = [stack.enter_context(closing(_connect(tight))) for _ in range(2)]
        time.sleep(0.1)
        # a third connection at the limit of 2: the oldest idle one is closed for it
        assert requests.get(tight.url + "/", timeout=5).status_code == 200
        assert _closed(idle[0], within=1.0)
        busy = [stack.enter_context(closing(_connect(tight))) for _ in range(2)]
        for sock in busy:
            sock.sendall(b"GET /8 HTTP/1.1\r\nHost: x\r\n\r\n")  # each takes 2 s
        time.sleep(0.5)
        # no idle connection left to close: refused at once, as JSON
        answer = requests.get(tight.url + "/", timeout=5)
        assert answer.status_code == 503
        assert "requests at once" in answer.json()["error"]
        assert answer.headers["retry-after"] == "1"
        assert all(_answer(sock)[0] == 200 for sock in busy)


HOLDER = """\
import socket, sys, time
port, count, source = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
held, started = [], time.monotonic()
for i in range(count):
    if i % 100 == 0:  # 8,000 a second: within what the server accepts, so the listen
        time.sleep(max(0, started + i / 8000 - time.monotonic()))  # queue never drops a SYN
    sock = socket.socket()
    # the port is chosen at connect, per source address: 20,000 to one port fit
    sock.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24), 1)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    held.append(sock)
print(len(held), flush=True)
sys.stdin.read()  # hold them until the test closes stdin
"""


@pytest.mark.alone
@pytest.mark.parametrize("name", ["rng", "hasher"])
def test_20000_idle_connections_leave_a_new_request_answered_within_1_s(plain, name):
    """20,000 connections that never send a byte, from two helper processes of
    10,000 each: this process's own RLIMIT_NOFILE (20,000 here, as the server's)
    could not hold them all, and cannot be raised without CAP_SYS_RESOURCE."""
    function = plain[name]
    with ExitStack() as stack:
        for source in ("127.0.0.2", "127.0.0.3"):
            holder = stack.enter_context(subprocess.Popen(
                [sys.executable, "-c", HOLDER, str(function.port), "10000", source],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
            stack.callback(holder.kill)
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "10000"
        started = time.monotonic()
        response = requests.get(function.url + "/", timeout=5)
        took = time.monotonic() - started
    assert response.status_code == 200
    assert took < 1.0


def test_the_worker_answers_its_summary_when_its_log_cannot_be_written(
        redis_server, start_function, tmp_path):
    """Its stdout, where the summary's log line goes, is /dev/full: every write
    fails with ENOSPC, as on a full disk."""
    rng, hasher = start_function("rng"), start_function("hasher")
    env = {**NO_DELAYS, "REDIS_URL": redis_server.url, "RNG_URL": rng.url,
           "HASHER_URL": hasher.url}
    worker = FunctionProcess(FUNCTIONS["worker"], free_port(), env, tmp_path / "logs")
    command = [str(Path(sys.executable).with_name("functions-framework")), "--target", "worker",
               "--source", str(FUNCTIONS["worker"].source), "--host", worker.host,
               "--port", str(worker.port)]
    stderr = tmp_path / "stderr.log"
    with open("/dev/full", "wb") as full, open(stderr, "wb") as err:
        worker.process = subprocess.Popen(command, stdout=full, stderr=err, env=worker.env,
                                          start_new_session=True)
    try:
        worker.wait_ready()
        answer = requests.post(worker.url, json={"seconds": 0.3, "concurrency": 1}, timeout=30)
    finally:
        worker.stop()
    assert answer.status_code == 200, answer.text
    summary = answer.json()
    assert summary["hashes"] > 0
    assert summary["hashes"] == int(redis_server.client().get("hashes"))
    assert "log line not written" in stderr.read_text()


@pytest.mark.parametrize("name, head, status", [
    ("hasher", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (2 << 20), 413),
    ("rng", b"GET /8 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (2 << 20), 400),
])
def test_a_functions_early_answer_reaches_a_client_still_sending(plain, name, head, status):
    """The function answers before it read the body and closes: the close lingers,
    so the client's kernel gets the answer, not a reset, 50 times of 50."""
    seen = []
    for _ in range(50):
        with closing(_connect(plain[name])) as sock:
            try:
                sock.sendall(head + b"\0" * (2 << 20))
            except OSError:
                pass  # refused mid-body: the answer is what counts
            seen.append(_answer(sock)[0])
    assert seen == [status] * 50

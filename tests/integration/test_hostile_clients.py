"""Clients that stall, lie or flood get a clear answer and cost the function
nothing lasting: every function runs on an event loop, where a slow client holds
no thread, and limits are enforced while a body is read, never after.

Each test runs against real `functions-framework` processes on loopback ports.
"""

from __future__ import annotations

import socket
import time
from contextlib import ExitStack, closing

import psutil
import pytest
import requests

from brkcoin.platform.processes import FunctionProcess

MiB = 1024 * 1024
# What a body-carrying request of each function looks like, and what refuses it.
BODIES = {
    "rng": ("GET", "/32", 400),  # GET /<n> takes no body at all
    "hasher": ("POST", "/", 413),
    "worker": ("POST", "/", 413),
}


def _address(function: FunctionProcess) -> tuple[str, int]:
    return function.host, function.port


def _rss(function: FunctionProcess) -> int:
    """Resident memory of the function's whole process tree (gunicorn and its worker)."""
    assert function.process is not None
    root = psutil.Process(function.process.pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])


def _answer(sock: socket.socket, timeout: float = 5) -> tuple[int, bytes]:
    """Read an HTTP answer's status and whatever of it arrives within `timeout`."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        part = sock.recv(65536)
        if not part:
            break
        data += part
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    return status, data


@pytest.mark.parametrize("name", ["rng", "hasher", "worker"])
@pytest.mark.parametrize("stall", [b"GET /3", b"GET /32 HTTP/1.1\r\nHost: x\r\nX-Slow: 1"])
def test_200_stalled_connections_do_not_delay_anyone(start_function, name, stall):
    function = start_function(name)
    with ExitStack() as stack:
        for _ in range(200):
            sock = stack.enter_context(closing(socket.create_connection(_address(function))))
            sock.sendall(stall)  # half a request line, or half the headers; then silence
        time.sleep(0.5)
        started = time.monotonic()
        response = requests.get(function.url + "/", timeout=5)
        took = time.monotonic() - started
    assert response.status_code == 200
    assert took < 1.0


@pytest.mark.parametrize("name", BODIES)
def test_a_declared_oversized_body_is_refused_before_it_is_sent(start_function, name):
    function = start_function(name)
    method, path, status = BODIES[name]
    with closing(socket.create_connection(_address(function))) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2097152\r\n"
                     "Content-Type: application/json\r\n\r\n".encode())
        started = time.monotonic()
        got, head = _answer(sock, timeout=5)  # no byte of the body is ever sent
    assert got == status, head
    assert time.monotonic() - started < 1.0
    assert b"application/json" in head


@pytest.mark.parametrize("name", BODIES)
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_500_mib_sent_anyway_is_refused_and_not_kept(start_function, name, chunked):
    function = start_function(name, {"WORKER_TOKEN": "s3cret"} if name == "worker" else {})
    method, path, status = BODIES[name]
    if name == "worker":
        status = 401  # a protected worker refuses before reading anything
    before = _rss(function)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {500 * MiB}"
    block = b"\0" * MiB
    if chunked:
        block = b"%x\r\n%s\r\n" % (len(block), block)
    sent = 0
    with closing(socket.create_connection(_address(function))) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\n".encode())
        sock.settimeout(10)
        try:
            for _ in range(500):
                sock.sendall(block)
                sent += 1
        except OSError:
            pass  # refused and closed: the rest is never read
        got, head = _answer(sock)
        peak = _rss(function)
    assert got == status, head
    assert peak - before < 20 * MiB, f"grew by {(peak - before) / MiB:.1f} MiB after {sent} MiB"


@pytest.mark.parametrize("name", ["hasher", "worker"])
def test_a_stalled_body_times_out_with_408(start_function, name):
    function = start_function(name, {"HASHER_BODY_TIMEOUT": "1", "WORKER_BODY_TIMEOUT": "1"})
    with closing(socket.create_connection(_address(function))) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        started = time.monotonic()
        got, head = _answer(sock, timeout=5)
    assert got == 408, head
    assert 0.9 < time.monotonic() - started < 3
    assert b"not received within 1 s" in head or b"application/json" in head

"""An rng or hasher that trickles, lies, redirects or floods costs the worker a
counted, bounded error, never a hang, a dead loop or a wrong count.

The misbehaving upstreams are loopback stand-ins (a broken third-party component
swapped in); the worker, the good rng and hasher, and Redis are real processes.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import time
from collections.abc import Callable
from contextlib import ExitStack

import pytest
import requests

from support import serve

Handler = type[http.server.BaseHTTPRequestHandler]


def _handler(respond: Callable[[http.server.BaseHTTPRequestHandler, bytes], None]) -> Handler:
    """A keep-alive handler that reads the request body, then lets `respond` answer."""

    class Misbehaving(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        requests_seen = 0

        def _any(self) -> None:
            type(self).requests_seen += 1
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                respond(self, body)
            except OSError:
                pass  # the worker gave up and closed: as it should

        do_GET = do_POST = _any  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    return Misbehaving


def _answer(handler: http.server.BaseHTTPRequestHandler, body: bytes, status: int = 200,
            **headers: str) -> None:
    handler.send_response(status)
    headers.setdefault("Content-Length", str(len(body)))
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)


def _trickle(handler: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 64\r\n\r\n" + b"a" * 64:
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()
        time.sleep(2)


def _short(handler: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
    handler.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 64\r\n\r\n0123456789")
    handler.wfile.flush()
    time.sleep(30)  # says 64 bytes, sends 10, then nothing


def _redirect(handler: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
    _answer(handler, b"", 302, Location="http://127.0.0.1:9/elsewhere")


def _flood(handler: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
    handler.send_response(200)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    block = b"f" * 65536
    for _ in range(1600):  # 100 MiB, unasked for
        handler.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))


def _leading_newline(handler: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
    _answer(handler, b"\n" + hashlib.sha256(body).hexdigest()[1:].encode())


def _invented(handler: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
    # The right shape, lowercase hex, never a coin: hashes it never computed.
    units = len(body) // 32 or 1
    _answer(handler, b"\n".join(b"f" + os.urandom(32).hex()[1:].encode() for _ in range(units)))


@pytest.fixture
def worker_with(start_function, redis_server):
    """worker_with(rng=..., hasher=...): the URL of a real worker whose upstreams are
    the given stand-in handlers, or the real functions where none is given."""
    with ExitStack() as stand_ins:

        def start(rng: Handler | None = None, hasher: Handler | None = None) -> str:
            urls = {
                name: start_function(name).url if handler is None
                else stand_ins.enter_context(serve(handler))
                for name, handler in (("rng", rng), ("hasher", hasher))
            }
            worker = start_function("worker", {
                "REDIS_URL": redis_server.url, "RNG_URL": urls["rng"],
                "HASHER_URL": urls["hasher"],
            })
            return worker.url

        yield start


def _mine(url: str, **inputs: object) -> tuple[dict, float]:
    started = time.monotonic()
    response = requests.post(url, json=inputs, timeout=60)
    assert response.status_code == 200, response.text
    return response.json(), time.monotonic() - started


@pytest.mark.parametrize("which", ["rng", "hasher"])
@pytest.mark.parametrize("behaviour", [_trickle, _short], ids=["trickles", "short-body"])
def test_an_invocation_ends_in_time_whatever_an_upstream_does(worker_with, which, behaviour):
    url = worker_with(**{which: _handler(behaviour)})
    summary, took = _mine(url, seconds=1, concurrency=4)
    assert took < 1 + 2.5  # its seconds, one second of grace for calls in flight, the flush
    assert summary["hashes"] == 0
    assert summary["errors"][which] >= 4


def test_a_redirect_is_an_error_not_followed(worker_with):
    url = worker_with(rng=_handler(_redirect))
    summary, _ = _mine(url, seconds=0.5)
    assert summary["errors"]["rng"] > 0
    assert "HTTP 302" in summary["last_errors"]["rng"]


def test_a_flooding_upstream_is_cut_off(worker_with):
    url = worker_with(rng=_handler(_flood))
    summary, took = _mine(url, seconds=1)
    assert "answer over 32 bytes" in summary["last_errors"]["rng"]
    assert took < 3.5


@pytest.mark.parametrize("batch", [1, 64])
def test_a_malformed_hasher_answer_is_a_counted_error_and_mining_goes_on(worker_with, batch):
    url = worker_with(hasher=_handler(_leading_newline))
    summary, took = _mine(url, seconds=1.5, concurrency=2, batch=batch)
    assert took >= 1.5  # the loops lived their whole time
    assert summary["hashes"] == 0
    assert summary["errors"]["hasher"] >= 2
    assert "hasher" in summary["last_errors"]


@pytest.mark.parametrize("batch", [1, 1000])
def test_a_hasher_inventing_digests_is_caught(worker_with, redis_server, batch):
    url = worker_with(hasher=_handler(_invented))
    summary, _ = _mine(url, seconds=1, batch=batch)
    assert summary["hashes"] == 0
    assert "wrong digest" in summary["last_errors"]["hasher"]
    assert int(redis_server.client().get("hashes") or 0) == 0


def test_huge_batches_still_end_in_time(worker_with):
    url = worker_with()
    summary, took = _mine(url, seconds=2, concurrency=32, batch=32768)
    assert summary["hashes"] > 0
    assert took < 2 + 2.5


def _throttling(handler: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
    _answer(handler, b'{"error": "throttled"}', 429, **{"Retry-After": "1",
                                                        "Content-Type": "application/json"})


def test_a_throttled_call_is_an_error_and_the_loop_backs_off(worker_with):
    """A platform's 429 (our door's, Cloud Run's) is counted as an error, and the
    loop waits longer after each: a few calls in 2 s, not a storm."""
    url = worker_with(rng=_handler(_throttling))
    summary, _ = _mine(url, seconds=2)
    assert summary["hashes"] == 0 and "HTTP 429" in summary["last_errors"]["rng"]
    assert 3 <= summary["errors"]["rng"] <= 12, summary["errors"]

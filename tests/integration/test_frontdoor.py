"""The local platform's front door, with real function instances behind it:
per-request balancing, the per-instance concurrency line, streaming, and the
door's own answers (JSON) to what it refuses."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from brkcoin.platform.processes import FunctionProcess, free_port
from brkcoin.platform.proxy import FrontDoor, Instance


class Door:
    """A FrontDoor serving in its own event loop thread, as `brkcoin up` runs it."""

    def __init__(self, name: str, concurrency: int, line_timeout: float = 60) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.door = FrontDoor(name, concurrency, line_timeout)
        self.port = free_port()
        self.run(self.door.start("127.0.0.1", self.port))
        self.url = f"http://127.0.0.1:{self.port}"

    def run(self, coroutine):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def add(self, process: FunctionProcess) -> Instance:
        instance = Instance(process.instance, process.host, process.port)
        self.loop.call_soon_threadsafe(self.door.add, instance)
        return instance

    def close(self) -> None:
        self.run(self.door.close())
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture
def door() -> Iterator[Callable[..., Door]]:
    doors: list[Door] = []

    def make(name: str, concurrency: int = 0, line_timeout: float = 60) -> Door:
        doors.append(Door(name, concurrency, line_timeout))
        return doors[-1]

    yield make
    for each in doors:
        each.close()


def test_requests_spread_per_request_over_instances(start_function, door):
    rng = door("rng")
    instances = [rng.add(start_function("rng")) for _ in range(3)]
    with requests.Session() as session:  # one keep-alive connection for all
        for _ in range(30):
            assert len(session.get(rng.url + "/32", timeout=5).content) == 32
    assert [i.served for i in instances] == [10, 10, 10]


def test_a_full_instance_makes_requests_wait_their_turn(start_function, door):
    rng = door("rng", concurrency=1)
    rng.add(start_function("rng", {"RNG_DELAY": "0.2"}))
    started = time.monotonic()
    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda _: requests.get(rng.url + "/8", timeout=10), range(5)))
    took = time.monotonic() - started
    assert all(a.status_code == 200 for a in answers)
    assert 1.0 <= took < 2.0  # one at a time: 5 x 0.2 s, not 0.2 s


def test_no_free_instance_in_time_is_a_json_429_with_retry_after(start_function, door):
    rng = door("rng", concurrency=1, line_timeout=0.3)
    rng.add(start_function("rng", {"RNG_DELAY": "1"}))
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(requests.get, rng.url + "/8", timeout=10)
        time.sleep(0.1)
        second = requests.get(rng.url + "/8", timeout=10)
        assert first.result().status_code == 200
    assert second.status_code == 429
    assert second.headers["Retry-After"] == "1"
    assert "no rng instance free within 0.3 s: throttled" in second.json()["error"]


def test_bodies_stream_through_both_ways(start_function, door):
    hasher = door("hasher")
    hasher.add(start_function("hasher"))
    body = bytes(range(256)) * 4096  # 1 MiB, the hasher's limit
    answer = requests.post(hasher.url + "/?chunk=32", data=body, timeout=30)
    assert answer.status_code == 200
    assert answer.text.split("\n")[:2] == [hashlib.sha256(body[:32]).hexdigest(),
                                            hashlib.sha256(body[32:64]).hexdigest()]
    chunked = requests.post(hasher.url + "/", data=iter([b"ab", b"c"]), timeout=10)
    assert chunked.text == hashlib.sha256(b"abc").hexdigest()


def test_a_refused_body_is_not_read_on(start_function, door):
    hasher = door("hasher")
    hasher.add(start_function("hasher"))
    connection = http.client.HTTPConnection("127.0.0.1", hasher.port, timeout=10)
    connection.putrequest("POST", "/")
    connection.putheader("Content-Length", str(500 * 1024 * 1024))
    connection.endheaders()
    sent = 0
    try:
        for _ in range(500):
            connection.send(b"\0" * 1024 * 1024)
            sent += 1
    except OSError:
        pass  # refused and closed
    answer = connection.getresponse()
    # The instance answers 413 and closes with the body unread, which the kernel
    # may turn into a reset that takes the answer with it before the door reads
    # it: then the door says so (502). Either way a JSON error, and no more read.
    assert answer.status in (413, 502)
    assert "error" in json.loads(answer.read())
    assert sent < 100  # the door stopped reading soon after the instance refused


@pytest.mark.parametrize(
    "raw, status",
    [(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431),
     (b"NOT HTTP\r\n\r\n", 400)],
)
def test_what_the_door_refuses_is_json(start_function, door, raw, status):
    rng = door("rng")
    rng.add(start_function("rng"))
    with socket.create_connection(("127.0.0.1", rng.port), timeout=5) as sock:
        sock.sendall(raw)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d" % status)
    assert "error" in json.loads(body)


def test_a_dead_instance_costs_no_failed_request(start_function, door):
    rng = door("rng")
    alive = start_function("rng")
    dead = start_function("rng")
    rng.add(alive)
    rng.add(dead)
    dead.stop()  # gone without a word: the door learns it at connect
    with requests.Session() as session:
        answers = [session.get(rng.url + "/8", timeout=5).status_code for _ in range(20)]
    assert answers == [200] * 20

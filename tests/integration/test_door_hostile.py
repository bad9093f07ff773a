"""The front door of a real `brkcoin up`, tried as an attacker would: floods of
pipelined requests, clients that vanish, frozen instances, refused bodies and
upgrades. Each ends in a clear answer, with bounded memory and no slot lost."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time

import psutil
import pytest
import requests

NO_TICK = ("--schedule", "0 0 1 1 *")  # once a year: nothing mines unless asked
MiB = 1024 * 1024


def _status_and_body(sock: socket.socket, timeout: float = 5) -> tuple[int, bytes]:
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def _instance_pids(stack, name: str) -> list[int]:
    return [p.pid for p in stack.descendants()
            if f"--target {name} " in " ".join(p.cmdline()) + " "]


@pytest.mark.alone
def test_a_pipelining_flood_is_read_one_request_at_a_time(up):
    stack = up("--scale", "rng=1", "--instance-concurrency", "rng=1", *NO_TICK)
    stack.wait_for("brkcoin is up")
    rng = ("127.0.0.1", stack.ports["rng"])
    requests.get(f"http://{rng[0]}:{rng[1]}/8", timeout=5).raise_for_status()
    before = _rss(stack.process.pid)
    flood = socket.create_connection(rng)
    flood.setblocking(False)
    one = b"GET /1048576 HTTP/1.1\r\nHost: x\r\n\r\n"
    pipeline, sent = one * (64 * MiB // len(one)), 0
    give_up = time.monotonic() + 8
    while sent < len(pipeline) and time.monotonic() < give_up:
        try:
            sent += flood.send(pipeline[sent:sent + MiB])
        except BlockingIOError:
            time.sleep(0.01)  # the door reads no further: TCP holds the rest
    grown = _rss(stack.process.pid) - before
    assert grown < 50 * MiB, f"brkcoin up grew by {grown / MiB:.0f} MiB for {sent} bytes"
    assert sent < 32 * MiB  # what was sent sits in kernel buffers, not in the door
    flood.close()  # with its unread answer wedged on the only rng slot
    started = time.monotonic()
    answer = requests.get(f"http://{rng[0]}:{rng[1]}/8", timeout=5)
    assert answer.status_code == 200 and len(answer.content) == 8
    assert time.monotonic() - started < 1.0


def test_a_frozen_instance_gets_504_and_mining_goes_on(up):
    stack = up("--scale", "rng=2", "--timeout", "rng=2", "--every", "3s")
    stack.wait_for("brkcoin is up")
    frozen = _instance_pids(stack, "rng")[0]  # its process group: the whole instance
    os.killpg(frozen, signal.SIGSTOP)
    try:
        url = f"http://127.0.0.1:{stack.ports['rng']}/8"
        timed_out = []

        def ask() -> None:
            started = time.monotonic()
            answer = requests.get(url, timeout=10)
            if answer.status_code == 504:
                timed_out.append((time.monotonic() - started, answer.json()))

        threads = [threading.Thread(target=ask) for _ in range(6)]
        for each in threads:
            each.start()
        for each in threads:
            each.join(15)
        assert timed_out, "no request reached the frozen instance"
        for took, body in timed_out:
            assert took < 2 + 1 and "timeout of 2 s" in body["error"]
        client = stack.redis()
        hashes = int(client.get("hashes") or 0)
        state = stack.wait_until(lambda s: s.get("functions", {}).get("rng", {})
                                 .get("replaced", 0) >= 1, timeout=20)
        assert state["functions"]["rng"]["replaced"] >= 1  # killed and replaced
        give_up = time.monotonic() + 10
        while int(client.get("hashes") or 0) <= hashes + 5:
            assert time.monotonic() < give_up, "mining stopped"
            time.sleep(0.2)
    finally:
        try:
            os.killpg(frozen, signal.SIGCONT)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("name, head, status", [
    ("hasher", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (2 * MiB), 413),
    ("rng", b"GET /8 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (2 * MiB), 400),
    ("worker", b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (2 * MiB), 405),
])
def test_an_instances_early_answer_reaches_the_client_every_time(up, name, head, status):
    stack = up(*NO_TICK)
    stack.wait_for("brkcoin is up")
    body = b"\0" * (2 * MiB)
    seen = []
    for _ in range(50):
        with socket.create_connection(("127.0.0.1", stack.ports[name]), timeout=10) as sock:
            try:
                sock.sendall(head + body)
            except OSError:
                pass  # refused mid-body: the answer is what counts
            try:
                got, answer = _status_and_body(sock)
                seen.append(got if got == status else f"{got} {answer[:200]!r}")
            except OSError as e:
                seen.append(repr(e))
    assert seen == [status] * 50, [each for each in seen if each != status]


def test_an_upgrade_is_refused_and_never_forwarded(up):
    stack = up(*NO_TICK)
    stack.wait_for("brkcoin is up")
    with socket.create_connection(("127.0.0.1", stack.ports["worker"]), timeout=5) as sock:
        # No body: forwarded, this would start an invocation of the default 10 s.
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                     b"Upgrade: websocket\r\nContent-Length: 0\r\n\r\n")
        status, body = _status_and_body(sock)
    assert status == 501 and "upgrade" in json.loads(body)["error"]
    time.sleep(2.5)  # long enough for a forwarded invocation to have flushed hashes
    assert int(stack.redis().get("hashes") or 0) == 0
    assert stack.summaries() == []

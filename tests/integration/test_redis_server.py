"""The embedded Redis (platform/redis_server.py), as real redis-server processes:
its password, the death of what wraps it, its linger after `up` dies; and the
restart back-off (platform/backoff.py) on a fake clock."""

from __future__ import annotations

import os
import signal
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis
from redis.connection import parse_url

from brkcoin.platform.backoff import Backoff
from brkcoin.platform.processes import free_port
from brkcoin.platform.redis_server import RedisServer, RedisUnavailable, password_of

LINGER = 0.6  # what the platform uses


def _redis_on(port: int) -> list[psutil.Process]:
    """The redis-server processes still running (not zombies) for `port`."""
    found = []
    for process in psutil.process_iter(["name", "cmdline", "status"]):
        info = process.info
        if ("redis-server" in (info["name"] or "") and info["status"] != psutil.STATUS_ZOMBIE
                and f":{port}" in " ".join(info["cmdline"] or [])):
            found.append(process)
    return found


def _ended(pid: int, timeout: float) -> bool:
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True  # dead, and its port closed: only its parent's reaping is left
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def port() -> Iterator[int]:
    port = free_port()
    yield port
    for process in _redis_on(port):  # a failed test leaves no Redis behind
        process.kill()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _raw(port: int, *commands: bytes) -> list[bytes]:
    """Each command's first reply line, as any local user's client would get it."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
        replies = []
        for command in commands:
            conn.sendall(command + b"\r\n")
            replies.append(conn.recv(4096).split(b"\r\n")[0])
        return replies


# -- the password --

def test_with_a_password_redis_refuses_a_client_without_it(tmp_path, port):
    server = RedisServer(tmp_path, port, password=True).start()
    try:
        assert _raw(port, b"HSET wallet 0abc x", b"CONFIG SET dir /tmp", b"PING") == [
            b"-NOAUTH Authentication required."] * 3
        wallet = redis.Redis.from_url(server.url, socket_timeout=2)
        assert wallet.hset("wallet", "0abc", "x") == 1
        assert server.client().hget("wallet", "0abc") == b"x"
        assert server.url == f"redis://:{server.password}@127.0.0.1:{port}/0"
    finally:
        server.stop()


def test_the_password_is_made_once_private_never_shown_and_kept(tmp_path, port):
    umask = os.umask(0)  # the most open umask: the files are 0600 all the same
    try:
        server = RedisServer(tmp_path, port, password=True, linger=LINGER).start()
    finally:
        os.umask(umask)
    try:
        secret = (tmp_path / "password").read_text().strip()
        assert len(secret) >= 32 and server.password == secret
        assert _mode(tmp_path / "password") == _mode(tmp_path / "redis.conf") == 0o600
        for _, pid in server.pids():  # `ps` shows it to no one
            assert secret not in " ".join(psutil.Process(pid).cmdline())
        url = server.url
    finally:
        server.stop()
    again = RedisServer(tmp_path, free_port(), password=True).start()
    try:
        assert again.password == secret and (tmp_path / "password").read_text().strip() == secret
        assert redis.Redis.from_url(again.url, socket_timeout=2).ping()
        assert url.replace(str(port), str(again.port)) == again.url
    finally:
        again.stop()


def test_a_password_others_could_read_is_replaced(tmp_path):
    leaked = tmp_path / "password"
    leaked.write_text("leaked\n")
    leaked.chmod(0o644)
    made = password_of(tmp_path)
    assert made != "leaked" and leaked.read_text().strip() == made
    assert _mode(leaked) == 0o600
    assert password_of(tmp_path) == made


def test_the_url_carries_any_password_quoted():
    password = "a:b@c/d%e f?"
    url = RedisServer.url_of("127.0.0.1", 6380, password)
    assert parse_url(url) == {"password": password, "host": "127.0.0.1", "port": 6380, "db": 0}
    assert RedisServer.url_of("127.0.0.1", 6380) == "redis://127.0.0.1:6380/0"


def test_without_a_password_it_is_open_but_on_loopback_only(tmp_path, port):
    server = RedisServer(tmp_path, port).start()  # DockerCoins' own components: no AUTH
    try:
        assert _raw(port, b"PING") == [b"+PONG"]
        assert server.url == f"redis://127.0.0.1:{port}/0"
        assert not (tmp_path / "password").exists()
    finally:
        server.stop()
    with pytest.raises(RedisUnavailable, match="loopback"):
        RedisServer(tmp_path, free_port(), host="0.0.0.0").launch()


# -- what wraps Redis: killed, and lingering --

@pytest.mark.parametrize("kill", ["process group", "wrapper alone"])
def test_kill_9_of_the_wrapper_leaves_no_redis_and_it_is_back_within_5_s(tmp_path, port, kill):
    server = RedisServer(tmp_path, port, linger=LINGER).start()
    try:
        for _ in range(10):
            server.client().incr("kills")
            wrapper, redis_pid = server.process.pid, server.server_pid
            assert redis_pid is not None and redis_pid != wrapper
            killed = time.monotonic()
            if kill == "process group":
                os.killpg(wrapper, signal.SIGKILL)
            else:
                os.kill(wrapper, signal.SIGKILL)
            assert _ended(redis_pid, 1.0), f"redis-server {redis_pid} outlived its wrapper"
            server.start()  # as the supervisor restarts it, on the same port
            assert time.monotonic() - killed < 5
            assert [p.pid for p in _redis_on(port)] == [server.server_pid]
        assert int(server.client().get("kills")) == 10  # every write kept (AOF)
    finally:
        server.stop()


def test_sigterm_to_the_wrapper_keeps_redis_answering_for_the_linger(tmp_path, port):
    server = RedisServer(tmp_path, port, linger=LINGER, password=True).start()
    wrapper, redis_pid = server.process, server.server_pid
    assert redis_pid is not None
    os.kill(wrapper.pid, signal.SIGTERM)  # what PR_SET_PDEATHSIG sends when `up` dies
    sent = time.monotonic()
    time.sleep(LINGER / 2)
    late = redis.Redis.from_url(server.url, socket_timeout=1)  # a new connection, too
    assert late.incrby("hashes", 7) == 7  # a draining worker's last flush lands
    assert wrapper.wait(5) == 0
    assert LINGER - 0.1 < time.monotonic() - sent < LINGER + 1.5
    assert _ended(redis_pid, 1.0)
    server.stop()
    server.start()
    try:
        assert int(server.client().get("hashes")) == 7
        stopping = time.monotonic()
    finally:
        server.stop()
    assert time.monotonic() - stopping < LINGER  # a stop of ours does not linger


# -- the restart back-off, on a fake clock --

BEAT, START = 0.5, 1.0  # the supervisor's look and a generous Redis start, in seconds


def _kills(backoff: Backoff, now: float, count: int, uptime: float) -> list[float]:
    """Delays before each restart when the process dies `uptime` after each start."""
    delays = []
    for _ in range(count):
        backoff.started(now)
        now += uptime
        delays.append(backoff.failed(now))
        now += delays[-1]
    return delays


def test_backoff_grows_on_quick_failures_up_to_its_cap():
    assert _kills(Backoff(), 0.0, 7, uptime=0.001) == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0, 2.0]
    assert _kills(Backoff(first=1, cap=30), 0.0, 7, 0.001) == [1, 2, 4, 8, 16, 30, 30]


def test_ten_kills_in_a_row_are_each_back_within_5_s():
    assert all(delay + BEAT + START < 5 for delay in _kills(Backoff(), 0.0, 10, uptime=2.0))


def test_backoff_resets_after_60_s_of_health():
    backoff = Backoff()
    _kills(backoff, 0.0, 5, uptime=1.0)
    assert _kills(backoff, 1000.0, 1, uptime=59.999) == [2.0]  # not quite long enough
    assert _kills(backoff, 2000.0, 3, uptime=60.0) == [0.25, 0.25, 0.25]


def test_a_start_that_fails_counts_as_a_quick_failure():
    backoff = Backoff()
    backoff.started(0.0)
    assert [backoff.failed(100.0), backoff.failed(100.3), backoff.failed(100.9)] == [0.25, 0.5, 1.0]

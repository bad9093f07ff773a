"""What the tests of `brkcoin up` share: the command run as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import redis

from brkcoin.layout import FUNCTIONS
from brkcoin.platform.processes import free_port

BRKCOIN = str(Path(sys.executable).with_name("brkcoin"))


class Up:
    """A `brkcoin up` subprocess on free ports with its own data folder."""

    def __init__(self, data_dir: Path, *extra: str, env: dict[str, str] | None = None,
                 sigint_ignored: bool = False, ports: dict[str, int] | None = None) -> None:
        self.ports = ports or {n: free_port() for n in FUNCTIONS} | {"redis": free_port(),
                                                                   "metrics": free_port()}
        self.data_dir = data_dir
        args = [f"--{n}-port={p}" for n, p in self.ports.items()]
        if not {"--every", "--schedule"} & set(extra):
            args += ["--every", "2s"]
        self.process = subprocess.Popen(
            [BRKCOIN, "up", "--data-dir", str(data_dir), *args, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={k: v for k, v in os.environ.items() if k != "REDIS_URL"} | (env or {}),
            # as a non-interactive shell starts a background job: SIGINT ignored
            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
            if sigint_ignored else None,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 30) -> None:
        give_up = time.monotonic() + timeout
        while text not in self.output:
            assert self.process.poll() is None or text in self.output, self.output
            assert time.monotonic() < give_up, f"no {text!r} in:\n{self.output}"
            time.sleep(0.1)

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)

    def wait_for_hashes(self, hashes: int, timeout: float = 30) -> None:
        """Until the wallet's counter reaches `hashes`: mining is under way."""
        client = self.redis()
        give_up = time.monotonic() + timeout
        while int(client.get("hashes") or 0) < hashes:
            assert time.monotonic() < give_up, self.output
            time.sleep(0.2)

    def redis(self) -> redis.Redis:
        """A client of the embedded Redis, with the password `up` made for it."""
        return redis.Redis(port=self.ports["redis"], password=self.redis_password(),
                           socket_timeout=2)

    def redis_password(self) -> str | None:
        try:
            return (self.data_dir / "redis" / "password").read_text().strip()
        except OSError:
            return None  # --redis-no-password

    def status(self) -> dict:
        """What `up` last wrote to status.json."""
        try:
            return json.loads((self.data_dir / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def wait_until(self, check: Callable[[dict], bool], timeout: float = 30) -> dict:
        give_up = time.monotonic() + timeout
        while not check(state := self.status()):
            assert self.process.poll() is None, self.output
            assert time.monotonic() < give_up, f"never true; last status: {state}"
            time.sleep(0.2)
        return state

    def summaries(self) -> list[dict]:
        """Every invocation's summary, from the worker instances' own logs."""
        found = []
        for log in (self.data_dir / "logs").glob("worker-*.log"):
            for line in log.read_text().splitlines():
                if line.startswith('{"severity"'):
                    found.append(json.loads(line))
        return found


@pytest.fixture
def up(tmp_path):
    started: list[Up] = []

    def start(*extra: str, **options: object) -> Up:
        started.append(Up(tmp_path / "data", *extra, **options))  # type: ignore[arg-type]
        return started[-1]

    yield start
    for each in started:
        # Only this `up`'s own processes: the test process may run others that
        # outlive this test (another module's session stack, under xdist).
        family = []
        if each.process.poll() is None:
            try:
                family = each.descendants()
            except psutil.NoSuchProcess:
                pass
            each.process.kill()
        for child in family:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass


def _running(process: psutil.Process) -> bool:
    """Alive and not a zombie: the orphans of a killed parent are reaped by the
    machine's init, whenever it gets to them; a zombie runs nothing."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def assert_all_gone(processes: list[psutil.Process], timeout: float = 15) -> None:
    give_up = time.monotonic() + timeout
    while alive := [p for p in processes if _running(p)]:
        assert time.monotonic() < give_up, [p.cmdline() for p in alive if _running(p)]
        time.sleep(0.05)

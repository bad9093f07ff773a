"""The local stack: a Redis server and one functions-framework process per function.

It records what it started in `<data_dir>/stack.json`, so the next start can find
(and stop) the leftovers of a run that crashed before it could clean up.
"""

from __future__ import annotations

import json
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from brkcoin.layout import FUNCTIONS
from brkcoin.processes import FunctionProcess
from brkcoin.redis_server import RedisServer

NAMES = tuple(FUNCTIONS)
# rng and hasher sleep for the demo latency inside each request: they need a
# thread per concurrent mining loop, more than Functions Framework's 4 per core.
DEFAULT_ENV = {"rng": {"THREADS": "128"}, "hasher": {"THREADS": "128"}}


class Stack:
    def __init__(
        self,
        data_dir: Path,
        host: str = "127.0.0.1",
        ports: dict[str, int] | None = None,
        redis_port: int = 6380,
        redis_url: str | None = None,
        env: dict[str, str] | None = None,
        names: tuple[str, ...] = NAMES,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.names = names
        self.ports = {n: FUNCTIONS[n].port for n in self.names} | (ports or {})
        self.redis = None if redis_url else RedisServer(self.data_dir / "redis", redis_port, host)
        self.redis_url = redis_url or RedisServer.url_of(host, redis_port)
        self.urls = {n: f"http://{host}:{self.ports[n]}" for n in self.names}
        shared = {
            "REDIS_URL": self.redis_url,
            "RNG_URL": self.urls.get("rng", ""),
            "HASHER_URL": self.urls.get("hasher", ""),
            "WORKER_URL": self.urls.get("worker", ""),
        }
        extra = env or {}
        logs = self.data_dir / "logs"
        self.functions = {
            n: FunctionProcess(
                FUNCTIONS[n],
                self.ports[n],
                DEFAULT_ENV.get(n, {}) | shared | extra,
                logs,
                host,
            )
            for n in self.names
        }

    @property
    def state_file(self) -> Path:
        return self.data_dir / "stack.json"

    def start(self, timeout: float = 30) -> Stack:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            if self.redis:
                self.redis.start()
            for function in self.functions.values():
                function.start()
            self._save_state()
            # Wait for all at once: each takes ~0.3 s to import and bind.
            with ThreadPoolExecutor(len(self.functions) or 1) as pool:
                list(pool.map(lambda f: f.wait_ready(timeout), self.functions.values()))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM every function at once (the worker drains into Redis, which
        needs nothing else), then Redis once they are gone."""
        with ThreadPoolExecutor(len(self.functions) or 1) as pool:
            list(pool.map(lambda f: f.stop(), self.functions.values()))
        if self.redis:
            self.redis.stop()
        self.state_file.unlink(missing_ok=True)

    def _save_state(self) -> None:
        started = [(n, f.process.pid) for n, f in self.functions.items() if f.process]
        if self.redis and self.redis.process:
            started.append(("redis", self.redis.process.pid))
        records = [
            {"name": name, "pid": pid, "cmdline": psutil.Process(pid).cmdline()}
            for name, pid in started
        ]
        self.state_file.write_text(json.dumps({"owner": os.getpid(), "processes": records}))

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _read_state(data_dir: Path) -> dict[str, Any]:
    try:
        state = json.loads((Path(data_dir) / "stack.json").read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def running_owner(data_dir: Path) -> int | None:
    """The pid of a `brkcoin` run that still owns this data folder, if any."""
    owner = _proc(_read_state(data_dir).get("owner", -1))
    if owner and owner.pid != os.getpid() and "brkcoin" in " ".join(owner.cmdline()):
        return int(owner.pid)
    return None


def leftovers(data_dir: Path) -> list[dict[str, Any]]:
    """Processes a crashed run recorded in stack.json that are still running."""
    if running_owner(data_dir):
        return []  # not leftovers: their run is alive and owns them
    alive = []
    for record in _read_state(data_dir).get("processes", []):
        process = _proc(record["pid"])
        if process and process.cmdline() == record["cmdline"]:
            alive.append(record)
    return alive


def clean_leftovers(data_dir: Path) -> list[dict[str, Any]]:
    """Stop the leftovers of a crashed run; returns what was stopped."""
    found = leftovers(data_dir)
    for record in found:
        try:
            os.killpg(record["pid"], signal.SIGTERM)  # each child leads its own group
        except (ProcessLookupError, PermissionError):
            pass
    psutil.wait_procs([p for p in map(_proc, (r["pid"] for r in found)) if p], timeout=10)
    (Path(data_dir) / "stack.json").unlink(missing_ok=True)
    return found


def _proc(pid: int) -> psutil.Process | None:
    try:
        process = psutil.Process(pid)
        return process if process.status() != psutil.STATUS_ZOMBIE else None
    except (psutil.Error, ValueError):
        return None

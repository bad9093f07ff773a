"""A plain stack: a Redis server and one functions-framework process per function,
each function on its own port, no platform in front (no front door, no
supervision). What `brkcoin bench` measures and the tests run against; `brkcoin
up` runs the platform (platform/) instead.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from brkcoin.layout import FUNCTIONS
from brkcoin.platform.processes import FunctionProcess, compile_folder
from brkcoin.platform.redis_server import RedisServer

NAMES = tuple(FUNCTIONS)


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
                shared | extra,
                logs,
                host,
            )
            for n in self.names
        }

    def start(self, timeout: float = 30) -> Stack:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            if self.redis:
                self.redis.start()
            for function in self.functions.values():
                compile_folder(function.function)
                function.start()
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

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

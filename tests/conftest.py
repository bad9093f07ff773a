"""Shared fixtures: real redis-server and functions-framework processes on free
loopback ports, so the tests pass beside a running `make up`."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from pathlib import Path

import functions_framework
import pytest
from flask.testing import FlaskClient

from brkcoin.layout import FUNCTIONS, WORKER_EVENT
from brkcoin.processes import FunctionProcess, free_port
from brkcoin.redis_server import RedisServer

TARGETS = {**FUNCTIONS, WORKER_EVENT.name: WORKER_EVENT}
NO_DELAYS = {"RNG_DELAY": "0", "HASHER_DELAY": "0", "WORKER_DELAY": "0"}


@pytest.fixture
def function_client(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FlaskClient]:
    """function_client(name, target=None, **env): a Flask test client of a freshly
    loaded function module, as functions_framework.create_app builds it."""

    def make(name: str, target: str | None = None, **env: str) -> FlaskClient:
        for key, value in {"RNG_DELAY": "0", "HASHER_DELAY": "0", **env}.items():
            monkeypatch.setenv(key, value)
        importlib.invalidate_caches()
        app = functions_framework.create_app(target or name, str(TARGETS[name].source))
        return app.test_client()

    return make


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def start_function(tmp_path: Path) -> Iterator[Callable[..., FunctionProcess]]:
    """Start `functions-framework --target NAME` on a free port; stopped at teardown."""
    started: list[FunctionProcess] = []

    def start(name: str, env: dict[str, str] | None = None, port: int | None = None):
        process = FunctionProcess(
            TARGETS[name], port or free_port(), {**NO_DELAYS, **(env or {})}, tmp_path / "logs"
        )
        started.append(process.start().wait_ready())
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def mining_stack(redis_server: RedisServer, start_function) -> dict:
    """rng, hasher and worker processes wired to a real Redis, all delays 0."""
    rng = start_function("rng")
    hasher = start_function("hasher")
    env = {"REDIS_URL": redis_server.url, "RNG_URL": rng.url, "HASHER_URL": hasher.url}
    worker = start_function("worker", env)
    return {"redis": redis_server, "rng": rng, "hasher": hasher, "worker": worker, "env": env}

"""Shared fixtures: real redis-server and functions-framework processes on free
loopback ports, so the tests pass beside a running `make up`."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import functions_framework
import pytest
from starlette.testclient import TestClient

from brkcoin.layout import FUNCTIONS, WORKER_EVENT
from brkcoin.platform.processes import FunctionProcess, free_port
from brkcoin.platform.redis_server import RedisServer

TARGETS = {**FUNCTIONS, WORKER_EVENT.name: WORKER_EVENT}
NO_DELAYS = {"RNG_DELAY": "0", "HASHER_DELAY": "0", "WORKER_DELAY": "0"}


def _forget_modules_of(folder: Path) -> None:
    """Drop a function folder's sibling modules (the worker's settings, mining...)
    from sys.modules, so the next load reads the environment afresh."""
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None) or ""
        if file and Path(file).resolve().parent == folder.resolve():
            del sys.modules[name]


@pytest.fixture
def function_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., TestClient]]:
    """function_client(name, target=None, **env): an in-process client of a freshly
    loaded function module, as functions_framework.create_app builds it (an ASGI
    app for the async functions), with `env` set first."""
    clients: list[TestClient] = []

    def make(name: str, target: str | None = None, **env: str) -> TestClient:
        for key, value in {"RNG_DELAY": "0", "HASHER_DELAY": "0", **env}.items():
            monkeypatch.setenv(key, value)
        _forget_modules_of(TARGETS[name].folder)
        importlib.invalidate_caches()
        app = functions_framework.create_app(target or name, str(TARGETS[name].source))
        client = TestClient(app, raise_server_exceptions=False)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


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

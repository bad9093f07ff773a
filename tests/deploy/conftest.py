"""Fixtures of the deploy tests: a real moto server process, real functions-framework
processes and Redis on free loopback ports, and venvs built from the function
folders' own requirements.txt (cached by their hash under tests/artifacts/)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_support import NO_DELAYS, build_venv, wait_http

from brkcoin.layout import FUNCTIONS
from brkcoin.platform.processes import FunctionProcess, free_port, spawn, stop
from brkcoin.platform.redis_server import RedisServer


def _moto_server(tmp_path_factory: pytest.TempPathFactory,
                 extra: dict[str, str]) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    moto = Path(sys.executable).with_name("moto_server")
    # A plain moto server, as a user would start it (no managed IAM policies loaded).
    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(log.parent), **extra}
    process = spawn([str(moto), "-H", "127.0.0.1", "-p", str(port)], log, env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/moto-api/")
        yield url
    finally:
        stop(process)


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's server mode as its own process: a real AWS API emulator on loopback."""
    yield from _moto_server(tmp_path_factory, {})


@pytest.fixture(scope="session")
def moto_quota_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The same, holding Lambda's reserved concurrency to a default account's quota, as
    AWS and LocalStack do: 1000 concurrent executions a region, 100 never reserved."""
    yield from _moto_server(tmp_path_factory, {"MOTO_LAMBDA_CONCURRENCY_QUOTA": "1000"})


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), free_port()).start()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def function_processes(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[dict[str, FunctionProcess]]:
    """All four functions as plain functions-framework processes, delays off."""
    logs = tmp_path_factory.mktemp("functions")
    started: dict[str, FunctionProcess] = {}
    env = {**NO_DELAYS, "REDIS_URL": redis_url}
    try:
        for name in ("rng", "hasher"):
            started[name] = FunctionProcess(FUNCTIONS[name], free_port(), env, logs).start()
        env = {**env, "RNG_URL": started["rng"].url, "HASHER_URL": started["hasher"].url}
        for name in ("worker", "webui"):
            started[name] = FunctionProcess(FUNCTIONS[name], free_port(), env, logs).start()
        for process in started.values():
            process.wait_ready()
        yield started
    finally:
        for process in started.values():
            process.stop()


@pytest.fixture(scope="session")
def requirements_venv() -> Iterator:
    """build_venv, memoised for the session (identical requirement files share one venv)."""
    built: dict[bytes, Path] = {}

    def get(requirements: Path) -> Path:
        key = requirements.read_bytes()
        if key not in built:
            built[key] = build_venv(requirements)
        return built[key]

    yield get

"""Helpers shared by the tests (tests/ is on sys.path through its conftest.py)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests


def mine(worker_url: str, **inputs) -> dict:
    response = requests.post(worker_url, json=inputs, timeout=inputs.get("seconds", 10) + 30)
    assert response.status_code == 200, response.text
    return response.json()


def assert_wallet_holds_only_true_coins(client) -> dict:
    wallet = client.hgetall("wallet")
    for digest, data in wallet.items():
        assert digest.startswith(b"0")
        assert len(data) == 32
        assert hashlib.sha256(data).hexdigest().encode() == digest
    return wallet


@contextmanager
def serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A loopback stand-in HTTP server in a thread, for what cannot run here (a
    cloud's metadata server, a broken third-party component); yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def platform_running(platform) -> Iterator:
    """A local platform on its own event loop in a thread, with its heartbeat (it
    publishes brkcoin:platform), as `brkcoin up` runs it minus the scheduler."""
    import asyncio

    from brkcoin.platform.run import serve

    started = threading.Event()
    stopping: list = []

    async def until_stopped() -> None:
        stopping.append((asyncio.get_running_loop(), asyncio.Event()))
        started.set()
        await stopping[0][1].wait()

    thread = threading.Thread(target=serve, args=(platform, None, until_stopped),
                              kwargs={"signals": False}, daemon=True)
    thread.start()
    assert started.wait(60), "the platform did not start"
    try:
        yield platform
    finally:
        loop, event = stopping[0]
        loop.call_soon_threadsafe(event.set)
        thread.join(30)

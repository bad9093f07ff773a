"""The measurement behind the worker's hand-made HTTP client (functions/worker/upstream.py):
its CPU per call against aiohttp's, both keeping one connection per loop, against
the same rng. Not part of the tests or the bench; run it by hand:

    .venv/bin/pip install aiohttp
    .venv/bin/functions-framework --target rng --source functions/rng/main.py \\
        --host 127.0.0.1 --port 9101 &   # with RNG_DELAY=0
    .venv/bin/python docs/client_overhead.py http://127.0.0.1:9101 8 4

It prints, per client, round trips a second and the client's own CPU per call.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

sys.path.insert(0, "functions/worker")
import upstream  # noqa: E402  (the worker's folder, as Functions Framework loads it)


async def ours(url: str, stop: float, done: list[int]) -> None:
    client = upstream.Upstream("rng", url, 10.0)
    while time.monotonic() < stop:
        await client.call("GET", "/32", limit=64)
        done[0] += 1
    client.close()


async def theirs(session: Any, url: str, stop: float, done: list[int]) -> None:
    while time.monotonic() < stop:
        async with session.get(url + "/32") as answer:
            await answer.read()
        done[0] += 1


async def measure(url: str, loops: int, seconds: float) -> None:
    import aiohttp

    for name in ("ours", "aiohttp"):
        done, stop, cpu = [0], time.monotonic() + seconds, time.process_time()
        if name == "ours":
            await asyncio.gather(*(ours(url, stop, done) for _ in range(loops)))
        else:
            connector = aiohttp.TCPConnector(limit=loops)
            async with aiohttp.ClientSession(connector=connector) as session:
                await asyncio.gather(*(theirs(session, url, stop, done) for _ in range(loops)))
        used = time.process_time() - cpu
        print(f"{name:8} {done[0] / seconds:8.0f} round trips/s "
              f"{used * 1e6 / done[0]:6.1f} us of client CPU a call")


if __name__ == "__main__":
    import uvloop

    uvloop.run(measure(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))

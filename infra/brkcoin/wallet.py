"""Read the wallet the way DockerCoins' web UI does: `GET hashes`, `HLEN wallet`."""

from __future__ import annotations

import time
from collections import deque
from typing import TypedDict

import redis
import redis.asyncio


class Reading(TypedDict):
    hashes: int
    coins: int
    now: float


def read(client: redis.Redis) -> Reading:
    """{"hashes", "coins", "now"}, like the web UI's /json."""
    with client.pipeline(transaction=False) as pipe:
        pipe.get("hashes")
        pipe.hlen("wallet")
        hashes, coins = pipe.execute()
    return {"hashes": int(hashes or 0), "coins": int(coins), "now": time.time()}


async def read_async(client: redis.asyncio.Redis) -> Reading:
    """read(), on the event loop: a wallet in trouble never stalls the platform."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.get("hashes")
        pipe.hlen("wallet")
        hashes, coins = await pipe.execute()
    return {"hashes": int(hashes or 0), "coins": int(coins), "now": time.time()}


class RateMeter:
    """Hashes per second over a sliding window of samples.

    A window, not two successive samples: the worker flushes about once a second,
    so two samples a second apart may straddle zero or two flushes.
    """

    def __init__(self, window: float = 5.0) -> None:
        self.window = window
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, hashes: int) -> float:
        self.samples.append((now, hashes))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window:
            self.samples.popleft()
        (t0, h0), (t1, h1) = self.samples[0], self.samples[-1]
        return (h1 - h0) / (t1 - t0) if t1 > t0 else 0.0

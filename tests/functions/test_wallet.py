"""The worker's flush, straight against a real redis-server: exactly once, all or
nothing, and the history and telemetry beside the DockerCoins keys."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from types import ModuleType

import pytest

from brkcoin.layout import FUNCTIONS


@pytest.fixture(scope="module")
def worker() -> dict[str, ModuleType]:
    """The worker folder's wallet and telemetry modules, imported as Functions
    Framework loads them: from the folder, as top-level modules."""
    sys.path.insert(0, str(FUNCTIONS["worker"].folder))
    try:
        import telemetry
        import wallet
    finally:
        sys.path.remove(str(FUNCTIONS["worker"].folder))
    return {"wallet": wallet, "telemetry": telemetry}


def _coin() -> bytes:
    while True:
        unit = os.urandom(32)
        digest = hashlib.sha256(unit).hexdigest()
        if digest[0] == "0":
            return digest.encode() + unit


def _record(worker, redis_server, flush) -> int:
    async def go() -> int:
        wallet = worker["wallet"].Wallet(redis_server.url)
        try:
            return await wallet.record(flush)
        finally:
            await wallet.close()

    return asyncio.run(go())


def test_a_flush_sent_twice_counts_once(worker, redis_server):
    coins = _coin() + _coin()
    flush = worker["wallet"].Flush(16, coins)
    assert _record(worker, redis_server, flush) == 2
    assert _record(worker, redis_server, flush) == 2  # answered from the marker
    client = redis_server.client()
    assert int(client.get("hashes")) == 16
    assert client.hlen("wallet") == 2
    assert client.hget("wallet", coins[:64]) == coins[64:96]
    assert client.ttl(flush.marker) > 3000
    recent = [json.loads(e) for e in client.lrange("coins:recent", 0, -1)]
    assert [e["digest"] for e in recent] == [coins[96:160].decode(), coins[:64].decode()]


def test_a_refused_flush_writes_nothing_and_names_the_key(worker, redis_server):
    client = redis_server.client()
    client.set("hashes:history", "not a list")
    flush = worker["wallet"].Flush(5, _coin())
    with pytest.raises(worker["wallet"].NotRecorded,
                       match="key hashes:history holds a string, not a list"):
        _record(worker, redis_server, flush)
    assert client.get("hashes") is None and client.hlen("wallet") == 0
    assert not flush.in_doubt


def test_history_keeps_one_point_a_second_and_stats_a_minute(worker, redis_server):
    telemetry = worker["telemetry"].Telemetry(loops=3, batch=1)
    telemetry.call("rng", 0.004, True)
    telemetry.call("rng", 0.3, True)
    telemetry.call("hasher", 0.0, False)
    for hashes in (5, 7):
        flush = worker["wallet"].Flush(hashes, b"")
        flush.stats = telemetry.take(flush.marker)
        _record(worker, redis_server, flush)
    client = redis_server.client()
    points = [json.loads(p) for p in client.lrange("hashes:history", 0, -1)]
    assert points[0][1] == 12  # the newest point holds the counter
    assert len(points) <= 2 and all(isinstance(p[0], int) for p in points)
    entries = [json.loads(e) for e in client.zrange("brkcoin:stats", 0, -1)]
    assert len(entries) == 2
    first = next(e for e in entries if e["rng"]["calls"])
    assert first["loops"] == 3 and first["rng"]["calls"] == 2
    assert first["rng"]["p50_ms"] == 4 and first["rng"]["p95_ms"] == 315
    assert first["hasher"] == {"calls": 1, "errors": 1, "buckets": [0] * 42, "sum_ms": 0.0,
                               "p50_ms": None, "p95_ms": None}
    assert first["rng"]["sum_ms"] == 304.0


def test_totals_add_up_every_flush_for_prometheus(worker, redis_server):
    """brkcoin:totals: the telemetry since the wallet began, written by the flush
    script (so exactly once, like the counts)."""
    bounds = worker["telemetry"].BUCKETS_MS
    for rng_ms in (4, 300):
        telemetry = worker["telemetry"].Telemetry(loops=1, batch=1)
        telemetry.call("rng", rng_ms / 1000, True)
        telemetry.call("hasher", 0.1, False)
        telemetry.redis_errors = 2
        flush = worker["wallet"].Flush(3, b"")
        flush.stats = telemetry.take(flush.marker)
        _record(worker, redis_server, flush)
        _record(worker, redis_server, flush)  # sent again: answered from the marker
    _record(worker, redis_server, worker["wallet"].Flush(1, b""))  # no telemetry line
    totals = {k.decode(): v.decode() for k, v in redis_server.client().hgetall(
        "brkcoin:totals").items()}
    assert json.loads(totals.pop("bounds_ms")) == list(bounds)
    assert totals == {  # a count of 0 (rng's errors) writes no field
        "flushes": "3", "rng:calls": "2", "rng:sum_ms": "304",
        f"rng:le:{bounds.index(4)}": "1", f"rng:le:{bounds.index(315)}": "1",
        "hasher:calls": "2", "hasher:errors": "2", "hasher:sum_ms": "0", "redis:errors": "4"}


def test_a_bad_totals_key_refuses_the_flush_and_a_bad_field_costs_only_its_count(
        worker, redis_server):
    client = redis_server.client()
    client.set("brkcoin:totals", "x")
    with pytest.raises(worker["wallet"].NotRecorded,
                       match="key brkcoin:totals holds a string, not a hash"):
        _record(worker, redis_server, worker["wallet"].Flush(5, b""))
    assert client.get("hashes") is None
    client.delete("brkcoin:totals")
    client.hset("brkcoin:totals", "rng:calls", "not a number")
    telemetry = worker["telemetry"].Telemetry(loops=1, batch=1)
    telemetry.call("rng", 0.004, True)
    flush = worker["wallet"].Flush(5, _coin())
    flush.stats = telemetry.take(flush.marker)
    assert _record(worker, redis_server, flush) == 1  # recorded all the same
    assert int(client.get("hashes")) == 5
    assert client.hget("brkcoin:totals", "rng:calls") == b"not a number"
    assert client.hget("brkcoin:totals", "flushes") == b"1"

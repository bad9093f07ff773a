"""The mining's metrics from a wallet reading, parsed back with prometheus-client's
own parser; and reading `brkcoin:totals` whatever it holds. No process (the
flush script that writes the totals is tested against a real Redis in
tests/functions/test_wallet.py; a real `up` is scraped in test_metrics_scrape)."""

from __future__ import annotations

import json
from collections import Counter

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from brkcoin.platform.mining_metrics import MiningCollector, Totals, Wallet, parse_totals

BOUNDS_MS = [1, 100, 125, 10000]


def _samples(wallet: Wallet | None, lost: dict[str, int] | None = None) -> dict:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MiningCollector(lambda: wallet, lambda: Counter(lost or {})))
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _raw(**fields: object) -> dict[bytes, bytes]:
    return {k.replace("__", ":").encode(): str(v).encode() for k, v in fields.items()}


def test_totals_are_read_field_by_field() -> None:
    raw = _raw(flushes=7, rng__calls=12, rng__errors=2, rng__sum_ms=1130.5, hasher__calls=10,
               redis__errors=3, **{"rng__le__1": 4, "rng__le__2": 6, "hasher__le__0": 10})
    raw[b"bounds_ms"] = json.dumps(BOUNDS_MS).encode()
    totals = parse_totals(raw)
    assert totals.flushes == 7
    assert totals.calls == {"rng": 12, "hasher": 10}
    assert totals.errors == {"rng": 2, "hasher": 0, "redis": 3}
    assert totals.bounds == (0.001, 0.1, 0.125, 10.0)
    assert totals.buckets == {"rng": [0, 4, 6, 0, 0], "hasher": [10, 0, 0, 0, 0]}
    assert totals.seconds == {"rng": 1.1305, "hasher": 0.0}


def test_what_is_not_a_count_is_left_out_never_raised() -> None:
    raw = {b"flushes": b"many", b"rng:calls": b"-4", b"hasher:calls": b"nan",
           b"rng:sum_ms": b"inf", b"\xff:calls": b"1", b"bounds_ms": b"[3, 2, 1]"}
    totals = parse_totals(raw)
    assert totals.flushes == 0 and totals.calls == {"rng": 0, "hasher": 0}
    assert totals.bounds == () and totals.buckets == {}  # not ascending: no histogram
    for bounds in (b"{}", b"[]", b'["1"]', b"[true, 2]", b"not json"):
        assert parse_totals({b"bounds_ms": bounds}).bounds == ()


def test_the_wallet_and_its_totals_are_exposed_as_counters_and_a_histogram() -> None:
    raw = _raw(flushes=7, rng__calls=12, rng__errors=2, rng__sum_ms=1130.5, hasher__calls=10,
               hasher__sum_ms=20, redis__errors=3,
               **{"rng__le__1": 4, "rng__le__2": 6, "hasher__le__0": 10})
    raw[b"bounds_ms"] = json.dumps(BOUNDS_MS).encode()
    got = _samples(Wallet(hashes=1234, coins=77, now=0.0, totals=parse_totals(raw)),
                   {"hashes": 5, "in_doubt": 1})
    rng, hasher = (("upstream", "rng"),), (("upstream", "hasher"),)
    assert got[("brkcoin_wallet_up", ())] == 1
    assert got[("brkcoin_hashes_total", ())] == 1234 and got[("brkcoin_coins_total", ())] == 77
    assert got[("brkcoin_flushes_total", ())] == 7
    assert got[("brkcoin_upstream_calls_total", rng)] == 12
    assert got[("brkcoin_upstream_errors_total", rng)] == 2
    assert got[("brkcoin_upstream_errors_total", (("upstream", "redis"),))] == 3
    bucket = "brkcoin_upstream_duration_seconds_bucket"
    assert [got[(bucket, (("le", le), *rng))] for le in ("0.001", "0.1", "0.125", "10.0", "+Inf")
            ] == [0, 4, 10, 10, 10]  # cumulative, as Prometheus wants
    assert got[("brkcoin_upstream_duration_seconds_count", rng)] == 10  # timed calls only
    assert got[("brkcoin_upstream_duration_seconds_sum", rng)] == 1.1305
    assert got[(bucket, (("le", "0.001"), *hasher))] == 10
    assert got[("brkcoin_unrecorded_hashes_total", ())] == 5
    assert got[("brkcoin_unrecorded_coins_total", ())] == 0
    assert got[("brkcoin_in_doubt_flushes_total", ())] == 1


def test_without_a_reading_only_the_wallet_being_down_and_the_losses_are_said() -> None:
    got = _samples(None, {"coins": 2})
    assert got == {("brkcoin_wallet_up", ()): 0, ("brkcoin_unrecorded_hashes_total", ()): 0,
                   ("brkcoin_unrecorded_coins_total", ()): 2,
                   ("brkcoin_in_doubt_flushes_total", ()): 0}
    # A totals key of another type: the counters stand, the totals are left out.
    got = _samples(Wallet(hashes=3, coins=0, now=0.0, totals=None))
    assert got[("brkcoin_hashes_total", ())] == 3
    assert not any(name.startswith("brkcoin_upstream") for name, _ in got)
    # Totals written before the bounds were: calls and errors, no histogram.
    got = _samples(Wallet(hashes=3, coins=0, now=0.0, totals=Totals(
        calls={"rng": 1, "hasher": 0}, errors={"rng": 0, "hasher": 0, "redis": 0})))
    assert got[("brkcoin_upstream_calls_total", (("upstream", "rng"),))] == 1
    assert not any(name.startswith("brkcoin_upstream_duration") for name, _ in got)


def test_the_wallet_is_read_with_its_totals_bounded(redis_server) -> None:
    """Against a real Redis: the totals as the worker keeps them are read; a totals
    key of another type, or stuffed far past what the worker writes, is not (the
    counters still are)."""
    import asyncio

    import redis.asyncio

    from brkcoin.platform.mining_metrics import MAX_FIELDS, TOTALS, read

    async def reading() -> Wallet:
        client = redis.asyncio.Redis.from_url(redis_server.url)
        try:
            return await read(client)
        finally:
            await client.aclose()

    plain = redis_server.client()
    plain.set("hashes", 42)
    plain.hset(TOTALS, mapping={"flushes": 3, "rng:calls": 9})
    got = asyncio.run(reading())
    assert (got.hashes, got.totals.flushes, got.totals.calls["rng"]) == (42, 3, 9)
    plain.hset(TOTALS, mapping={f"junk:{n}": 1 for n in range(MAX_FIELDS)})
    got = asyncio.run(reading())
    assert got.hashes == 42 and got.totals is None
    plain.delete(TOTALS)
    plain.set(TOTALS, "x")
    assert asyncio.run(reading()).totals is None

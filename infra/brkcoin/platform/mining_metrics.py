"""The mining's figures for Prometheus, served by the platform beside its own.

What every worker instance flushed adds up in the wallet's `brkcoin:totals`
hash, written by the flush script itself (so exactly once, like the counts; see
functions/worker/wallet.py). The platform reads it with the DockerCoins counters
(`hashes`, `HLEN wallet`) at each scrape (1 s at most), so a sample is the
wallet at its scrape's time; the beats read only the counters, for the status
line. No single worker instance could speak for the others, and each one lives
for an invocation; the wallet outlives them all.

What never reached Redis cannot be counted there: the unrecorded hashes and coins
and the flushes left in doubt come from the worker's answers, as the scheduler
hears them (on Cloud Scheduler, from the worker's log lines instead).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import redis
import redis.asyncio
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from brkcoin import wallet

TOTALS = "brkcoin:totals"
UPSTREAMS = ("rng", "hasher")


@dataclass(frozen=True)
class Totals:
    """brkcoin:totals, read: per upstream, calls, errors, and the timed calls'
    latency as per-bucket counts (the last past every bound) with their sum."""

    flushes: int = 0
    calls: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # rng, hasher, redis
    bounds: tuple[float, ...] = ()  # seconds, ascending
    buckets: dict[str, list[int]] = field(default_factory=dict)  # len(bounds) + 1 each
    seconds: dict[str, float] = field(default_factory=dict)


def _number(raw: bytes | str | None) -> float | None:
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) and value >= 0 else None


def _bounds(raw: bytes | str | None) -> tuple[float, ...]:
    """The latency buckets' bounds (ms, as the worker writes them) in seconds; ()
    for anything but an ascending list of numbers."""
    try:
        bounds = json.loads(raw) if raw is not None else []
    except ValueError:
        return ()
    if not (isinstance(bounds, list) and bounds
            and all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds)
            and all(a < b for a, b in zip(bounds, bounds[1:], strict=False))):
        return ()
    return tuple(round(b / 1000, 6) for b in bounds)


def parse_totals(raw: Mapping[bytes, bytes]) -> Totals:
    """Totals from the hash's fields; a field that is not a count is left out."""
    fields = {k.decode(errors="replace"): v for k, v in raw.items()}

    def count(name: str) -> int:
        value = _number(fields.get(name))
        return int(value) if value is not None else 0

    bounds = _bounds(fields.get("bounds_ms"))
    buckets = {u: [count(f"{u}:le:{i}") for i in range(len(bounds) + 1)]
               for u in UPSTREAMS} if bounds else {}
    return Totals(
        flushes=count("flushes"),
        calls={u: count(f"{u}:calls") for u in UPSTREAMS},
        errors={u: count(f"{u}:errors") for u in (*UPSTREAMS, "redis")},
        bounds=bounds, buckets=buckets,
        seconds={u: (_number(fields.get(f"{u}:sum_ms")) or 0.0) / 1000 for u in UPSTREAMS},
    )


@dataclass(frozen=True)
class Wallet:
    """One read of the wallet: the DockerCoins counters and the totals (None when
    the key holds something else)."""

    hashes: int
    coins: int
    now: float
    totals: Totals | None


MAX_FIELDS = 1000  # the worker writes about 100; a stuffed hash is not read at all
# HGETALL only when the hash is the size the worker keeps: copying a huge one
# would cost Redis (and each scrape) as much as it holds. pcall: a wrong type
# answers its WRONGTYPE error.
TOTALS_READ = """
local n = redis.pcall('HLEN', KEYS[1])
if type(n) ~= 'number' then return n end
if n > tonumber(ARGV[1]) then return redis.error_reply('TOOBIG ' .. n .. ' fields') end
return redis.call('HGETALL', KEYS[1])
"""


async def read(client: redis.asyncio.Redis) -> Wallet:
    """The wallet: its counters as wallet.read_async reads them (an error there
    raises), then the totals, bounded; a totals key of another type, or far too
    big, costs the totals only."""
    counters = await wallet.read_async(client)
    try:
        flat = await client.eval(TOTALS_READ, 1, TOTALS, MAX_FIELDS)
    except redis.ResponseError:
        totals = None
    else:
        totals = parse_totals(dict(zip(flat[::2], flat[1::2], strict=True)))
    return Wallet(counters["hashes"], counters["coins"], counters["now"], totals)


def _histogram(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    cumulative, total = [], 0
    for bound, n in zip((*bounds, math.inf), counts, strict=True):
        total += n
        cumulative.append(("+Inf" if bound == math.inf else repr(bound), float(total)))
    return cumulative


class MiningCollector(Collector):
    """The latest wallet reading (None: Redis did not answer) and the scheduler's
    count of what never reached it, at each scrape."""

    def __init__(self, wallet: Callable[[], Wallet | None],
                 lost: Callable[[], Mapping[str, int]]) -> None:
        self.wallet, self.lost = wallet, lost

    def collect(self) -> Iterator[Metric]:
        reading = self.wallet()
        up = GaugeMetricFamily("brkcoin_wallet_up",
                               "1 when the platform's last read of the wallet (Redis) worked")
        up.add_metric([], float(reading is not None))
        yield up
        lost = self.lost()
        for name, key, text in (
                ("brkcoin_unrecorded_hashes", "hashes",
                 "Hashes an invocation counted and could not record (it answered 503)"),
                ("brkcoin_unrecorded_coins", "coins",
                 "Coins an invocation found and could not record (it answered 503)"),
                ("brkcoin_in_doubt_flushes", "in_doubt",
                 "Flushes sent without an answer at an invocation's end: they may "
                 "have landed")):
            family = CounterMetricFamily(name, text)
            family.add_metric([], lost.get(key, 0))
            yield family
        if reading is None:
            return
        yield CounterMetricFamily("brkcoin_hashes", "Hashes mined: the wallet's counter",
                                  value=reading.hashes)
        yield CounterMetricFamily("brkcoin_coins", "Coins in the wallet", value=reading.coins)
        if reading.totals is not None:
            yield from self._totals(reading.totals)

    def _totals(self, totals: Totals) -> Iterator[Metric]:
        yield CounterMetricFamily("brkcoin_flushes", "Flushes recorded in the wallet",
                                  value=totals.flushes)
        label = ["upstream"]
        calls = CounterMetricFamily("brkcoin_upstream_calls", "The worker's calls to rng "
                                    "and hasher, errors included", labels=label)
        errors = CounterMetricFamily("brkcoin_upstream_errors", "The worker's failed calls "
                                     "(and redis: flushes not confirmed)", labels=label)
        duration = HistogramMetricFamily(
            "brkcoin_upstream_duration_seconds", "The worker's answered calls, as it timed "
            "them: the front door's line included", labels=label)
        for name in UPSTREAMS:
            calls.add_metric([name], totals.calls[name])
            if totals.bounds:
                duration.add_metric([name], _histogram(totals.bounds, totals.buckets[name]),
                                    totals.seconds[name])
        for name, n in totals.errors.items():
            errors.add_metric([name], n)
        yield from (calls, errors, duration)

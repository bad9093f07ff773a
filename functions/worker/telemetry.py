"""What the worker saw of rng and hasher between two flushes: calls, errors and
latency, recorded with each flush so the web UI can show per-function throughput
and latency (the DockerCoins lesson's bottleneck) without `httping`.

Latency goes into fixed buckets rather than a list of samples: buckets of many
invocations add up, and the p50/p95 of the sum is the p50/p95 of all their calls.
"""

from __future__ import annotations

import bisect
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field

# Upper bounds of the latency buckets, in ms (the R10 series: ten a decade, each
# 25 % above the last, so a percentile read off them is at most 25 % high);
# one more bucket holds the rest.
BUCKETS_MS = tuple(round(m * 10**e, 2) for e in range(4)
                   for m in (1, 1.25, 1.6, 2, 2.5, 3.15, 4, 5, 6.3, 8)) + (10000,)
INSTANCE = f"{socket.gethostname()}:{os.getpid()}"  # one worker instance (process)


@dataclass
class Calls:
    """One upstream's calls in an interval."""

    calls: int = 0
    errors: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS_MS) + 1))
    sum_ms: float = 0.0  # of the timed calls: a histogram's sum, for a mean

    def add(self, seconds: float, ok: bool) -> None:
        self.calls += 1
        if ok:
            self.buckets[bisect.bisect_left(BUCKETS_MS, seconds * 1000)] += 1
            self.sum_ms += seconds * 1000
        else:
            self.errors += 1

    def as_json(self) -> dict[str, object]:
        return {"calls": self.calls, "errors": self.errors, "buckets": self.buckets,
                "sum_ms": round(self.sum_ms, 3),
                "p50_ms": percentile(self.buckets, 0.50),
                "p95_ms": percentile(self.buckets, 0.95)}


def percentile(buckets: list[int], share: float) -> float | None:
    """The bucket bound under which `share` of the timed calls fall (None: no call;
    the last bound stands for anything slower)."""
    total = sum(buckets)
    if not total:
        return None
    seen = 0
    for i, count in enumerate(buckets):
        seen += count
        if seen >= share * total:
            return float(BUCKETS_MS[min(i, len(BUCKETS_MS) - 1)])
    raise AssertionError("unreachable")


class Telemetry:
    """One invocation's view of its upstreams, taken (and reset) with each flush."""

    def __init__(self, loops: int, batch: int) -> None:
        self.invocation = uuid.uuid4().hex[:12]
        self.loops, self.batch = loops, batch
        self.upstreams = {"rng": Calls(), "hasher": Calls()}
        self.hashes = 0
        self.redis_errors = 0  # flushes Redis did not confirm, told by the next that lands
        self.since = time.monotonic()

    def call(self, upstream: str, seconds: float, ok: bool) -> None:
        self.upstreams[upstream].add(seconds, ok)

    def has_news(self) -> bool:
        return bool(self.redis_errors) or any(calls.calls for calls in self.upstreams.values())

    def take(self, flush: str) -> str:
        """The interval since the last take as one JSON line, then start anew.
        `flush` (the flush's marker) makes every line unique."""
        now = time.monotonic()
        entry = {
            "flush": flush, "instance": INSTANCE, "invocation": self.invocation,
            "loops": self.loops, "batch": self.batch, "interval": round(now - self.since, 3),
            "hashes": self.hashes, "bounds_ms": BUCKETS_MS,
            **{name: calls.as_json() for name, calls in self.upstreams.items()},
            "redis": {"errors": self.redis_errors},
        }
        self.upstreams = {name: Calls() for name in self.upstreams}
        self.hashes, self.redis_errors, self.since = 0, 0, now
        return json.dumps(entry, separators=(",", ":"))

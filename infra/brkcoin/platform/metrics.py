"""The platform's metrics, in Prometheus' text format, written by prometheus-client.

Served on a port of its own (`brkcoin up --metrics-port`, 9464 by default: the
OpenTelemetry Prometheus exporter's), apart from the functions' traffic, as
Knative's autoscaler and activator serve theirs; on loopback, as everything
local is. The figures are read from the platform's state when Prometheus
scrapes: the request path pays only the door's counters.

Names follow OpenTelemetry's FaaS semantic conventions where one fits
(faas.invoke_duration, faas.init_duration, faas.coldstarts, faas.invocations,
faas.errors, faas.timeouts, with the function as `faas_name`); the platform's
own figures go under `brkcoin_`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from brkcoin.platform.door import DURATION_BUCKETS

if TYPE_CHECKING:
    from brkcoin.platform.supervisor import Platform

MAX_HEAD = 8 * 1024  # a scrape's request head is a few hundred bytes
HEAD_TIMEOUT = 5.0
REFRESH_TIMEOUT = 1.0  # a wallet that does not answer leaves the last reading


def histogram(counts: Sequence[int]) -> list[tuple[str, float]]:
    """Per-bucket counts (the last one past every bound) as Prometheus' cumulative
    `le` buckets, +Inf last."""
    buckets, total = [], 0
    for bound, count in zip((*DURATION_BUCKETS, float("inf")), counts, strict=True):
        total += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
    return buckets


class PlatformCollector(Collector):
    """Every function's figures, read from the platform at each scrape."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    def collect(self) -> Iterator[Metric]:
        now = time.monotonic()
        label = ["faas_name"]
        invoke = HistogramMetricFamily(
            "faas_invoke_duration_seconds", "Answered requests' time on an instance "
            "(OpenTelemetry faas.invoke_duration)", labels=label)
        init = HistogramMetricFamily(
            "faas_init_duration_seconds", "Instance starts, from the process's start to its "
            "first ready answer (faas.init_duration)", labels=label)
        invocations = CounterMetricFamily(
            "faas_invocations", "Requests answered below 400 (faas.invocations)", labels=label)
        errors = CounterMetricFamily(
            "faas_errors", "Requests answered 500 or above, the door's 502 and 504 included "
            "(faas.errors)", labels=label)
        timeouts = CounterMetricFamily(
            "faas_timeouts", "Requests the door ended at the function's timeout "
            "(faas.timeouts)", labels=label)
        coldstarts = CounterMetricFamily(
            "faas_coldstarts", "Instance starts: each one a cold start (faas.coldstarts)",
            labels=label)
        requests = CounterMetricFamily(
            "brkcoin_requests", "Requests by their final status: the instance's, or the "
            "door's own answer", labels=["faas_name", "code"])
        cold_requests = CounterMetricFamily(
            "brkcoin_cold_start_requests", "Requests that waited in line for an instance "
            "to start", labels=label)
        throttled = CounterMetricFamily(
            "brkcoin_throttled_requests", "Requests answered 429: waited past the bound, or "
            "the line was full", labels=label)
        restarts = CounterMetricFamily(
            "brkcoin_restarts", "Instances restarted after they died", labels=label)
        billed = CounterMetricFamily(
            "brkcoin_instance_seconds", "Every instance's life, summed: what Cloud Run bills",
            labels=label)
        in_flight = GaugeMetricFamily(
            "brkcoin_requests_in_flight", "Requests on an instance now", labels=label)
        queued = GaugeMetricFamily(
            "brkcoin_requests_queued", "Requests waiting in the door's line now", labels=label)
        instances = GaugeMetricFamily(
            "brkcoin_instances", "Instances ready to serve", labels=label)
        desired = GaugeMetricFamily(
            "brkcoin_instances_desired", "Instances the autoscaler (or a human) wants",
            labels=label)
        panic = GaugeMetricFamily(
            "brkcoin_autoscaler_panic", "1 while the autoscaler is in panic mode", labels=label)
        autoscaled = GaugeMetricFamily(
            "brkcoin_autoscaled", "1 when the autoscaler sets the count, 0 when pinned",
            labels=label)
        for name, service in self.platform.services.items():
            rules, each = service.door.rules, [name]
            invoke.add_metric(each, histogram(rules.durations), rules.duration_sum)
            init.add_metric(each, histogram(service.init_durations), service.init_sum)
            codes = rules.codes
            invocations.add_metric(each, sum(n for code, n in codes.items() if code < 400))
            errors.add_metric(each, sum(n for code, n in codes.items() if code >= 500))
            timeouts.add_metric(each, codes[504])
            coldstarts.add_metric(each, service.started_count)
            for code, n in sorted(codes.items()):
                requests.add_metric([name, str(code)], n)
            cold_requests.add_metric(each, rules.cold_requests)
            throttled.add_metric(each, rules.throttled)
            restarts.add_metric(each, service.restarts)
            billed.add_metric(each, service.instance_seconds(now))
            in_flight.add_metric(each, rules.in_flight)
            queued.add_metric(each, rules.queued)
            instances.add_metric(each, service.ready)
            desired.add_metric(each, service.wanted)
            panic.add_metric(each, float(service.panic))
            autoscaled.add_metric(each, float(not service.pinned))
        yield from (invoke, init, invocations, errors, timeouts, coldstarts, requests,
                    cold_requests, throttled, restarts, billed, in_flight, queued, instances,
                    desired, panic, autoscaled)
        redis_restarts = CounterMetricFamily("brkcoin_redis_restarts",
                                             "Restarts of the embedded Redis")
        redis_restarts.add_metric([], self.platform.redis_restarts)
        yield redis_restarts


class MetricsServer:
    """GET /metrics, on the platform's event loop: a scrape, then the connection closes."""

    def __init__(self, platform: Platform) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(PlatformCollector(platform))
        self.server: asyncio.Server | None = None
        # Reads made fresh for each scrape (the wallet's counters), each bounded:
        # a figure read a beat earlier would lag its scrape's time.
        self.before_scrape: list[Callable[[], Awaitable[None]]] = []

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD,
                                                 reuse_address=True)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(HEAD_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
            path = target.split(b"?", 1)[0]
            if method not in (b"GET", b"HEAD"):
                status, kind, body = 405, "application/json", _json("use GET /metrics")
            elif path != b"/metrics":
                status, kind, body = 404, "application/json", _json("the metrics are at /metrics")
            else:
                # The classic text format (0.0.4): every Prometheus reads it, Debian's
                # 2.42 included; our names need none of the newer format's quoting.
                for refresh in self.before_scrape:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(REFRESH_TIMEOUT):
                            await refresh()
                status, kind, body = 200, CONTENT_TYPE_PLAIN_0_0_4, self.exposition()
        except (TimeoutError, asyncio.LimitOverrunError, asyncio.IncompleteReadError,
                ValueError, ConnectionError):
            status, kind, body = 400, "application/json", _json(
                f"not an HTTP request head of at most {MAX_HEAD} bytes within {HEAD_TIMEOUT:g} s")
            method = b"GET"
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found",
                  405: "Method Not Allowed"}[status]
        try:
            writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                         + (b"" if method == b"HEAD" else body))
            async with asyncio.timeout(HEAD_TIMEOUT):  # a client that never reads holds nothing
                await writer.drain()
        except (ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()


def _json(message: str) -> bytes:
    return json.dumps({"error": message}).encode()

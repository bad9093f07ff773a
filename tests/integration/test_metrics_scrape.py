"""`brkcoin up`'s metrics, scraped as Prometheus scrapes them: real processes, a
real HTTP GET, prometheus-client's own parser. (A real Prometheus server against
the shipped scrape config: test_prometheus.py.)"""

from __future__ import annotations

import socket
import time

import requests
from prometheus_client.parser import text_string_to_metric_families


def _scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    answer = requests.get(url, timeout=5)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(answer.text):
        for s in family.samples:
            found.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return found


def test_up_serves_the_platforms_metrics_on_a_port_of_its_own(up) -> None:
    stack = up()
    stack.wait_for("brkcoin is up")
    url = f"http://127.0.0.1:{stack.ports['metrics']}/metrics"
    assert url in stack.output  # it says where
    stack.wait_for_hashes(10)
    got = _scrape(url)
    rng = (("faas_name", "rng"),)
    calls = got["faas_invocations_total"][rng]
    assert calls >= 10 and got["brkcoin_requests_total"][(("code", "200"), *rng)] == calls
    # The demo's 0.1 s latency, resolved: nearly every call is between 0.1 and 0.125 s.
    bucket = got["faas_invoke_duration_seconds_bucket"]
    assert bucket[(*rng, ("le", "0.1"))] <= 0.1 * calls
    assert bucket[(*rng, ("le", "0.125"))] >= 0.9 * calls
    assert got["faas_coldstarts_total"][rng] == 1 and got["brkcoin_instances"][rng] == 1
    assert got["faas_init_duration_seconds_count"][rng] == 1
    assert got["brkcoin_instance_seconds_total"][rng] > 0
    worker = (("faas_name", "worker"),)
    assert got["brkcoin_requests_in_flight"][worker] in (0, 1, 2)  # one a tick, overlapping
    assert got["brkcoin_requests_total"][(("code", "200"), *worker)] >= 1
    # The mining, from the wallet every worker instance flushed into.
    hashes = int(stack.redis().get("hashes"))
    assert got["brkcoin_wallet_up"][()] == 1
    assert hashes - 20 <= got["brkcoin_hashes_total"][()] <= hashes  # read at the scrape
    assert got["brkcoin_flushes_total"][()] >= 1
    up_rng = (("upstream", "rng"),)
    timed = got["brkcoin_upstream_duration_seconds_count"][up_rng]
    assert got["brkcoin_upstream_calls_total"][up_rng] >= timed >= 5  # a flush behind
    assert got["brkcoin_upstream_errors_total"][(("upstream", "redis"),)] == 0
    # The worker's view: the door's time included, so at or above the instance's 0.1 s.
    seen = got["brkcoin_upstream_duration_seconds_bucket"]
    assert seen[(("le", "0.1"), *up_rng)] <= 0.1 * timed
    assert got["brkcoin_upstream_duration_seconds_sum"][up_rng] >= 0.1 * timed
    give_up = time.monotonic() + 5  # live, scrape after scrape
    while _scrape(url)["faas_invocations_total"][rng] <= calls:
        assert time.monotonic() < give_up
        time.sleep(0.2)

    base = f"http://127.0.0.1:{stack.ports['metrics']}"
    assert requests.get(base + "/other", timeout=5).status_code == 404
    refused = requests.post(base + "/metrics", timeout=5)
    assert refused.status_code == 405 and "GET /metrics" in refused.json()["error"]
    with socket.create_connection(("127.0.0.1", stack.ports["metrics"]), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 100_000)  # a head far too big
        assert sock.recv(100).startswith(b"HTTP/1.1 400 ")

"""Mining through real functions-framework processes and a real redis-server."""

from __future__ import annotations

import hashlib
import http.client
import json
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import requests

from support import assert_wallet_holds_only_true_coins, mine


def test_counter_equals_the_invocations_reported_hashes(mining_stack):
    url = mining_stack["worker"].url
    runs = [
        {"seconds": 2, "concurrency": 1, "batch": 1},
        {"seconds": 2, "concurrency": 4, "batch": 1},
        {"seconds": 2, "concurrency": 2, "batch": 500},
    ]
    with ThreadPoolExecutor(len(runs)) as pool:
        summaries = list(pool.map(lambda r: mine(url, **r), runs))
    client = mining_stack["redis"].client()
    assert all(s["hashes"] > 0 for s in summaries)
    assert int(client.get("hashes")) == sum(s["hashes"] for s in summaries)
    wallet = assert_wallet_holds_only_true_coins(client)
    assert len(wallet) == sum(s["new_coins"] for s in summaries)
    # 1 digest in 16 starts with "0": the coin count is within a wide binomial margin
    hashes = sum(s["hashes"] for s in summaries)
    assert hashes / 16 * 0.7 < sum(s["coins"] for s in summaries) < hashes / 16 * 1.3
    recent = [json.loads(e) for e in client.lrange("coins:recent", 0, -1)]
    assert 0 < len(recent) <= 100
    assert all(e["digest"].encode() in wallet for e in recent)


def test_counter_is_live_during_an_invocation(mining_stack):
    client = mining_stack["redis"].client()
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(mine, mining_stack["worker"].url, seconds=3)
        time.sleep(1.8)
        midway = int(client.get("hashes") or 0)
        summary = running.result()
    assert 0 < midway < summary["hashes"]


def test_dockercoins_original_worker_protocol(mining_stack):
    """The original worker's calls, one for one: plain requests without a session,
    GET rng/32, POST hasher with an octet-stream body, INCRBY hashes, HSET wallet."""
    client = mining_stack["redis"].client()
    rng, hasher = mining_stack["rng"].url, mining_stack["hasher"].url
    done = 0
    for _ in range(64):
        random_bytes = requests.get(f"{rng}/32", timeout=5).content
        hex_hash = requests.post(
            f"{hasher}/", data=random_bytes,
            headers={"Content-Type": "application/octet-stream"}, timeout=5,
        ).text
        assert hex_hash == hashlib.sha256(random_bytes).hexdigest()
        if hex_hash.startswith("0"):
            client.hset("wallet", hex_hash, random_bytes)
        done += 1
    client.incrby("hashes", done)
    # and what the original web UI reads
    assert int(client.get("hashes")) == 64
    assert client.hlen("wallet") == len(assert_wallet_holds_only_true_coins(client))


def test_hasher_refuses_an_oversized_chunked_body(start_function):
    hasher = urlsplit(start_function("hasher").url)
    conn = http.client.HTTPConnection(hasher.hostname, hasher.port, timeout=10)
    conn.putrequest("POST", "/")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    try:
        for _ in range(40):  # 40 x 32 KiB > 1 MiB, with no Content-Length
            block = b"z" * 32768
            conn.send(b"%x\r\n%s\r\n" % (len(block), block))
        conn.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may answer and close before reading it all
    response = conn.getresponse()
    assert response.status == 413
    assert "limit" in json.loads(response.read())["error"]


def test_worker_event_mines_on_a_pingsource_cloudevent(redis_server, mining_stack,
                                                       start_function):
    event_worker = start_function("worker_event", mining_stack["env"])
    headers = {  # binary-mode CloudEvent as Knative's PingSource sends it
        "ce-specversion": "1.0",
        "ce-id": "b2f1",
        "ce-source": "/apis/v1/namespaces/brkcoin/pingsources/mine",
        "ce-type": "dev.knative.sources.ping",
        "Content-Type": "application/json",
    }
    response = requests.post(event_worker.url, headers=headers,
                             data=json.dumps({"seconds": 1, "concurrency": 2}), timeout=30)
    assert response.status_code == 200
    assert int(redis_server.client().get("hashes")) > 0

"""Faults survived with nothing counted lost: a function down, Redis down, restarts."""

from __future__ import annotations

import http.server
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from brkcoin.platform.processes import free_port
from brkcoin.stack import Stack
from support import assert_wallet_holds_only_true_coins, mine, serve


def test_hasher_down_mid_run_is_counted_and_recovered(mining_stack):
    hasher, client = mining_stack["hasher"], mining_stack["redis"].client()
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(mine, mining_stack["worker"].url, seconds=10, concurrency=2)
        time.sleep(1.5)
        hasher.stop()
        time.sleep(1.5)
        while_down = int(client.get("hashes"))
        time.sleep(0.5)
        assert int(client.get("hashes")) - while_down < 5  # nothing hashed while down
        hasher.start().wait_ready()
        back = int(client.get("hashes"))
        summary = running.result()
    assert summary["errors"]["hasher"] > 0, summary
    assert summary["hashes"] > back + 100, summary  # it went on mining once hasher was back
    assert int(client.get("hashes")) == summary["hashes"]


def test_redis_down_mid_run_loses_no_counted_hash(mining_stack):
    redis_server = mining_stack["redis"]
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(mine, mining_stack["worker"].url, seconds=6, concurrency=2)
        time.sleep(1.5)
        redis_server.stop()  # graceful: the AOF holds what was acknowledged
        time.sleep(2.5)
        redis_server.start()
        summary = running.result()
    client = redis_server.client()
    assert summary["errors"]["redis"] > 0
    assert int(client.get("hashes")) == summary["hashes"]
    assert client.hlen("wallet") == summary["new_coins"]
    assert_wallet_holds_only_true_coins(client)


def test_redis_down_at_the_end_answers_503_with_the_unrecorded_counts(
    redis_server, start_function
):
    rng, hasher = start_function("rng"), start_function("hasher")
    worker = start_function("worker", {
        "REDIS_URL": redis_server.url, "RNG_URL": rng.url, "HASHER_URL": hasher.url,
        "WORKER_FLUSH_GRACE": "1",
    })
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(
            requests.post, worker.url, json={"seconds": 3}, timeout=60
        )
        time.sleep(1.5)
        redis_server.stop()
        response = running.result()
    assert response.status_code == 503
    body = response.json()
    assert "redis unreachable" in body["error"]
    unrecorded = body["unrecorded"]["hashes"]
    assert unrecorded > 0
    redis_server.start()
    client = redis_server.client()
    recorded = int(client.get("hashes") or 0)
    # A flush sent as Redis went down is in doubt; its marker says whether it landed.
    doubt = body["in_doubt"]
    if doubt and not client.exists(doubt["marker"]):
        unrecorded += doubt["hashes"]
    assert recorded + unrecorded == body["hashes"]  # every hash is accounted for


def test_wallet_survives_a_stack_restart(tmp_path):
    ports = {n: free_port() for n in ("rng", "hasher", "worker")}
    env = {"RNG_DELAY": "0", "HASHER_DELAY": "0", "WORKER_DELAY": "0"}

    def stack() -> Stack:
        return Stack(tmp_path / "data", ports=ports, redis_port=free_port(), env=env,
                     names=tuple(ports))

    with stack() as first:
        summary = mine(first.urls["worker"], seconds=1.5)
        before = first.redis.client()
        hashes, wallet = int(before.get("hashes")), before.hgetall("wallet")
    assert hashes == summary["hashes"] > 0
    with stack() as second:
        after = second.redis.client()
        assert int(after.get("hashes")) == hashes
        assert after.hgetall("wallet") == wallet


def test_a_hasher_that_lies_gets_no_coin_into_the_wallet(redis_server, start_function):
    """A broken hasher swapped in (here a loopback stand-in that calls every body a
    coin) must not fill the wallet: the worker checks each coin before it records it."""

    class Liar(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            body = b"0" * 64
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    rng = start_function("rng")
    with serve(Liar) as liar:
        worker = start_function(
            "worker", {"REDIS_URL": redis_server.url, "RNG_URL": rng.url, "HASHER_URL": liar}
        )
        summary = mine(worker.url, seconds=0.5)
    assert summary["hashes"] == 0 and summary["errors"]["hasher"] > 0
    assert "wrong digest" in summary["last_errors"]["hasher"]
    assert redis_server.client().hlen("wallet") == 0

"""Every hash the worker counts is in Redis exactly once, or reported as not in it:
under keys of the wrong type, a frozen Redis, SIGTERM, and the instance's caps.
Real worker, rng, hasher and redis-server processes throughout."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from support import assert_wallet_holds_only_true_coins


@pytest.fixture
def worker_env(mining_stack) -> dict[str, str]:
    return dict(mining_stack["env"])


@pytest.mark.parametrize(
    "key, setup, message",
    [
        ("wallet", lambda r: r.set("wallet", "x"), "key wallet holds a string, not a hash"),
        ("coins:recent", lambda r: r.set("coins:recent", "x"),
         "key coins:recent holds a string, not a list"),
        ("coins:recent", lambda r: r.hset("coins:recent", "a", "b"),
         "key coins:recent holds a hash, not a list"),
        ("hashes", lambda r: r.set("hashes", "abc"), 'key hashes holds "abc", not an integer'),
        ("hashes", lambda r: r.set("hashes", "1.5"), 'key hashes holds "1.5", not an integer'),
        ("hashes", lambda r: r.rpush("hashes", "1"), "key hashes holds a list, not a string"),
    ],
)
def test_a_flush_refused_for_a_bad_key_writes_nothing(
    mining_stack, start_function, worker_env, key, setup, message
):
    client = mining_stack["redis"].client()
    setup(client)
    before = {k: client.dump(k) for k in ("hashes", "wallet", "coins:recent")}
    worker = start_function("worker", {**worker_env, "WORKER_FLUSH_GRACE": "1"})
    response = requests.post(worker.url, json={"seconds": 1.5, "batch": 10}, timeout=30)
    assert response.status_code == 503
    body = response.json()
    assert message in body["error"]
    assert body["hashes"] > 0
    assert body["unrecorded"]["hashes"] == body["hashes"]  # all of it, certainly
    assert len(body["unrecorded"]["coins"]) == body["coins"]
    assert body["in_doubt"] is None
    assert {k: client.dump(k) for k in before} == before  # Redis unchanged
    assert not client.keys("brkcoin:flush:*")


@pytest.mark.alone  # freezes Redis 1.3 s into a 3 s invocation, mid-flush: timing
def test_a_frozen_redis_leaves_exact_unrecorded_and_in_doubt_counts(mining_stack,
                                                                   start_function, worker_env):
    redis_server = mining_stack["redis"]
    assert redis_server.process is not None
    worker = start_function("worker", {**worker_env, "WORKER_FLUSH_GRACE": "3"})
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(requests.post, worker.url, json={"seconds": 3, "concurrency": 2},
                              timeout=60)
        time.sleep(1.3)
        os.kill(redis_server.process.pid, signal.SIGSTOP)  # frozen: takes bytes, answers none
        try:
            response = running.result()
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
    assert response.status_code == 503, response.text
    body = response.json()
    doubt, unrecorded = body["in_doubt"], body["unrecorded"]
    assert doubt is not None and doubt["hashes"] > 0
    client = redis_server.client()
    time.sleep(0.5)  # Redis, awake, runs what was sent to it while frozen
    assert client.exists(doubt["marker"])  # the marker settles the doubt: it landed
    assert int(client.get("hashes")) == body["hashes"] - unrecorded["hashes"]
    assert client.hlen("wallet") == body["coins"] - len(unrecorded["coins"])
    assert not set(unrecorded["coins"]) & {d.decode() for d in client.hkeys("wallet")}
    assert_wallet_holds_only_true_coins(client)


@pytest.mark.parametrize("whom", ["master", "group"])
def test_sigterm_drains_an_invocation_and_loses_nothing(mining_stack, start_function,
                                                       worker_env, whom):
    worker = start_function("worker", worker_env)
    assert worker.process is not None
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(requests.post, worker.url, json={"seconds": 60, "concurrency": 4},
                              timeout=90)
        time.sleep(2)
        signalled = time.monotonic()
        if whom == "master":  # as a container runtime signals PID 1
            os.kill(worker.process.pid, signal.SIGTERM)
        else:
            os.killpg(worker.process.pid, signal.SIGTERM)
        response = running.result()
        answered = time.monotonic() - signalled
    assert response.status_code == 200, response.text
    summary = response.json()
    assert answered < 3
    assert "SIGTERM" in summary["stopped"]
    assert summary["hashes"] > 0
    assert int(mining_stack["redis"].client().get("hashes")) == summary["hashes"]
    worker.process.wait(10)  # and then it exits


def test_the_instance_caps_its_mining_loops(mining_stack, start_function, worker_env):
    worker = start_function("worker", {**worker_env, "WORKER_MAX_LOOPS": "4"})
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(requests.post, worker.url, json={"seconds": 2, "concurrency": 3},
                            timeout=30)
        time.sleep(0.5)
        second = requests.post(worker.url, json={"seconds": 1, "concurrency": 3}, timeout=30)
        assert first.result().status_code == 200
    assert second.status_code == 429
    assert second.headers["Retry-After"] == "1"
    assert "WORKER_MAX_LOOPS" in second.json()["error"]


def test_coins_held_for_a_dead_redis_are_capped(start_function, mining_stack, worker_env):
    worker = start_function("worker", {
        **worker_env, "REDIS_URL": "redis://127.0.0.1:9/0",
        "WORKER_MAX_UNRECORDED_COINS": "20", "WORKER_FLUSH_GRACE": "0.5",
    })
    started = time.monotonic()
    response = requests.post(worker.url, json={"seconds": 30, "batch": 16}, timeout=60)
    assert time.monotonic() - started < 10  # it stopped producing what it cannot record
    assert response.status_code == 503
    body = response.json()
    assert "WORKER_MAX_UNRECORDED_COINS" in body["stopped"]
    assert 20 <= len(body["unrecorded"]["coins"]) < 20 + 16
    assert body["unrecorded"]["hashes"] == body["hashes"]

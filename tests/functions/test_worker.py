"""worker's inputs, auth and triggers, through the Functions Framework test client.

Mining itself is tested against real processes in tests/integration.
"""

import base64
import json
import socket

import pytest

DEAD = "http://127.0.0.1:9"  # discard port: nothing listens, calls fail at once


@pytest.fixture
def worker(function_client):
    return function_client("worker", RNG_URL=DEAD, HASHER_URL=DEAD, REDIS_URL="redis://127.0.0.1:9/0")


def test_get_says_hello(worker):
    assert worker.get("/").data == f"WORKER running on {socket.gethostname()}\n".encode()


@pytest.mark.parametrize(
    "body, message",
    [
        ({"seconds": 0}, "seconds must be a number above 0 and at most 900"),
        ({"seconds": 901}, "seconds must be a number above 0 and at most 900"),
        ({"seconds": "5"}, "seconds must be a number"),
        ({"concurrency": 0}, "concurrency must be an integer from 1 to 256"),
        ({"concurrency": 257}, "concurrency must be an integer from 1 to 256"),
        ({"concurrency": 2.5}, "concurrency must be an integer"),
        ({"batch": True}, "batch must be an integer from 1 to 32768"),
        ({"batch": 32769}, "batch must be an integer from 1 to 32768"),
        ({"secnods": 5}, "unknown input(s) ['secnods']"),
        ([1, 2], "body must be a JSON object"),
    ],
)
def test_bad_inputs_are_400_naming_the_problem(worker, body, message):
    response = worker.post("/", json=body)
    assert response.status_code == 400
    assert message in response.get_json()["error"]


def test_malformed_json_is_400(worker):
    response = worker.post("/", data="{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.get_json() == {"error": "body is not valid JSON"}


def test_largest_batch_is_accepted(worker):
    # 32768 units x 32 bytes is exactly the 1 MiB rng and hasher limit
    response = worker.post("/", json={"seconds": 0.1, "batch": 32768, "concurrency": 256})
    assert response.status_code in (200, 503)  # 503: the dead Redis of this fixture
    assert response.get_json()["batch"] == 32768


def test_token_required_when_set(function_client):
    worker = function_client("worker", WORKER_TOKEN="s3cret", RNG_URL=DEAD, HASHER_URL=DEAD)
    assert worker.post("/", json={"seconds": 0.1}).status_code == 401
    wrong = worker.post("/", json={"seconds": 0.1}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert "WORKER_TOKEN" in wrong.get_json()["error"]
    assert worker.get("/").status_code == 200  # the health check stays open


def test_failing_rng_is_counted_not_fatal(function_client, redis_server):
    worker = function_client("worker", RNG_URL=DEAD, HASHER_URL=DEAD, REDIS_URL=redis_server.url)
    response = worker.post("/", json={"seconds": 0.5})
    assert response.status_code == 200
    summary = response.get_json()
    assert summary["hashes"] == 0
    assert summary["errors"]["rng"] >= 1


def _cloud_event(data: object) -> dict:
    return {
        "ce-specversion": "1.0",
        "ce-id": "1",
        "ce-source": "//pubsub.googleapis.com/projects/demo/topics/mine",
        "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
        "Content-Type": "application/json",
    }, json.dumps(data)


def test_cloud_event_bad_inputs_are_400(function_client):
    worker = function_client("worker", "worker_event", RNG_URL=DEAD, HASHER_URL=DEAD)
    headers, body = _cloud_event({"seconds": -1})
    response = worker.post("/", headers=headers, data=body)
    assert response.status_code == 400
    assert "seconds must be" in response.get_json()["error"]


def test_pubsub_message_with_bad_base64_is_400(function_client):
    worker = function_client("worker", "worker_event", RNG_URL=DEAD, HASHER_URL=DEAD)
    headers, body = _cloud_event({"message": {"data": "%%%"}})
    response = worker.post("/", headers=headers, data=body)
    assert response.status_code == 400


def test_pubsub_message_inputs_are_used(function_client, redis_server):
    worker = function_client("worker", "worker_event", RNG_URL=DEAD, HASHER_URL=DEAD,
                    REDIS_URL=redis_server.url)
    inputs = base64.b64encode(json.dumps({"seconds": 0.3, "concurrency": 2}).encode()).decode()
    headers, body = _cloud_event({"message": {"data": inputs}, "subscription": "s"})
    response = worker.post("/", headers=headers, data=body)
    assert response.status_code == 200  # rng down: errors counted, not fatal


def test_cloud_event_needs_token_when_set(function_client):
    worker = function_client("worker", "worker_event", WORKER_TOKEN="s3cret", RNG_URL=DEAD)
    headers, body = _cloud_event({"seconds": 0.1})
    assert worker.post("/", headers=headers, data=body).status_code == 401


def test_a_retried_flush_counts_once(function_client, redis_server):
    """A flush whose reply was lost (Redis restarting) is retried with the same
    marker; the wallet script must not count it twice."""
    import sys

    function_client("worker", REDIS_URL=redis_server.url)
    worker = sys.modules["main"]  # the module create_app just loaded
    tally = worker.Tally()
    coin = ("0" + "a" * 63, b"r" * 32)
    tally.add(5, [coin])
    recorder = worker.Recorder(tally)
    assert recorder.flush()
    recorder.inflight = ("brkcoin:flush:lost-reply", 5, dict([coin]))
    assert recorder.flush()
    recorder.inflight = ("brkcoin:flush:lost-reply", 5, dict([coin]))  # the retry
    assert recorder.flush()
    redis = redis_server.client()
    assert int(redis.get("hashes")) == 10  # the first flush and lost-reply once
    assert redis.hget("wallet", coin[0]) == coin[1]
    assert tally.new_coins == 1

"""worker's inputs, auth and triggers, in process through the app Functions
Framework builds. Mining itself is tested against real processes in tests/integration.
"""

import base64
import json
import socket

import pytest

DEAD = "http://127.0.0.1:9"  # discard port: nothing listens, calls fail at once
DEAD_REDIS = "redis://127.0.0.1:9/0"


@pytest.fixture
def worker(function_client):
    return function_client("worker", RNG_URL=DEAD, HASHER_URL=DEAD, REDIS_URL=DEAD_REDIS)


@pytest.fixture
def worker_event(function_client):
    return function_client("worker", "worker_event", RNG_URL=DEAD, HASHER_URL=DEAD,
                           REDIS_URL=DEAD_REDIS)


def test_get_says_hello(worker):
    assert worker.get("/").content == f"WORKER running on {socket.gethostname()}\n".encode()


@pytest.mark.parametrize(
    "body, message",
    [
        ({"seconds": 0}, "seconds must be a number above 0 and at most 900"),
        ({"seconds": 901}, "seconds must be a number above 0 and at most 900"),
        ({"seconds": "5"}, "seconds must be a number"),
        ({"seconds": 10**400}, "got an integer of 401 digits"),
        ({"concurrency": 0}, "concurrency must be an integer from 1 to 1024"),
        ({"concurrency": 1025}, "concurrency must be an integer from 1 to 1024"),
        ({"concurrency": 2.5}, "concurrency must be an integer"),
        ({"batch": True}, "batch must be an integer from 1 to 32768"),
        ({"batch": 32769}, "batch must be an integer from 1 to 32768"),
        ({"batch": 10**400}, "batch must be an integer from 1 to 32768, got an integer of 401"),
        ({"concurrency": 256, "batch": 32768}, "concurrency x batch must be at most 1048576"),
        ({"secnods": 5}, "unknown input(s) ['secnods']"),
        ([1, 2], "inputs must be a JSON object"),
    ],
)
def test_bad_inputs_are_400_naming_the_problem(worker, body, message):
    response = worker.post("/", content=json.dumps(body))
    assert response.status_code == 400
    assert message in response.json()["error"]


@pytest.mark.parametrize(
    "body, message",
    [
        (b"{not json", "body is not valid JSON"),
        (b'{"seconds": NaN}', "body is not valid JSON"),
        (b'{"seconds": Infinity}', "body is not valid JSON"),
        (b"[" * 30000 + b"]" * 30000, "nested too deeply"),
        (b'{"seconds": ' + b"9" * 5000 + b"}", "body is not valid JSON"),
        (b"\xff\xfe", "body is not valid JSON"),
    ],
)
def test_malformed_json_is_400(worker, body, message):
    response = worker.post("/", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_an_infinite_number_is_400(worker):
    response = worker.post("/", content=b'{"seconds": 1e999}')  # parses as infinity
    assert response.status_code == 400
    assert "seconds must be a number above 0 and at most 900, got inf" in response.json()["error"]


def test_body_over_the_limit_is_413_unread(worker):
    response = worker.post("/", content=b" " * 70000)
    assert response.status_code == 413
    assert "limit of 65536 bytes" in response.json()["error"]
    assert response.headers["connection"] == "close"


def test_token_is_checked_before_the_body(function_client):
    worker = function_client("worker", WORKER_TOKEN="s3cret", RNG_URL=DEAD, HASHER_URL=DEAD)
    assert worker.post("/", json={"seconds": 0.1}).status_code == 401
    wrong = worker.post("/", json={"seconds": 0.1}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert "WORKER_TOKEN" in wrong.json()["error"]
    deep = worker.post("/", content=b"[" * 100000)  # would be 413; the token comes first
    assert deep.status_code == 401
    assert worker.get("/").status_code == 200  # the health check stays open


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_other_methods_are_405_json(worker, worker_event, method):
    for client in (worker, worker_event):
        response = client.request(method, "/")
        assert response.status_code == 405
        assert "POST" in response.json()["error"]


def test_failing_rng_is_counted_not_fatal(function_client, redis_server):
    worker = function_client("worker", RNG_URL=DEAD, HASHER_URL=DEAD, REDIS_URL=redis_server.url)
    response = worker.post("/", json={"seconds": 0.5})
    assert response.status_code == 200
    summary = response.json()
    assert summary["hashes"] == 0
    assert summary["errors"]["rng"] >= 1


def test_redis_unreachable_is_503_listing_nothing_in_doubt(function_client):
    worker = function_client("worker", RNG_URL=DEAD, HASHER_URL=DEAD, REDIS_URL=DEAD_REDIS,
                             WORKER_FLUSH_GRACE="0")
    response = worker.post("/", json={"seconds": 0.2})
    # nothing mined: nothing to record, so nothing is lost
    assert response.status_code == 200
    assert response.json()["hashes"] == 0


@pytest.mark.parametrize(
    "variable, value, message",
    [
        ("WORKER_DELAY", "x", "WORKER_DELAY must be a number from 0 to 60, got 'x'"),
        ("WORKER_MAX_LOOPS", "-1", "WORKER_MAX_LOOPS must be an integer"),
        ("UPSTREAM_AUTH", "magic", "UPSTREAM_AUTH must be unset or one of"),
        ("RNG_URL", "ftp://x", "RNG_URL must be an http:// or https:// URL"),
    ],
)
def test_a_bad_setting_names_its_variable(function_client, variable, value, message):
    with pytest.raises(ValueError, match=message):
        function_client("worker", **{variable: value})


def binary_event(data: object, content_type: str = "application/json") -> tuple[dict, bytes]:
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "1",
        "ce-source": "//pubsub.googleapis.com/projects/demo/topics/mine",
        "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
        "Content-Type": content_type,
    }
    return headers, json.dumps(data).encode()


def structured_event(**fields: object) -> tuple[dict, bytes]:
    event = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t", **fields}
    return {"Content-Type": "application/cloudevents+json"}, json.dumps(event).encode()


def pubsub(data: object) -> tuple[dict, bytes]:
    return binary_event({"message": {"data": data}, "subscription": "s"})


@pytest.mark.parametrize(
    "event, message",
    [
        (binary_event({"seconds": -1}), "seconds must be"),
        (pubsub("%%%"), "Pub/Sub message.data is not valid base64"),
        (pubsub(5), "Pub/Sub message.data must be a base64 string, got int"),
        (pubsub([1]), "must be a base64 string, got list"),
        (pubsub({"a": 1}), "must be a base64 string, got dict"),
        (binary_event({"message": "hi"}), "Pub/Sub message must be a JSON object"),
        (structured_event(data_base64=5), "data_base64 must be a base64 string, got int"),
        (structured_event(data_base64="!!!"), "data_base64 is not valid base64"),
        (structured_event(data={"batch": 0}), "batch must be an integer"),
        (structured_event(specversion="0.3"), "specversion must be '1.0'"),
        (structured_event(id=7), "CloudEvent attribute(s) ['id'] missing"),
        (({"Content-Type": "application/json"}, b"{}"), "not a CloudEvent"),
        (({"Content-Type": "application/cloudevents+json"}, b"[1]"), "must be a JSON object"),
    ],
)
def test_bad_cloud_events_are_400_naming_the_problem(worker_event, event, message):
    headers, body = event
    response = worker_event.post("/", headers=headers, content=body)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_pubsub_message_inputs_are_used(function_client, redis_server):
    worker = function_client("worker", "worker_event", RNG_URL=DEAD, HASHER_URL=DEAD,
                             REDIS_URL=redis_server.url)
    inputs = base64.b64encode(json.dumps({"seconds": 0.3, "concurrency": 2}).encode()).decode()
    headers, body = pubsub(inputs)
    response = worker.post("/", headers=headers, content=body)
    assert response.status_code == 200  # rng down: errors counted, not fatal
    assert response.json()["concurrency"] == 2


def test_structured_event_data_is_used(function_client, redis_server):
    worker = function_client("worker", "worker_event", RNG_URL=DEAD, HASHER_URL=DEAD,
                             REDIS_URL=redis_server.url)
    encoded = base64.b64encode(b'{"seconds": 0.2, "batch": 3}').decode()
    for event in (structured_event(data={"seconds": 0.2, "batch": 3}),
                  structured_event(data_base64=encoded)):
        headers, body = event
        response = worker.post("/", headers=headers, content=body)
        assert response.status_code == 200
        assert response.json()["batch"] == 3


def test_cloud_event_needs_token_when_set(function_client):
    worker = function_client("worker", "worker_event", WORKER_TOKEN="s3cret", RNG_URL=DEAD)
    headers, body = binary_event({"seconds": 0.1})
    assert worker.post("/", headers=headers, content=body).status_code == 401

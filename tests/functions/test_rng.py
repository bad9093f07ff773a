"""rng keeps DockerCoins' wire contract and refuses bad input with a JSON 4xx."""

import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests


def test_root_says_hello_with_hostname(function_client):
    response = function_client("rng").get("/")
    assert response.status_code == 200
    assert response.content == f"RNG running on {socket.gethostname()}\n".encode()


@pytest.mark.parametrize("n", [1, 32, 1000, 1024 * 1024])
def test_serves_exactly_n_random_bytes(function_client, n):
    response = function_client("rng").get(f"/{n}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert len(response.content) == n


def test_head_answers_the_head_of_get_without_making_the_bytes(function_client, monkeypatch):
    rng = function_client("rng")
    made: list[int] = []
    urandom = os.urandom
    monkeypatch.setattr(os, "urandom", lambda n: made.append(n) or urandom(n))
    head = rng.head("/1048576")
    assert head.status_code == 200
    assert head.headers["content-length"] == "1048576"
    assert head.headers["content-type"] == "application/octet-stream"
    assert head.content == b""
    assert 1048576 not in made
    assert len(rng.get("/1048576").content) == 1048576
    assert 1048576 in made  # the count sees a GET's bytes


def test_bytes_differ_between_calls(function_client):
    rng = function_client("rng")
    assert rng.get("/32").content != rng.get("/32").content


@pytest.mark.parametrize(
    "path",
    ["/0", "/-1", "/abc", "/1.5", "/1048577", "/99999999999999999999", "/3/4", "/%C2%B2",
     "/" + "9" * 4301],  # 4301 digits: over Python's int conversion limit
)
def test_bad_n_is_400_with_json_error(function_client, path):
    response = function_client("rng").get(path)
    assert response.status_code == 400
    assert "n must be an integer from 1 to 1048576" in response.json()["error"]


def test_limit_is_configurable(function_client):
    rng = function_client("rng", RNG_MAX_BYTES="64")
    assert rng.get("/64").status_code == 200
    assert rng.get("/65").status_code == 400


def test_other_methods_are_405_with_json(function_client):
    response = function_client("rng").post("/32")
    assert response.status_code == 405
    assert "GET" in response.json()["error"]


def test_a_get_with_a_body_is_refused_unread(function_client):
    response = function_client("rng").request("GET", "/32", content=b"x" * 100)
    assert response.status_code == 400
    assert "no request body" in response.json()["error"]
    assert response.headers["connection"] == "close"


def test_demo_delay_applies_per_request(function_client):
    rng = function_client("rng", RNG_DELAY="0.2")
    started = time.monotonic()
    rng.get("/32")
    assert time.monotonic() - started >= 0.2


def test_a_bad_setting_names_its_variable(function_client):
    with pytest.raises(ValueError, match="RNG_DELAY must be a number from 0 to 60, got 'x'"):
        function_client("rng", RNG_DELAY="x")


def test_instance_concurrency_makes_requests_take_turns(start_function):
    """INSTANCE_CONCURRENCY=1 is the original single-threaded rng: five requests
    at once are served one after the other (for platforms that do not hold
    requests at a front door themselves)."""
    rng = start_function("rng", {"RNG_DELAY": "0.2", "INSTANCE_CONCURRENCY": "1"})
    started = time.monotonic()
    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda _: requests.get(rng.url + "/8", timeout=10), range(5)))
    assert all(a.status_code == 200 for a in answers)
    assert time.monotonic() - started >= 1.0
    assert requests.get(rng.url + "/", timeout=1).status_code == 200  # health: no line

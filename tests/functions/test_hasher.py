"""hasher keeps DockerCoins' wire contract: SHA-256 hex of the raw body."""

import hashlib
import os
import socket

import pytest

# FIPS 180-2 / NIST known-answer vectors
VECTORS = [
    (b"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    (b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
    (
        b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
    ),
    (b"a" * 1_000_000, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"),
]


def test_root_says_hello_with_hostname(function_client):
    response = function_client("hasher").get("/")
    assert response.content == f"HASHER running on {socket.gethostname()}\n".encode()


@pytest.mark.parametrize("body, digest", VECTORS)
def test_known_answers(function_client, body, digest):
    response = function_client("hasher").post(
        "/", content=body, headers={"Content-Type": "application/octet-stream"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == digest


@pytest.mark.parametrize("chunk", [32, 64, 5000])
def test_batch_gives_one_digest_per_chunk_in_order(function_client, chunk):
    units = [os.urandom(chunk) for _ in range(5)]
    response = function_client("hasher").post(f"/?chunk={chunk}", content=b"".join(units))
    assert response.status_code == 200
    assert response.text.split("\n") == [hashlib.sha256(u).hexdigest() for u in units]


def test_body_over_limit_is_413(function_client):
    response = function_client("hasher").post("/", content=b"x" * (1024 * 1024 + 1))
    assert response.status_code == 413
    assert "limit of 1048576 bytes" in response.json()["error"]
    assert response.headers["connection"] == "close"


def test_body_at_limit_is_hashed(function_client):
    body = b"x" * (1024 * 1024)
    response = function_client("hasher").post("/", content=body)
    assert response.text == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize(
    "chunk", ["0", "-3", "x", "1.5", "1048577", "1", "31", "5" * 5000, "%C2%B2"]
)
def test_bad_chunk_is_400(function_client, chunk):
    response = function_client("hasher").post(f"/?chunk={chunk}", content=b"a" * 32)
    assert response.status_code == 400
    assert "chunk must be an integer from 32 to 1048576" in response.json()["error"]


def test_an_answer_is_never_much_larger_than_its_request(function_client):
    body = os.urandom(1024 * 1024)
    response = function_client("hasher").post("/?chunk=32", content=body)
    assert response.status_code == 200
    assert len(response.content) < 2.1 * len(body)


def test_body_not_multiple_of_chunk_is_400(function_client):
    response = function_client("hasher").post("/?chunk=32", content=b"a" * 33)
    assert response.status_code == 400
    assert "not a multiple of chunk=32" in response.json()["error"]


def test_wrong_method_and_path_are_json_errors(function_client):
    hasher = function_client("hasher")
    assert hasher.put("/", content=b"a").status_code == 405
    response = hasher.post("/elsewhere", content=b"a")
    assert response.status_code == 404
    assert "error" in response.json()

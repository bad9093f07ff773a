"""Helpers shared by the tests (tests/ is on sys.path through its conftest.py)."""

from __future__ import annotations

import hashlib

import requests


def mine(worker_url: str, **inputs) -> dict:
    response = requests.post(worker_url, json=inputs, timeout=inputs.get("seconds", 10) + 30)
    assert response.status_code == 200, response.text
    return response.json()


def assert_wallet_holds_only_true_coins(client) -> dict:
    wallet = client.hgetall("wallet")
    for digest, data in wallet.items():
        assert digest.startswith(b"0")
        assert len(data) == 32
        assert hashlib.sha256(data).hexdigest().encode() == digest
    return wallet

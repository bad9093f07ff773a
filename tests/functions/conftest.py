"""Contract tests load each function with functions_framework.create_app, as the
Functions Framework does, and talk to it through Flask's test client."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import functions_framework
import pytest
from flask.testing import FlaskClient

from brkcoin.layout import FUNCTIONS


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FlaskClient]:
    """client(name, **env): a test client of a freshly loaded function module."""

    def make(name: str, target: str | None = None, **env: str) -> FlaskClient:
        for key, value in {"RNG_DELAY": "0", "HASHER_DELAY": "0", **env}.items():
            monkeypatch.setenv(key, value)
        importlib.invalidate_caches()
        app = functions_framework.create_app(target or name, str(FUNCTIONS[name].source))
        return app.test_client()

    return make

"""HTTP and polling helpers of the container tests, and what podman shows of a
running container."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import engine
import pytest

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Answer:
    status: int
    body: bytes
    content_type: str

    def json(self) -> dict[str, Any]:
        answer: dict[str, Any] = json.loads(self.body)
        return answer

    @property
    def text(self) -> str:
        return self.body.decode()


def http(url: str, body: bytes | None = None, timeout: float = 30,
         content_type: str = "application/json") -> Answer:
    """One request; an HTTP error status is an answer, not an exception."""
    request = urllib.request.Request(url, data=body, method="GET" if body is None else "POST")
    if body is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Answer(response.status, response.read(),
                          response.headers.get("Content-Type", ""))
    except urllib.error.HTTPError as error:
        return Answer(error.code, error.read(), error.headers.get("Content-Type", ""))


def wait_for(what: str, probe: Callable[[], T], timeout: float, every: float = 0.5) -> T:
    """Poll `probe` until it returns something true; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if last:
                return last
        except (OSError, ValueError) as error:  # refused, reset, not JSON yet
            last = error
        time.sleep(every)
    pytest.fail(f"{what}: not within {timeout:.0f} s (last: {last!r})")


def wait_answering(url: str, timeout: float) -> None:
    wait_for(f"GET {url} answering 200", lambda: http(url, timeout=5).status == 200, timeout)


def proc_status(container: str) -> dict[str, str]:
    """/proc/1/status inside the container (its main process), as a dict."""
    text = engine.podman("exec", container, "cat", "/proc/1/status").stdout
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def run_healthcheck(container: str) -> int:
    """The exit code of `podman healthcheck run`: 0 healthy, else unhealthy."""
    return engine.podman("healthcheck", "run", container, check=False, timeout=30).returncode


def inspect(container: str, template: str) -> str:
    return engine.podman("inspect", "--format", template, container).stdout.strip()

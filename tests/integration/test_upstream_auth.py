"""The worker calls private Cloud Run rng/hasher with Google ID tokens.

Cloud Run's IAM front door and the metadata server cannot run here, so two small
loopback stand-ins play them (and only them): the metadata server issues a token
per audience, the front door admits a request only with the token issued for its
own URL and forwards it to the real rng or hasher process.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from urllib.parse import parse_qs, urlsplit

import pytest

from support import mine, serve


def _jwt(audience: str) -> str:
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    claims = {"aud": audience, "exp": int(time.time()) + 3600}
    return f"{part({'alg': 'RS256'})}.{part(claims)}.signature"


class Metadata(http.server.BaseHTTPRequestHandler):
    issued: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        if not url.path.endswith("/identity") or self.headers["Metadata-Flavor"] != "Google":
            self.send_error(403)
            return
        audience = parse_qs(url.query)["audience"][0]
        Metadata.issued.append(audience)
        token = _jwt(audience).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(token)))
        self.end_headers()
        self.wfile.write(token)

    def log_message(self, *args: object) -> None:
        pass


def front_door(upstream: str) -> type[http.server.BaseHTTPRequestHandler]:
    """A handler that admits only 'Bearer <token for its own URL>' and forwards to
    `upstream`."""
    target = urlsplit(upstream)

    class Door(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def handle_one(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            token = self.headers.get("Authorization", "").removeprefix("Bearer ")
            own_url = f"http://127.0.0.1:{self.server.server_address[1]}"
            try:
                payload = token.split(".")[1]
                claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
                admitted = claims["aud"] == own_url
            except (IndexError, ValueError, KeyError):
                admitted = False
            if not admitted:
                status, data, kind = 403, b"Forbidden", "text/plain"
            else:
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
                conn.request(self.command, self.path, body, dict(self.headers))
                reply = conn.getresponse()
                status, data, kind = reply.status, reply.read(), reply.getheader("Content-Type")
                conn.close()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = handle_one  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    return Door


@pytest.fixture
def cloud(mining_stack) -> Iterator[dict]:
    Metadata.issued.clear()
    with ExitStack() as servers:
        metadata = servers.enter_context(serve(Metadata))
        yield {
            "REDIS_URL": mining_stack["redis"].url,
            "RNG_URL": servers.enter_context(serve(front_door(mining_stack["rng"].url))),
            "HASHER_URL": servers.enter_context(serve(front_door(mining_stack["hasher"].url))),
            "GCE_METADATA_HOST": metadata.removeprefix("http://"),
        }


def test_worker_mines_through_private_backends_with_id_tokens(cloud, start_function):
    worker = start_function("worker", {**cloud, "UPSTREAM_AUTH": "google-id-token"})
    summary = mine(worker.url, seconds=1, concurrency=2)
    assert summary["hashes"] > 0
    assert sum(summary["errors"].values()) == 0
    # one token per audience, reused across calls and loops
    assert sorted(Metadata.issued) == sorted([cloud["RNG_URL"], cloud["HASHER_URL"]])


def test_without_id_tokens_the_private_backends_refuse(cloud, start_function):
    worker = start_function("worker", cloud)
    summary = mine(worker.url, seconds=0.5)
    assert summary["hashes"] == 0
    assert "HTTP 403" in summary["last_errors"]["rng"]

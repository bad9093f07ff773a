"""Loopback proxies that sign requests with SigV4, for calls to AWS_IAM function URLs.

The worker calls RNG_URL and HASHER_URL with plain HTTP, and must not change. On
Lambda those are function URLs with AWS_IAM auth, so brkcoin_lambda starts one
proxy per URL named in SIGN_URLS and points the variable at it: each request is
signed with the function's own role credentials (the runtime's environment) and
forwarded over a kept-alive connection.
"""

from __future__ import annotations

import http.client
import http.server
import os
import threading
from urllib.parse import urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.session import get_session

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}


class _Signer(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive with the worker's connection

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._forward()

    do_POST = do_HEAD = do_GET  # noqa: N815

    def _forward(self) -> None:
        server: _Server = self.server  # type: ignore[assignment]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        request = AWSRequest(method=self.command, url=server.upstream + self.path, data=body,
                             headers={**headers, "Host": server.netloc})
        SigV4Auth(server.credentials(), "lambda", server.region).add_auth(request)
        status, reply_headers, data = server.send(self.command, self.path, body,
                                                  dict(request.headers.items()))
        self.send_response(status)
        for key, value in reply_headers:
            if key.lower() not in HOP_BY_HOP:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, *args: object) -> None:  # quiet: the worker logs its own errors
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str, region: str) -> None:
        super().__init__(("127.0.0.1", 0), _Signer)
        parts = urlsplit(upstream)
        self.upstream, self.netloc, self.region = upstream.rstrip("/"), parts.netloc, region
        self.https, self.local = parts.scheme == "https", threading.local()
        self.session = get_session()

    def credentials(self):
        return self.session.get_credentials().get_frozen_credentials()

    def _connection(self) -> http.client.HTTPConnection:
        if getattr(self.local, "connection", None) is None:
            kind = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
            self.local.connection = kind(self.netloc, timeout=30)
        return self.local.connection

    def send(self, method: str, path: str, body: bytes, headers: dict[str, str]):
        for attempt in (1, 2):  # once more on a fresh connection if the kept one was closed
            try:
                connection = self._connection()
                connection.request(method, path, body or None, headers)
                response = connection.getresponse()
                return response.status, response.getheaders(), response.read()
            except (http.client.HTTPException, OSError):
                self.local.connection = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def start(upstream: str, region: str) -> str:
    """Start a signing proxy to `upstream` in a daemon thread; returns its local URL."""
    server = _Server(upstream, region)
    threading.Thread(target=server.serve_forever, name=f"sigv4 {upstream}", daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def install(names: str, region: str | None = None) -> None:
    """Point each variable in `names` (comma-separated) at a signing proxy to its URL."""
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION", "")
    for name in filter(None, (n.strip() for n in names.split(","))):
        if os.environ.get(name):
            os.environ[name] = start(os.environ[name], region)

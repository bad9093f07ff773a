"""How the worker proves itself to private rng and hasher (UPSTREAM_AUTH).

google-id-token: a Google ID token per audience (the upstream's origin) from the
metadata server, as Cloud Run's service-to-service auth expects; reused until
five minutes before it expires (they live an hour), one fetch at a time.

aws-sigv4: each call signed with SigV4 for the `lambda` service, as function URLs
with AWS_IAM auth expect, with the credentials and region the Lambda runtime puts
in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
AWS_REGION). botocore signs: the Lambda runtime ships it, so requirements.txt does
not list it, and it is imported on the first call, so that neither the cold start
nor any other mode pays for it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import Mapping
from urllib.parse import quote, urlsplit

from settings import ConfigError, Settings
from upstream import AuthHeaders, Upstream, UpstreamError

TOKEN_PATH = "/computeMetadata/v1/instance/service-accounts/default/identity?audience="


class GoogleIdTokens:
    def __init__(self, metadata_host: str, timeout: float) -> None:
        self.metadata = Upstream("metadata server", f"http://{metadata_host}", timeout,
                                 auth=self._metadata_flavor)
        self.tokens: dict[str, tuple[str, float]] = {}
        self.lock = asyncio.Lock()

    @staticmethod
    async def _metadata_flavor(method: str, url: str, body: bytes | None) -> dict[str, str]:
        return {"Metadata-Flavor": "Google"}

    async def headers(self, method: str, url: str, body: bytes | None) -> dict[str, str]:
        audience = url.split("/", 3)
        origin = "/".join(audience[:3])
        return {"Authorization": f"Bearer {await self.token(origin)}"}

    async def token(self, audience: str) -> str:
        async with self.lock:
            token, expires = self.tokens.get(audience, ("", 0.0))
            if time.time() < expires - 300:
                return token
            raw = await self.metadata.call("GET", TOKEN_PATH + quote(audience, safe=""),
                                           limit=65536)
            token = raw.decode("ascii", "replace").strip()
            self.tokens[audience] = (token, _expiry(token))
            return token


def _expiry(token: str) -> float:
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError) as e:
        raise UpstreamError(f"metadata server sent something that is not an ID token: {e}") \
            from None


class AwsSigV4:
    REUSE = 60.0  # seconds a signed call without a body is sent again (AWS allows 5 min)

    def __init__(self, env: Mapping[str, str]) -> None:
        self.key = env.get("AWS_ACCESS_KEY_ID", "")
        self.secret = env.get("AWS_SECRET_ACCESS_KEY", "")
        self.token = env.get("AWS_SESSION_TOKEN") or None
        self.region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION", "")
        if not (self.key and self.secret and self.region):
            raise ConfigError("UPSTREAM_AUTH=aws-sigv4 needs AWS_ACCESS_KEY_ID, "
                              "AWS_SECRET_ACCESS_KEY and AWS_REGION (Lambda sets them)")
        self.signed: dict[tuple[str, str], tuple[float, dict[str, str]]] = {}

    async def headers(self, method: str, url: str, body: bytes | None) -> dict[str, str]:
        if body:
            return self.sign(method, url, body)
        # rng's GET /<n> is the same request each time: one signature serves a while.
        now = time.monotonic()
        at, headers = self.signed.get((method, url), (0.0, {}))
        if now - at >= self.REUSE or not headers:
            headers = self.sign(method, url, body)
            if len(self.signed) < 16:
                self.signed[(method, url)] = (now, headers)
        return headers

    def sign(self, method: str, url: str, body: bytes | None) -> dict[str, str]:
        """X-Amz-Date, X-Amz-Security-Token and Authorization for exactly this request:
        the Host header the client sends (the URL's netloc), path and query, body."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        request = AWSRequest(method=method, url=url, data=body or b"",
                             headers={"Host": urlsplit(url).netloc})
        credentials = Credentials(self.key, self.secret, self.token)
        SigV4Auth(credentials, "lambda", self.region).add_auth(request)
        return {k: v for k, v in request.headers.items() if k.lower() != "host"}


def upstream_auth(settings: Settings, env: Mapping[str, str] = os.environ
                  ) -> AuthHeaders | None:
    """The headers hook for UPSTREAM_AUTH, or None when calls go unauthenticated."""
    if settings.upstream_auth == "google-id-token":
        return GoogleIdTokens(settings.metadata_host, settings.http_timeout).headers
    if settings.upstream_auth == "aws-sigv4":
        return AwsSigV4(env).headers
    return None

"""How the worker proves itself to private rng and hasher (UPSTREAM_AUTH).

google-id-token: a Google ID token per audience (the upstream's origin) from the
metadata server, as Cloud Run's service-to-service auth expects; reused until
five minutes before it expires (they live an hour), one fetch at a time.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from urllib.parse import quote

from settings import Settings
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


def upstream_auth(settings: Settings) -> AuthHeaders | None:
    """The headers hook for UPSTREAM_AUTH, or None when calls go unauthenticated."""
    if settings.upstream_auth == "google-id-token":
        return GoogleIdTokens(settings.metadata_host, settings.http_timeout).headers
    return None

"""The worker's settings: read once from the environment into a typed object.

A bad value stops the process at start with an error that names the variable
(`WORKER_DELAY must be a number from 0 to 60, got 'x'`), as Starlette's config
does, rather than failing later inside a request.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

UNIT = 32  # random bytes per unit of work, as the original worker
MAX_BATCH = 32768  # 32 x 32768 = 1 MiB, the rng and hasher limits
UPSTREAM_AUTH_MODES = ("", "google-id-token", "aws-sigv4")


class ConfigError(ValueError):
    """An environment variable holds a value the worker cannot use."""


@dataclass(frozen=True)
class Settings:
    rng_url: str
    hasher_url: str
    redis_url: str
    delay: float  # demo latency per unit of work (per call), seconds
    token: str  # shared bearer token for POST; empty: no check
    default_seconds: float
    max_seconds: float
    max_concurrency: int  # mining loops one invocation may ask for
    max_loops: int  # mining loops of all invocations of this instance together
    max_units_in_flight: int  # loops x batch of this instance: bounds its memory
    max_unrecorded_coins: int  # coins held while Redis cannot take them; then stop
    http_timeout: float  # total for one rng/hasher call
    flush_grace: float  # how long the end of an invocation waits for Redis
    drain_grace: float  # the same after SIGTERM, inside the platform's notice
    max_body: int  # bytes of a request's JSON inputs
    body_timeout: float  # seconds to receive them
    check_sample: int  # digests per batch re-hashed here, coins aside
    upstream_auth: str
    metadata_host: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        read = _Reader(env)
        settings = cls(
            rng_url=read.url("RNG_URL", "http://127.0.0.1:8001"),
            hasher_url=read.url("HASHER_URL", "http://127.0.0.1:8002"),
            redis_url=read.text("REDIS_URL", "redis://127.0.0.1:6380/0"),
            delay=read.number("WORKER_DELAY", 0.1, 0, 60),
            token=read.text("WORKER_TOKEN", ""),
            default_seconds=read.number("WORKER_SECONDS", 10, 0.001, 3600),
            max_seconds=read.number("WORKER_MAX_SECONDS", 900, 0.001, 3600),
            max_concurrency=read.integer("WORKER_MAX_CONCURRENCY", 1024, 1, 100_000),
            max_loops=read.integer("WORKER_MAX_LOOPS", 2048, 1, 100_000),
            max_units_in_flight=read.integer("WORKER_MAX_UNITS_IN_FLIGHT", 1 << 20, 1, 1 << 30),
            max_unrecorded_coins=read.integer("WORKER_MAX_UNRECORDED_COINS", 100_000, 1, 10**8),
            http_timeout=read.number("WORKER_HTTP_TIMEOUT", 10, 0.01, 900),
            flush_grace=read.number("WORKER_FLUSH_GRACE", 10, 0, 900),
            drain_grace=read.number("WORKER_DRAIN_GRACE", 5, 0, 900),
            max_body=read.integer("WORKER_MAX_BODY", 65536, 64, 1 << 24),
            body_timeout=read.number("WORKER_BODY_TIMEOUT", 10, 0.01, 900),
            check_sample=read.integer("WORKER_CHECK_SAMPLE", 16, 1, MAX_BATCH),
            upstream_auth=read.choice("UPSTREAM_AUTH", "", UPSTREAM_AUTH_MODES),
            metadata_host=read.text("GCE_METADATA_HOST", "metadata.google.internal"),
        )
        if settings.default_seconds > settings.max_seconds:
            raise ConfigError(
                f"WORKER_SECONDS ({settings.default_seconds:g}) must not exceed "
                f"WORKER_MAX_SECONDS ({settings.max_seconds:g})"
            )
        return settings


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def text(self, name: str, default: str) -> str:
        return self.env.get(name, default)

    def url(self, name: str, default: str) -> str:
        value = self.text(name, default)
        if not value.startswith(("http://", "https://")):
            raise ConfigError(f"{name} must be an http:// or https:// URL, got {value!r}")
        return value.rstrip("/")

    def number(self, name: str, default: float, low: float, high: float) -> float:
        raw = self.env.get(name)
        if raw is None:
            return float(default)
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not low <= value <= high:  # NaN fails too
            raise ConfigError(f"{name} must be a number from {low:g} to {high:g}, got {raw!r}")
        return value

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        raw = self.env.get(name)
        if raw is None:
            return default
        text = raw.strip()
        if not (text.isascii() and text.isdigit() and len(text) <= 12 and
                low <= int(text) <= high):
            raise ConfigError(f"{name} must be an integer from {low} to {high}, got {raw!r}")
        return int(text)

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.env.get(name, default)
        if value not in choices:
            shown = ", ".join(repr(c) for c in choices if c)
            raise ConfigError(f"{name} must be unset or one of {shown}, got {value!r}")
        return value

"""What a request asks the worker to do: its body read within limits, then its
mining inputs from JSON, a CloudEvent (binary or structured mode) or a Pub/Sub
push. Anything wrong is a BadRequest naming the problem, answered as 4xx JSON.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.requests import ClientDisconnect, Request

from settings import MAX_BATCH, Settings

NAMES = ("seconds", "concurrency", "batch")
CE_REQUIRED = ("specversion", "id", "source", "type")


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Inputs:
    seconds: float
    concurrency: int
    batch: int


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The body, refused as soon as it is known to be over `limit`: before reading
    when Content-Length says so, else at limit + 1 bytes; 408 if it stalls."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"body of {declared} bytes is over the limit of {limit} bytes")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BadRequest(413, f"body is over the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise BadRequest(408, f"body not received within {timeout:g} s") from None
    except ClientDisconnect:
        raise BadRequest(400, "client went away before sending the whole body") from None
    return b"".join(chunks)


def parse_json(body: bytes, what: str = "body") -> object:
    """`body` as JSON, None when empty. NaN, Infinity and over-deep nesting refused."""
    if not body.strip():
        return None
    try:
        return json.loads(body, parse_constant=_no_constant)
    except RecursionError:
        raise BadRequest(400, f"{what} is nested too deeply") from None
    except ValueError as e:  # bad JSON, bad UTF-8, an integer of over 4300 digits
        raise BadRequest(400, f"{what} is not valid JSON: {str(e)[:120]}") from None


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a number JSON allows")


def mining_inputs(data: object, settings: Settings) -> Inputs:
    """Validated inputs from a JSON value: all optional, all bounded, unknown refused."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BadRequest(400, 'inputs must be a JSON object like {"seconds": 10}')
    unknown = sorted(str(name)[:40] for name in data if name not in NAMES)
    if unknown:
        raise BadRequest(400, f"unknown input(s) {unknown[:5]}; known: {list(NAMES)}")
    seconds = data.get("seconds", settings.default_seconds)
    if not (_is_number(seconds) and 0 < seconds <= settings.max_seconds):
        raise BadRequest(400, f"seconds must be a number above 0 and at most "
                              f"{settings.max_seconds:g}, got {_shown(seconds)}")
    concurrency = _integer(data, "concurrency", 1, settings.max_concurrency)
    batch = _integer(data, "batch", 1, MAX_BATCH)
    if concurrency * batch > settings.max_units_in_flight:
        raise BadRequest(400, f"concurrency x batch must be at most "
                              f"{settings.max_units_in_flight} (WORKER_MAX_UNITS_IN_FLIGHT), "
                              f"got {concurrency} x {batch}")
    return Inputs(float(seconds), concurrency, batch)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _integer(data: dict[str, object], name: str, low: int, high: int) -> int:
    value = data.get(name, low)
    if isinstance(value, float) and value.is_integer() and low <= value <= high:
        return int(value)
    if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
        raise BadRequest(400, f"{name} must be an integer from {low} to {high}, "
                              f"got {_shown(value)}")
    return value


def _shown(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**18:
        return f"an integer of {len(str(abs(value)))} digits"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def event_data(headers: Mapping[str, str], body: bytes) -> object:
    """The data of a CloudEvent sent over HTTP (binding 1.0), binary or structured mode.

    Read here rather than by the CloudEvents SDK, which decodes `data_base64`
    leniently ("!!!" becomes empty data) and fails with assorted exception types.
    """
    media_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "application/cloudevents+json":
        event = parse_json(body, "the structured CloudEvent")
        if not isinstance(event, dict):
            raise BadRequest(400, "a structured CloudEvent must be a JSON object")
        missing = [a for a in CE_REQUIRED if not isinstance(event.get(a), str) or not event[a]]
        if missing:
            raise BadRequest(400, f"CloudEvent attribute(s) {missing} missing or not strings")
        _check_version(event["specversion"])
        if "data_base64" in event:
            return parse_json(_base64(event["data_base64"], "data_base64"), "data_base64")
        return event.get("data")
    missing = [f"ce-{a}" for a in CE_REQUIRED if not headers.get(f"ce-{a}")]
    if missing:
        raise BadRequest(400, f"not a CloudEvent: header(s) {missing} missing (binary mode), "
                              "and Content-Type is not application/cloudevents+json")
    _check_version(headers["ce-specversion"])
    return parse_json(body, "the CloudEvent data")


def pubsub_unwrapped(data: object) -> object:
    """A Pub/Sub push (`{"message": {"data": base64}}`) gives the message's JSON."""
    if not (isinstance(data, dict) and "message" in data):
        return data
    message = data["message"]
    if not isinstance(message, dict):
        raise BadRequest(400, "Pub/Sub message must be a JSON object")
    encoded = message.get("data", "")
    return parse_json(_base64(encoded, "Pub/Sub message.data"), "Pub/Sub message.data")


def _check_version(version: str) -> None:
    if version != "1.0":
        raise BadRequest(400, f"CloudEvents specversion must be '1.0', got {version[:20]!r}")


def _base64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise BadRequest(400, f"{what} must be a base64 string, got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(400, f"{what} is not valid base64") from None

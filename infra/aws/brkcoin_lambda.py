"""AWS Lambda entry point for an unchanged Functions Framework function folder.

`brkcoin deploy aws` zips this module beside the folder's main.py and sets the
handler to `brkcoin_lambda.handler`. The function is served by the very ASGI app
`functions-framework` serves (`functions_framework.create_app`), through Mangum:

- HTTP events (function URL payload 2.0, API Gateway, ALB) go to it as they are;
- any other event (an EventBridge schedule, a direct `aws lambda invoke`) goes to
  the target named by FUNCTION_EVENT_TARGET (the worker's `worker_event`) as a
  binary-mode CloudEvent POSTed to it, whose data is the EventBridge event's
  `detail`, or the payload itself for a target's constant input. A 5xx answer
  (e.g. 503: counts not recorded) is raised, so Lambda retries the event.

Environment: FUNCTION_TARGET (required), FUNCTION_EVENT_TARGET (optional),
FUNCTION_SOURCE (default: main.py beside this file). Calls to AWS_IAM function URLs
are signed by the functions themselves (UPSTREAM_AUTH=aws-sigv4).
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from pathlib import Path
from typing import Any

import functions_framework
from mangum import Mangum

SOURCE = os.environ.get("FUNCTION_SOURCE") or str(Path(__file__).resolve().with_name("main.py"))
TARGET = os.environ["FUNCTION_TARGET"]
EVENT_TARGET = os.environ.get("FUNCTION_EVENT_TARGET", "")

# Built once per Lambda instance (cold start), as functions-framework does per process.
_http_handler = Mangum(functions_framework.create_app(TARGET, SOURCE), lifespan="off")
_event_handler: Mangum | None = None


class EventFailed(RuntimeError):
    """The CloudEvent target answered 5xx: raised so Lambda retries the event."""


def is_http(event: Any) -> bool:
    """Function URL, API Gateway and ALB events all carry a requestContext."""
    return isinstance(event, dict) and isinstance(event.get("requestContext"), dict)


def is_eventbridge(event: Any) -> bool:
    return isinstance(event, dict) and "detail-type" in event and "source" in event


def cloudevent_headers(event: Any, request_id: str) -> dict[str, str]:
    """The binary-mode CloudEvent headers an event source would have sent:
    EventBridge's own id, source, type and time."""
    if is_eventbridge(event):
        headers = {"ce-id": str(event.get("id") or request_id), "ce-source": str(event["source"]),
                   "ce-type": str(event["detail-type"])}
        if event.get("resources"):
            headers["ce-subject"] = ",".join(event["resources"])
        if event.get("time"):
            headers["ce-time"] = str(event["time"])
    else:
        headers = {"ce-id": request_id, "ce-source": "aws.lambda", "ce-type": "aws.lambda.invoke"}
    return {"ce-specversion": "1.0", "content-type": "application/json", **headers}


def as_http_event(event: Any, request_id: str) -> dict[str, Any]:
    """A function URL (payload 2.0) POST of the event as a CloudEvent."""
    data = event.get("detail") if is_eventbridge(event) else event
    body = json.dumps(data).encode()
    return {
        "version": "2.0", "routeKey": "$default", "rawPath": "/", "rawQueryString": "",
        "headers": cloudevent_headers(event, request_id),
        "requestContext": {"http": {"method": "POST", "path": "/", "protocol": "HTTP/1.1",
                                    "sourceIp": "127.0.0.1", "userAgent": "aws-lambda"},
                           "requestId": request_id, "stage": "$default"},
        "body": base64.b64encode(body).decode(), "isBase64Encoded": True,
    }


def _deliver(event: Any, context: Any) -> dict[str, Any]:
    global _event_handler
    if not EVENT_TARGET:
        raise ValueError(f"{TARGET} takes HTTP events only (function URL, API Gateway)")
    if _event_handler is None:
        _event_handler = Mangum(functions_framework.create_app(EVENT_TARGET, SOURCE),
                                lifespan="off")
    request_id = getattr(context, "aws_request_id", None) or str(uuid.uuid4())
    response = _event_handler(as_http_event(event, request_id), context)
    body = response.get("body") or ""
    text = base64.b64decode(body).decode() if response.get("isBase64Encoded") else body
    if response["statusCode"] >= 500:  # e.g. 503 with unrecorded counts: let Lambda retry
        raise EventFailed(f"{EVENT_TARGET} answered {response['statusCode']}: {text}")
    return {"statusCode": response["statusCode"], "body": text}


def handler(event: Any, context: Any) -> dict[str, Any]:
    """The Lambda handler: `brkcoin_lambda.handler`."""
    if is_http(event):
        return _http_handler(event, context)
    return _deliver(event, context)

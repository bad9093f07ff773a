"""AWS Lambda entry point for an unchanged Functions Framework function folder.

`brkcoin deploy aws` zips this module beside the folder's main.py and sets the
handler to `brkcoin_lambda.handler`. The function is served by the very Flask app
`functions-framework` serves (`functions_framework.create_app`):

- HTTP events (function URL payload 2.0, API Gateway, ALB) go through apig-wsgi;
- any other event (an EventBridge schedule, a direct `aws lambda invoke`) goes to
  the CloudEvent target named by FUNCTION_EVENT_TARGET (the worker's
  `worker_event`) as a binary-mode CloudEvent, whose data is the EventBridge
  event's `detail`, or the payload itself for a target's constant input.

Environment: FUNCTION_TARGET (required), FUNCTION_EVENT_TARGET (optional),
FUNCTION_SOURCE (default: main.py beside this file), SIGN_URLS (optional: names of
variables holding AWS_IAM function URLs the function calls, e.g. RNG_URL,HASHER_URL;
see sigv4_proxy.py).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import functions_framework
from apig_wsgi import make_lambda_handler
from cloudevents.http import CloudEvent, to_binary

if os.environ.get("SIGN_URLS"):  # before main.py reads the URLs at import
    import sigv4_proxy

    sigv4_proxy.install(os.environ["SIGN_URLS"])

SOURCE = os.environ.get("FUNCTION_SOURCE") or str(Path(__file__).resolve().with_name("main.py"))
TARGET = os.environ["FUNCTION_TARGET"]
EVENT_TARGET = os.environ.get("FUNCTION_EVENT_TARGET", "")

# Built once per Lambda instance (cold start), as functions-framework does per process.
_http_handler = make_lambda_handler(
    functions_framework.create_app(TARGET, SOURCE), binary_support=True
)
_event_app = None


class EventFailed(RuntimeError):
    """The CloudEvent target answered 5xx: raised so Lambda retries the event."""


def is_http(event: Any) -> bool:
    """Function URL, API Gateway and ALB events all carry a requestContext."""
    return isinstance(event, dict) and isinstance(event.get("requestContext"), dict)


def is_eventbridge(event: Any) -> bool:
    return isinstance(event, dict) and "detail-type" in event and "source" in event


def as_cloudevent(event: Any, request_id: str) -> CloudEvent:
    """The CloudEvent an event source would have sent: EventBridge's own id, source and time."""
    if is_eventbridge(event):
        attributes = {
            "id": str(event.get("id") or request_id),
            "source": str(event["source"]),
            "type": str(event["detail-type"]),
            "subject": ",".join(event.get("resources") or []) or None,
        }
        if event.get("time"):
            attributes["time"] = event["time"]
        data = event.get("detail")
    else:
        attributes = {"id": request_id, "source": "aws.lambda", "type": "aws.lambda.invoke"}
        data = event
    attributes = {k: v for k, v in attributes.items() if v is not None}
    attributes["datacontenttype"] = "application/json"
    return CloudEvent(attributes, data)


def _deliver(event: Any, context: Any) -> dict[str, Any]:
    global _event_app
    if not EVENT_TARGET:
        raise ValueError(f"{TARGET} takes HTTP events only (function URL, API Gateway)")
    if _event_app is None:
        _event_app = functions_framework.create_app(EVENT_TARGET, SOURCE, "cloudevent")
    request_id = getattr(context, "aws_request_id", None) or str(uuid.uuid4())
    headers, body = to_binary(as_cloudevent(event, request_id))
    response = _event_app.test_client().post("/", headers=headers, data=body)
    text = response.get_data(as_text=True)
    if response.status_code >= 500:  # e.g. 503 with unrecorded counts: let Lambda retry
        raise EventFailed(f"{EVENT_TARGET} answered {response.status_code}: {text}")
    return {"statusCode": response.status_code, "body": text}


def handler(event: Any, context: Any) -> dict[str, Any]:
    """The Lambda handler: `brkcoin_lambda.handler`."""
    if is_http(event):
        return _http_handler(event, context)
    return _deliver(event, context)

"""Lambda event payloads in the shapes AWS documents: a function URL request
(payload format 2.0) and an EventBridge scheduled event."""

from __future__ import annotations

import base64
import time
import uuid
from urllib.parse import parse_qsl

URL_ID = "a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6"


def function_url_event(method: str, path: str, query: str = "", body: bytes = b"",
                       headers: dict[str, str] | None = None) -> dict:
    """A function URL invocation (AWS_IAM auth) as Lambda receives it."""
    now = time.time()
    headers = {"host": f"{URL_ID}.lambda-url.us-east-1.on.aws", "user-agent": "curl/8.5.0",
               "accept": "*/*", "x-amzn-trace-id": "Root=1-5e72d0e5-d4d9f03c9d8a4ec0a8c3fe01",
               "x-forwarded-for": "203.0.113.7", "x-forwarded-port": "443",
               "x-forwarded-proto": "https", **(headers or {})}
    if body:
        headers["content-length"] = str(len(body))
    query_parameters = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        query_parameters[key] = (f"{query_parameters[key]},{value}"
                                 if key in query_parameters else value)
    text_body = headers.get("content-type", "").startswith(("text/", "application/json"))
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": headers,
        "queryStringParameters": query_parameters or None,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": URL_ID,
            "authorizer": {"iam": {
                "accessKey": "AKIAIOSFODNN7EXAMPLE", "accountId": "123456789012",
                "callerId": "AROAEXAMPLEID:brkcoin-worker", "cognitoIdentity": None,
                "principalOrgId": None, "userArn": "arn:aws:sts::123456789012:assumed-role/"
                "brkcoin-lambda/brkcoin-worker", "userId": "AROAEXAMPLEID:brkcoin-worker"}},
            "domainName": f"{URL_ID}.lambda-url.us-east-1.on.aws",
            "domainPrefix": URL_ID,
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                     "sourceIp": "203.0.113.7", "userAgent": "curl/8.5.0"},
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        # Function URLs base64-encode bodies that are not text.
        "body": (body.decode() if text_body else base64.b64encode(body).decode()) if body
        else None,
        "pathParameters": None,
        "isBase64Encoded": bool(body) and not text_body,
        "stageVariables": None,
    }


def scheduled_event(detail: dict | None = None, rule: str = "brkcoin-worker-tick") -> dict:
    """What an EventBridge schedule rule sends a target that has no input of its own."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "region": "us-east-1",
        "resources": [f"arn:aws:events:us-east-1:123456789012:rule/{rule}"],
        "detail": detail if detail is not None else {},
    }

"""The worker's UPSTREAM_AUTH=aws-sigv4 (functions/worker/auth.py): what it signs is
exactly the request its client sends (checked with botocore's own SigV4, as a
function URL checks it: any other host, path, query or body fails), and botocore
is imported only on the first signed call. End to end, against the real rng and
hasher behind a SigV4-checking gate: test_lambda_adapter.py."""

from __future__ import annotations

import asyncio
import hmac
import re
import subprocess
import sys
from collections.abc import Iterator
from types import ModuleType

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from brkcoin.layout import FUNCTIONS

WORKER = FUNCTIONS["worker"].folder
LAMBDA_ENV = {"AWS_ACCESS_KEY_ID": "AKIDBRKCOIN", "AWS_SECRET_ACCESS_KEY": "SECRET",
              "AWS_SESSION_TOKEN": "SESSIONTOKEN", "AWS_REGION": "eu-west-1"}


@pytest.fixture(scope="module")
def auth() -> Iterator[ModuleType]:
    sys.path.insert(0, str(WORKER))
    try:
        import auth as module  # functions/worker/auth.py, as Functions Framework loads it

        yield module
    finally:
        sys.path.remove(str(WORKER))


def verified(method: str, url: str, body: bytes, headers: dict[str, str]) -> bool:
    """What AWS does with a signed request: recompute the signature from it."""
    match = re.fullmatch(r"AWS4-HMAC-SHA256 Credential=AKIDBRKCOIN/\d{8}/eu-west-1/lambda/"
                         r"aws4_request, SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]+)",
                         headers["Authorization"])
    assert match, headers
    host = url.split("/")[2]
    sent = {"host": host, **{k.lower(): v for k, v in headers.items()}}
    request = AWSRequest(method=method, url=url, data=body,
                         headers={h: sent[h] for h in match.group(1).split(";")})
    request.context["timestamp"] = headers["X-Amz-Date"]
    signer = SigV4Auth(Credentials("AKIDBRKCOIN", "SECRET", "SESSIONTOKEN"), "lambda",
                       "eu-west-1")
    string_to_sign = signer.string_to_sign(request, signer.canonical_request(request))
    return hmac.compare_digest(signer.signature(string_to_sign, request), match.group(2))


URL = "https://abc.lambda-url.eu-west-1.on.aws:8443/prefix/?chunk=32"


def test_the_signature_covers_host_path_query_and_body(auth: ModuleType) -> None:
    signer = auth.AwsSigV4(LAMBDA_ENV)
    body = bytes(range(64))
    headers = asyncio.run(signer.headers("POST", URL, body))
    assert headers["X-Amz-Security-Token"] == "SESSIONTOKEN"
    assert "host" in re.search(r"SignedHeaders=(\S+),", headers["Authorization"]).group(1)
    assert verified("POST", URL, body, headers)
    # ...and nothing else: each change AWS would see fails the check.
    assert not verified("POST", URL, body[:-1] + b"x", headers)
    assert not verified("POST", URL.replace("chunk=32", "chunk=64"), body, headers)
    assert not verified("POST", URL.replace("/prefix/", "/other/"), body, headers)
    assert not verified("POST", URL.replace(":8443", ""), body, headers)
    assert not verified("GET", URL, body, headers)


def test_a_call_without_body_reuses_its_signature_a_while(auth: ModuleType) -> None:
    signer = auth.AwsSigV4(LAMBDA_ENV)
    url = "https://abc.lambda-url.eu-west-1.on.aws/32"
    first = asyncio.run(signer.headers("GET", url, None))
    assert asyncio.run(signer.headers("GET", url, None)) is first
    assert verified("GET", url, b"", first)
    signer.signed[("GET", url)] = (0.0, first)  # as if a minute had gone by
    assert asyncio.run(signer.headers("GET", url, None)) is not first


def test_without_the_lambda_credentials_the_worker_does_not_start(auth: ModuleType) -> None:
    with pytest.raises(ValueError, match="AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and "
                                         "AWS_REGION"):
        auth.AwsSigV4({"AWS_REGION": "eu-west-1"})


PROBE = """
import asyncio, sys
import main
print("botocore" in sys.modules)
if main._auth is not None:
    asyncio.run(main._auth("GET", "https://abc.lambda-url.eu-west-1.on.aws/32", None))
print("botocore" in sys.modules)
"""


@pytest.mark.parametrize("mode, after_a_call", [("", "False"), ("aws-sigv4", "True")])
def test_botocore_is_imported_on_the_first_signed_call_only(mode: str, after_a_call: str,
                                                            tmp_path) -> None:
    env = {**LAMBDA_ENV, "UPSTREAM_AUTH": mode, "PATH": "/usr/bin:/bin",
           "XDG_RUNTIME_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=WORKER, env=env,
                            capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.split() == ["False", after_a_call]

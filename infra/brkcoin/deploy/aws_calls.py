"""The operations of `brkcoin deploy aws`: AWS API calls as data, printed as the
calls they are and made with boto3 from the same data.

A Call is one API call (`lambda.create_function(FunctionName=..., ...)`); its
arguments may hold a `Var` (a value an earlier call returned, e.g. the role's ARN)
or a `Package` (a deployment zip, built when the call is made). Operations:

- Calls: some calls, in order;
- Ensure: a probe call; when what it looks for is missing, the `create` calls,
  else the `update` calls;
- Prune: a listing call, then calls for each listed name not kept (stale rules).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore.exceptions
import localstack_client.session  # type: ignore[import-untyped]

from brkcoin.deploy import aws_package
from brkcoin.deploy.common import DeployError
from brkcoin.deploy.plan import Values, Var
from brkcoin.layout import ROOT

DEFAULT_ENDPOINT = "http://localhost:4566"
SERVICES = ("lambda", "iam", "events")
MISSING = ("ResourceNotFoundException", "NoSuchEntity", "NoSuchEntityException")


@dataclass(frozen=True)
class Package:
    """A function's deployment zip: its folder, the adapter and, unless the
    dependencies come from a layer, its dependencies built for Lambda."""

    folder: Path
    vendor: bool

    def show(self) -> str:
        deps = " + its dependencies built for Lambda" if self.vendor else ""
        return (f"<zip of {self.folder.relative_to(ROOT).as_posix()}/ + "
                f"{aws_package.ADAPTER.relative_to(ROOT).as_posix()}{deps}>")

    def resolve(self) -> bytes:
        deps = aws_package.vendored(self.folder) if self.vendor else None
        return aws_package.build_zip(self.folder, deps)


class Session:
    """boto3 clients for LocalStack, another emulator (--endpoint-url) or real AWS,
    made once the endpoint is known to answer (the plan's preflight)."""

    def __init__(self, endpoint_url: str, real_aws: bool, region: str) -> None:
        self.endpoint_url, self.real_aws, self.region = endpoint_url, real_aws, region
        self.clients: dict[str, Any] = {}

    def where(self) -> str:
        return "real AWS" if self.real_aws else (self.endpoint_url or DEFAULT_ENDPOINT)

    def connect(self) -> None:
        if self.real_aws:
            session = boto3.session.Session(region_name=self.region)
            self.clients = {s: session.client(s) for s in SERVICES}  # type: ignore[call-overload]
            return
        url = self.endpoint_url or DEFAULT_ENDPOINT
        host, port = _reachable(url)
        if urlsplit(url).scheme == "https":  # localstack-client speaks https only via $USE_SSL
            session = boto3.session.Session(aws_access_key_id="test",
                                            aws_secret_access_key="test",
                                            region_name=self.region)
            self.clients = {s: session.client(s, endpoint_url=url)  # type: ignore[call-overload]
                            for s in SERVICES}
            return
        local = localstack_client.session.Session(region_name=self.region,
                                                  localstack_host=f"{host}:{port}")
        self.clients = {s: local.client(s) for s in SERVICES}

    def client(self, service: str) -> Any:
        if not self.clients:
            self.connect()
        return self.clients[service]


def _reachable(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "", port), timeout=3).close()
    except OSError as e:
        raise DeployError(
            f"no AWS API emulator answers at {url} ({e.strerror or e}): start LocalStack "
            "(see the README, AWS Lambda), pass --endpoint-url, or use --real-aws") from e
    return parts.hostname or "", port


# --- showing and resolving arguments ------------------------------------------


def shown(value: Any) -> str:
    """An argument as printed: a Var as ${NAME}, a Package as what it holds."""
    if isinstance(value, Var):
        return f"${{{value.name}}}"
    if isinstance(value, Package):
        return value.show()
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k!r}: {shown(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(shown(v) for v in value) + "]"
    return repr(value)


def resolved(value: Any, values: Values) -> Any:
    if isinstance(value, Var):
        return value.value(values)
    if isinstance(value, Package):
        return value.resolve()
    if isinstance(value, Mapping):
        return {k: resolved(v, values) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [resolved(v, values) for v in value]
    return value


def _dig(answer: Any, path: Sequence[str]) -> Any:
    """answer[path...], where "*" maps the rest of the path over a list."""
    for at, key in enumerate(path):
        if key == "*":
            return [_dig(item, path[at + 1:]) for item in answer]
        answer = answer[key]
    return answer


def _code(error: botocore.exceptions.ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


class Missing(Exception):
    """What a call looked for does not exist."""


@dataclass(frozen=True)
class Call:
    """One API call; `waiter` makes it `client.get_waiter(method).wait(**params)`."""

    service: str
    method: str
    params: Mapping[str, Any] = field(default_factory=dict)
    capture: tuple[Var, tuple[str, ...]] | None = None  # set a Var from the answer
    missing_ok: bool = False  # nothing to act on is fine (deletions)
    waiter: bool = False
    new_role: bool = False  # retried while IAM has not yet made a new role assumable

    def show(self) -> str:
        arguments = ", ".join(f"{k}={shown(v)}" for k, v in self.params.items())
        call = (f"get_waiter({self.method!r}).wait({arguments})" if self.waiter
                else f"{self.method}({arguments})")
        note = "  (nothing to do if it is missing)" if self.missing_ok else ""
        if not self.capture:
            return f"{self.service}.{call}{note}"
        variable, path = self.capture
        taken = "".join("[*]" if key == "*" else f"[{key!r}]" for key in path)
        return f"{variable.name} = {self.service}.{call}{taken}{note}"

    def make(self, session: Session, values: Values) -> None:
        """Make the call; raises Missing when what it names does not exist."""
        client = session.client(self.service)
        params = resolved(self.params, values)
        try:
            if self.waiter:
                client.get_waiter(self.method).wait(**params)
                return
            answer = self._retried(lambda: getattr(client, self.method)(**params))
        except botocore.exceptions.ClientError as e:
            if _code(e) in MISSING:
                if self.missing_ok:
                    return
                raise Missing() from e
            raise
        if self.capture:
            variable, path = self.capture
            values[variable.name] = _dig(answer, path)

    def _retried(self, call: Any) -> Any:
        for attempt in range(7 if self.new_role else 0):
            try:
                return call()
            except botocore.exceptions.ClientError as e:
                if _code(e) != "InvalidParameterValueException" or "cannot be assumed" \
                        not in str(e):
                    raise
            time.sleep(2 + attempt * 2)
        return call()


def _clear(error: Exception) -> DeployError:
    """An AWS error as one clear line instead of a traceback."""
    if isinstance(error, Missing):
        return DeployError(f"AWS says it does not exist: {error.__cause__}")
    if isinstance(error, botocore.exceptions.NoCredentialsError):
        return DeployError("no AWS credentials: configure them (aws configure, AWS_PROFILE), "
                           "or drop --real-aws to use LocalStack")
    if isinstance(error, botocore.exceptions.EndpointConnectionError):
        return DeployError(f"cannot reach the AWS API: {error}")
    if isinstance(error, botocore.exceptions.WaiterError):
        return DeployError(f"a Lambda function did not become ready: {error}")
    return DeployError(f"AWS refused: {error}")


AWS_ERRORS = (Missing, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)


def _guarded(session: Session, calls: Sequence[Call], values: Values) -> None:
    try:
        for call in calls:
            call.make(session, values)
    except AWS_ERRORS as e:
        raise _clear(e) from e


def _indented(calls: Sequence[Call], prefix: str = "#    ") -> list[str]:
    return [prefix + call.show() for call in calls]


@dataclass(frozen=True)
class Calls:
    description: str
    calls: tuple[Call, ...]
    session: Session = field(repr=False, compare=False)

    def how(self) -> list[str]:
        return _indented(self.calls)

    def apply(self, values: Values) -> None:
        _guarded(self.session, self.calls, values)


@dataclass(frozen=True)
class Ensure:
    description: str
    probe: Call
    create: tuple[Call, ...]
    update: tuple[Call, ...]
    session: Session = field(repr=False, compare=False)

    def how(self) -> list[str]:
        return [*_indented([self.probe]), "#    if it is missing:",
                *_indented(self.create, "#      "),
                *(["#    else:", *_indented(self.update, "#      ")] if self.update else [])]

    def apply(self, values: Values) -> None:
        try:
            self.probe.make(self.session, values)
        except Missing:
            _guarded(self.session, self.create, values)
            return
        except AWS_ERRORS as e:
            raise _clear(e) from e
        _guarded(self.session, self.update, values)


@dataclass(frozen=True)
class Prune:
    """The calls for each name a listing returns, but the kept ones."""

    description: str
    listing: Call  # captures a list of names
    item: Var  # the name in `calls`
    keep: frozenset[str]
    calls: tuple[Call, ...]
    session: Session = field(repr=False, compare=False)

    def how(self) -> list[str]:
        assert self.listing.capture
        listed = self.listing.capture[0].name
        kept = f", but {', '.join(sorted(self.keep))}" if self.keep else ""
        return [*_indented([self.listing]),
                f"#    for each {self.item.name} in ${{{listed}}}{kept}:",
                *_indented(self.calls, "#      ")]

    def apply(self, values: Values) -> None:
        assert self.listing.capture
        _guarded(self.session, (self.listing,), values)
        for name in values[self.listing.capture[0].name]:
            if name not in self.keep:
                _guarded(self.session, self.calls, {**values, self.item.name: name})


def region_default() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"

"""`brkcoin deploy aws` / `brkcoin destroy aws`: Lambda functions with function URLs
and an EventBridge schedule, through localstack-client (LocalStack or any AWS API
emulator at --endpoint-url) or plain boto3 for real AWS (--real-aws).

Everything is named from --prefix, so a second deploy finds and updates what the
first made, and destroy removes exactly that.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict, TypeVar
from urllib.parse import urlsplit

import boto3
import botocore.exceptions
import localstack_client.session  # type: ignore[import-untyped]

from brkcoin.deploy import aws_package
from brkcoin.deploy.common import DeployError
from brkcoin.layout import FUNCTIONS

if TYPE_CHECKING:  # boto3-stubs: types only
    from mypy_boto3_events import EventBridgeClient
    from mypy_boto3_iam import IAMClient
    from mypy_boto3_lambda import LambdaClient
    from mypy_boto3_lambda.literals import RuntimeType
    from mypy_boto3_lambda.type_defs import EnvironmentTypeDef

DEFAULT_ENDPOINT = "http://localhost:4566"
# What AWS's managed AWSLambdaBasicExecutionRole grants, as an inline policy: an
# emulator need not know AWS's managed policies (moto doesn't by default).
LOGS_POLICY_NAME = "brkcoin-logs"
LOGS_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Resource": "*", "Action": [
        "logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"]}],
}
TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
                   "Action": "sts:AssumeRole"}],
}
TAGS = {"app": "brkcoin", "managed-by": "brkcoin deploy aws"}
UrlAuth = Literal["AWS_IAM", "NONE"]
T = TypeVar("T")


@dataclass(frozen=True)
class Clients:
    """The three AWS APIs a deploy talks to."""

    lam: LambdaClient
    iam: IAMClient
    events: EventBridgeClient


class FunctionSettings(TypedDict):
    """What CreateFunction and UpdateFunctionConfiguration both take."""

    Role: str
    Handler: str
    Runtime: RuntimeType
    Timeout: int
    MemorySize: int
    Environment: EnvironmentTypeDef
    Layers: list[str]
    Description: str


@dataclass(frozen=True)
class LambdaSpec:
    """One Lambda function made from one function folder."""

    name: str  # the folder / Functions Framework target
    auth: UrlAuth  # function URL auth type
    timeout: int  # seconds
    memory: int = 256  # MB
    event_target: str = ""  # CloudEvent target for non-HTTP events
    env_keys: tuple[str, ...] = field(default=())  # which shared settings it reads


SPECS = (
    # rng and hasher first: the worker's and web UI's settings need their URLs.
    LambdaSpec("rng", "AWS_IAM", 15),
    LambdaSpec("hasher", "AWS_IAM", 15),
    LambdaSpec("worker", "AWS_IAM", 120, 512, "worker_event",
               ("REDIS_URL", "RNG_URL", "HASHER_URL")),
    LambdaSpec("webui", "NONE", 15, 256, "",
               ("REDIS_URL", "RNG_URL", "HASHER_URL", "WORKER_URL")),
)


def _region_default() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def _connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL", ""),
                        help=f"AWS API emulator (default: $AWS_ENDPOINT_URL or {DEFAULT_ENDPOINT}, "
                             "LocalStack)")
    parser.add_argument("--real-aws", action="store_true",
                        help="deploy to real AWS with boto3's usual credentials, not an emulator")
    parser.add_argument("--region", default=_region_default(),
                        help="AWS region (default: $AWS_REGION or us-east-1)")
    parser.add_argument("--prefix", default="brkcoin",
                        help="name prefix of every resource (default: brkcoin)")


def add_deploy_arguments(parser: argparse.ArgumentParser) -> None:
    _connection_arguments(parser)
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", ""),
                        help="Redis the worker and web UI use, reachable from the Lambdas "
                             "(default: $REDIS_URL; required with --real-aws)")
    parser.add_argument("--schedule", default="rate(1 minute)",
                        help="EventBridge schedule of the worker (default: rate(1 minute))")
    parser.add_argument("--seconds", type=float, default=55.0,
                        help="mining seconds per tick, sent as the target's input (default: 55)")
    parser.add_argument("--no-vendor", action="store_true",
                        help="zip only the code, not its dependencies (give them as --layer)")
    parser.add_argument("--layer", action="append", default=[], metavar="ARN",
                        help="a Lambda layer ARN with the dependencies (repeatable)")


def add_destroy_arguments(parser: argparse.ArgumentParser) -> None:
    _connection_arguments(parser)


# --- connecting -------------------------------------------------------------------


def _check_reachable(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DeployError(f"--endpoint-url must look like http://HOST:PORT, got {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=3).close()
    except OSError as e:
        raise DeployError(
            f"no AWS API emulator answers at {url} ({e.strerror or e}): start LocalStack "
            "(see the README, AWS Lambda), pass --endpoint-url, or use --real-aws") from e
    return parts.hostname, port


def connect(args: argparse.Namespace) -> Clients:
    """boto3 clients for the chosen target, checked to answer."""
    if args.real_aws:
        if args.endpoint_url and args.endpoint_url != os.environ.get("AWS_ENDPOINT_URL", ""):
            raise DeployError("--real-aws and --endpoint-url exclude each other")
        session = boto3.session.Session(region_name=args.region)
        return Clients(session.client("lambda"), session.client("iam"), session.client("events"))
    url = args.endpoint_url or DEFAULT_ENDPOINT
    host, port = _check_reachable(url)
    if urlsplit(url).scheme == "https":  # localstack-client speaks https only through $USE_SSL
        session = boto3.session.Session(aws_access_key_id="test", aws_secret_access_key="test",
                                        region_name=args.region)
        return Clients(session.client("lambda", endpoint_url=url),
                       session.client("iam", endpoint_url=url),
                       session.client("events", endpoint_url=url))
    local = localstack_client.session.Session(region_name=args.region,
                                              localstack_host=f"{host}:{port}")
    return Clients(local.client("lambda"), local.client("iam"), local.client("events"))


def _error_code(error: botocore.exceptions.ClientError) -> str:
    return error.response.get("Error", {}).get("Code", "")


def _missing(error: botocore.exceptions.ClientError) -> bool:
    return _error_code(error) in ("ResourceNotFoundException", "NoSuchEntity",
                                  "NoSuchEntityException")


# --- the pieces -------------------------------------------------------------------


def ensure_role(iam: IAMClient, name: str) -> str:
    """The functions' execution role (CloudWatch Logs only), created once."""
    try:
        arn = iam.get_role(RoleName=name)["Role"]["Arn"]
    except botocore.exceptions.ClientError as e:
        if not _missing(e):
            raise
        arn = iam.create_role(
            RoleName=name, AssumeRolePolicyDocument=json.dumps(TRUST_POLICY),
            Description="brkcoin Lambda functions",
            Tags=[{"Key": k, "Value": v} for k, v in TAGS.items()],
        )["Role"]["Arn"]
    iam.put_role_policy(RoleName=name, PolicyName=LOGS_POLICY_NAME,  # idempotent
                        PolicyDocument=json.dumps(LOGS_POLICY))
    return arn


def function_env(spec: LambdaSpec, settings: dict[str, str]) -> dict[str, str]:
    env = {"FUNCTION_TARGET": spec.name}
    if spec.event_target:
        env["FUNCTION_EVENT_TARGET"] = spec.event_target
    env.update({k: settings[k] for k in spec.env_keys if settings.get(k)})
    # These URLs are AWS_IAM: the function's plain HTTP calls go through a signer.
    signed = [k for k in ("RNG_URL", "HASHER_URL", "WORKER_URL") if k in env]
    if signed:
        env["SIGN_URLS"] = ",".join(signed)
    return env


def _with_role_retry(call: Callable[[], T]) -> T:
    """A new IAM role takes a few seconds before Lambda may assume it."""
    for attempt in range(7):
        try:
            return call()
        except botocore.exceptions.ClientError as e:
            assumable = "cannot be assumed" not in str(e)
            if _error_code(e) != "InvalidParameterValueException" or assumable:
                raise
        time.sleep(2 + attempt * 2)
    return call()  # the eighth and last try


def ensure_function(lam: LambdaClient, spec: LambdaSpec, prefix: str, role: str, code: bytes,
                    env: dict[str, str], layers: list[str]) -> str:
    """Create the function, or update its code then its settings; returns its ARN."""
    name = f"{prefix}-{spec.name}"
    settings = FunctionSettings(
        Role=role, Handler=aws_package.HANDLER, Runtime=aws_package.RUNTIME,
        Timeout=spec.timeout, MemorySize=spec.memory, Environment={"Variables": env},
        Layers=layers, Description=f"brkcoin {spec.name} (Functions Framework via apig-wsgi)",
    )
    try:
        lam.get_function(FunctionName=name)
    except botocore.exceptions.ClientError as e:
        if not _missing(e):
            raise
        arn = _with_role_retry(lambda: lam.create_function(
            FunctionName=name, Code={"ZipFile": code}, Tags=TAGS, **settings))["FunctionArn"]
        lam.get_waiter("function_active_v2").wait(FunctionName=name)
        return arn
    lam.update_function_code(FunctionName=name, ZipFile=code)
    lam.get_waiter("function_updated_v2").wait(FunctionName=name)
    arn = lam.update_function_configuration(FunctionName=name, **settings)["FunctionArn"]
    lam.get_waiter("function_updated_v2").wait(FunctionName=name)
    return arn


def put_permission(lam: LambdaClient, function: str, statement_id: str,
                   **permission: Any) -> None:
    """Add a resource-policy statement, replacing one of the same id (so settings update)."""
    try:
        lam.remove_permission(FunctionName=function, StatementId=statement_id)
    except botocore.exceptions.ClientError as e:
        if not _missing(e):
            raise
    lam.add_permission(FunctionName=function, StatementId=statement_id, **permission)


def ensure_url(lam: LambdaClient, function: str, auth: UrlAuth) -> str:
    """The function URL with the given auth type; a public one gets its two permissions."""
    try:
        config = lam.get_function_url_config(FunctionName=function)
        url = config["FunctionUrl"]
        if config["AuthType"] != auth:
            url = lam.update_function_url_config(FunctionName=function,
                                                 AuthType=auth)["FunctionUrl"]
    except botocore.exceptions.ClientError as e:
        if not _missing(e):
            raise
        url = lam.create_function_url_config(FunctionName=function, AuthType=auth)["FunctionUrl"]
    if auth == "NONE":
        # Public URLs need both actions granted to everyone (InvokeFunction only via the URL).
        put_permission(lam, function, "public-url", Action="lambda:InvokeFunctionUrl",
                       Principal="*", FunctionUrlAuthType="NONE")
        put_permission(lam, function, "public-url-invoke", Action="lambda:InvokeFunction",
                       Principal="*", InvokedViaFunctionUrl=True)
    return url.rstrip("/")


def allow_caller(lam: LambdaClient, function: str, role_arn: str) -> None:
    """Let the functions' role call an AWS_IAM function URL (signed by sigv4_proxy)."""
    put_permission(lam, function, "brkcoin-role-url", Action="lambda:InvokeFunctionUrl",
                   Principal=role_arn, FunctionUrlAuthType="AWS_IAM")
    put_permission(lam, function, "brkcoin-role-invoke", Action="lambda:InvokeFunction",
                   Principal=role_arn, InvokedViaFunctionUrl=True)


def ensure_schedule(events: EventBridgeClient, lam: LambdaClient, prefix: str, worker_arn: str,
                    schedule: str, seconds: float) -> str:
    """The EventBridge rule invoking the worker with constant input {"seconds": S}."""
    rule = f"{prefix}-worker-tick"
    rule_arn = events.put_rule(
        Name=rule, ScheduleExpression=schedule, State="ENABLED",
        Description="brkcoin: one mining invocation of the worker per tick",
    )["RuleArn"]
    put_permission(lam, worker_arn, "eventbridge-tick", Action="lambda:InvokeFunction",
                   Principal="events.amazonaws.com", SourceArn=rule_arn)
    events.put_targets(Rule=rule, Targets=[{
        "Id": "worker", "Arn": worker_arn, "Input": json.dumps({"seconds": seconds}),
        # A tick not delivered within a minute is stale: the next one is on its way.
        "RetryPolicy": {"MaximumRetryAttempts": 2, "MaximumEventAgeInSeconds": 60},
    }])
    return rule


# --- the commands -----------------------------------------------------------------


def _validate(args: argparse.Namespace) -> None:
    if args.real_aws and not args.redis_url:
        raise DeployError("--redis-url (or $REDIS_URL) is required with --real-aws: a Redis "
                          "the Lambdas can reach, e.g. an ElastiCache endpoint")
    if not 0 < args.seconds <= 840:
        raise DeployError("--seconds must be above 0 and at most 840 (the worker's Lambda "
                          "timeout is 15 minutes)")
    if args.no_vendor and args.real_aws and not args.layer:
        print("note: --no-vendor without --layer: the functions will not find their "
              "dependencies on real AWS")


def _dependencies(args: argparse.Namespace, name: str) -> Path | None:
    return None if args.no_vendor else aws_package.vendored(FUNCTIONS[name].folder)


def _timeout_for(spec: LambdaSpec, seconds: float) -> int:
    # The worker mines `seconds`, then may wait for Redis before answering.
    return max(spec.timeout, int(seconds) + 30) if spec.name == "worker" else spec.timeout


def deploy_all(clients: Clients, args: argparse.Namespace) -> dict[str, str]:
    """Make or update everything; returns the function URLs by name."""
    lam, iam, events = clients.lam, clients.iam, clients.events
    role = ensure_role(iam, f"{args.prefix}-lambda")
    settings = {"REDIS_URL": args.redis_url}
    urls: dict[str, str] = {}
    arns: dict[str, str] = {}
    for spec in SPECS:
        spec = LambdaSpec(spec.name, spec.auth, _timeout_for(spec, args.seconds), spec.memory,
                          spec.event_target, spec.env_keys)
        code = aws_package.build_zip(FUNCTIONS[spec.name].folder, _dependencies(args, spec.name))
        env = function_env(spec, settings)
        arns[spec.name] = ensure_function(lam, spec, args.prefix, role, code, env, args.layer)
        urls[spec.name] = ensure_url(lam, arns[spec.name], spec.auth)
        settings[f"{spec.name.upper()}_URL"] = urls[spec.name]
        print(f"{args.prefix}-{spec.name}: {urls[spec.name]} (auth {spec.auth})")
    for name in ("rng", "hasher", "worker"):  # called by the worker, probed by the web UI
        allow_caller(lam, arns[name], role)
    # The web UI learnt the worker's URL only after the worker was made.
    webui = next(s for s in SPECS if s.name == "webui")
    lam.update_function_configuration(
        FunctionName=arns["webui"], Environment={"Variables": function_env(webui, settings)})
    rule = ensure_schedule(events, lam, args.prefix, arns["worker"], args.schedule, args.seconds)
    print(f"{rule}: {args.schedule} -> {args.prefix}-worker {{\"seconds\": {args.seconds:g}}}")
    return urls


def destroy_all(clients: Clients, args: argparse.Namespace) -> list[str]:
    """Remove the rule, the functions (with their URLs and permissions) and the role."""
    lam, iam, events = clients.lam, clients.iam, clients.events
    removed: list[str] = []
    rule = f"{args.prefix}-worker-tick"
    try:
        targets = events.list_targets_by_rule(Rule=rule)["Targets"]
        if targets:
            events.remove_targets(Rule=rule, Ids=[t["Id"] for t in targets])
        events.delete_rule(Name=rule)
        removed.append(f"rule {rule}")
    except botocore.exceptions.ClientError as e:
        if not _missing(e):
            raise
    for spec in SPECS:
        name = f"{args.prefix}-{spec.name}"
        try:
            lam.delete_function_url_config(FunctionName=name)
        except botocore.exceptions.ClientError as e:
            if not _missing(e):
                raise
        try:
            lam.delete_function(FunctionName=name)
            removed.append(f"function {name}")
        except botocore.exceptions.ClientError as e:
            if not _missing(e):
                raise
    role = f"{args.prefix}-lambda"
    try:
        for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
            iam.delete_role_policy(RoleName=role, PolicyName=name)
        for policy in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]:
            iam.detach_role_policy(RoleName=role, PolicyArn=policy["PolicyArn"])
        iam.delete_role(RoleName=role)
        removed.append(f"role {role}")
    except botocore.exceptions.ClientError as e:
        if not _missing(e):
            raise
    return removed


def _describe(args: argparse.Namespace) -> str:
    return "real AWS" if args.real_aws else (args.endpoint_url or DEFAULT_ENDPOINT)


def _plan(args: argparse.Namespace, verb: str) -> int:
    print(f"# brkcoin would {verb} on {_describe(args)} ({args.region}):")
    for spec in SPECS:
        print(f"#   Lambda {args.prefix}-{spec.name} ({aws_package.RUNTIME}, handler "
              f"{aws_package.HANDLER}) with a function URL (auth {spec.auth})")
    print(f"#   EventBridge rule {args.prefix}-worker-tick -> {args.prefix}-worker")
    print(f"#   IAM role {args.prefix}-lambda")
    return 0


def _guard(action: Callable[[], T]) -> T:
    """AWS errors become one clear line instead of a traceback."""
    try:
        return action()
    except botocore.exceptions.NoCredentialsError as e:
        raise DeployError("no AWS credentials: configure them (aws configure, AWS_PROFILE), "
                          "or drop --real-aws to use LocalStack") from e
    except botocore.exceptions.EndpointConnectionError as e:
        raise DeployError(f"cannot reach the AWS API: {e}") from e
    except botocore.exceptions.WaiterError as e:
        raise DeployError(f"a Lambda function did not become ready: {e}") from e
    except botocore.exceptions.ClientError as e:
        raise DeployError(f"AWS refused: {e}") from e


def deploy(args: argparse.Namespace) -> int:
    _validate(args)
    if args.dry_run:
        return _plan(args, "deploy")
    clients = connect(args)
    urls = _guard(lambda: deploy_all(clients, args))
    print(f"web UI: {urls['webui']}/")
    return 0


def destroy(args: argparse.Namespace) -> int:
    if args.dry_run:
        return _plan(args, "destroy")
    clients = connect(args)
    removed = _guard(lambda: destroy_all(clients, args))
    print("removed: " + (", ".join(removed) if removed else "nothing (none found)"))
    return 0

"""`brkcoin deploy aws` / `brkcoin destroy aws`: Lambda functions with function URLs
and EventBridge schedules, through localstack-client (LocalStack or any AWS API
emulator at --endpoint-url) or plain boto3 for real AWS (--real-aws).

Each function's settings come from its spec (brkcoin.layout): timeout, memory,
public (function URL auth NONE) or private (AWS_IAM), its settings and the URLs
of what it needs. Private URLs are called with SigV4 signatures of the functions'
role (UPSTREAM_AUTH=aws-sigv4, for the worker and the web UI's probes).

Scaling: a Lambda instance (execution environment) serves one request at a time,
and Lambda adds instances as requests come; the spec's max_instances is its
reserved concurrency (PutFunctionConcurrency), the most instances it may run.
Not max_instances x concurrency: the spec's concurrency is what one instance of
Cloud Run or Knative serves at once, which on Lambda is always 1; and reserving
that product (800 for rng, 2480 in all) would take more than a default account
has (1000 a region, 100 of them never reservable), failing every deploy, and hold
it from the account's other functions. So on Lambda the worker takes
max_instances invocations at once, and --workers stops there. min_instances has
no counterpart here (warm instances are provisioned concurrency, on a published
version): the spec's 0 is Lambda's own behaviour. Nor has the rest of Scaling:
Lambda's scaling is its own.

The fan-out is one EventBridge rule per worker (PREFIX-worker-tick-1 .. N), each
invoking the worker with {"seconds": S}; a deploy deletes the rules beyond N.
Everything is named from --prefix, so a second deploy finds and updates what the
first made, and destroy removes exactly that.
"""

from __future__ import annotations

import argparse
import json
import os
from urllib.parse import urlsplit

from brkcoin.deploy import aws_package, rules
from brkcoin.deploy.aws_calls import Call, Calls, Ensure, Package, Prune, Session, region_default
from brkcoin.deploy.common import DeployError
from brkcoin.deploy.plan import Operation, Plan, Values, Var
from brkcoin.layout import FUNCTIONS, TICK, Function, url_variable

SCHEDULE = "rate(1 minute)"  # TICK.cron, "* * * * *", as EventBridge writes it
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
# Made in this order: each function's settings hold the URLs of those before it.
ORDER = ("rng", "hasher", "worker", "webui")
EVENT_TARGET = {"worker": "worker_event"}  # the CloudEvent target for non-HTTP events
ROLE_ARN, RULES, RULE = Var("ROLE_ARN"), Var("RULES"), Var("RULE")
OPTION_RULES = {"prefix": rules.AWS_PREFIX, "region": rules.AWS_REGION,
                "layer": rules.LAYER_ARN, "schedule": rules.EVENTBRIDGE_SCHEDULE}
MAX_SECONDS = 840  # the worker's Lambda timeout is at most 900 s: 60 s for the flush


def _connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL", ""),
                        help="AWS API emulator (default: $AWS_ENDPOINT_URL or "
                             "http://localhost:4566, LocalStack)")
    parser.add_argument("--real-aws", action="store_true",
                        help="deploy to real AWS with boto3's usual credentials, not an emulator")
    parser.add_argument("--region", default=region_default(),
                        help="AWS region (default: $AWS_REGION or us-east-1)")
    parser.add_argument("--prefix", default="brkcoin",
                        help="name prefix of every resource (default: brkcoin)")


def add_deploy_arguments(parser: argparse.ArgumentParser) -> None:
    _connection_arguments(parser)
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", ""),
                        help="Redis the worker and web UI use, reachable from the Lambdas "
                             "(required; default: $REDIS_URL)")
    parser.add_argument("--schedule", default=SCHEDULE,
                        help=f"EventBridge schedule of the worker (default: {SCHEDULE})")
    parser.add_argument("--seconds", type=float, default=TICK.seconds,
                        help="mining seconds per tick, sent as the target's input "
                             f"(default: {TICK.seconds:g})")
    parser.add_argument("--no-vendor", action="store_true",
                        help="zip only the code, not its dependencies (give them as --layer)")
    parser.add_argument("--layer", action="append", default=[], metavar="ARN",
                        help="a Lambda layer ARN with the dependencies (repeatable)")


def add_destroy_arguments(parser: argparse.ArgumentParser) -> None:
    _connection_arguments(parser)


def _validate_connection(args: argparse.Namespace) -> None:
    rules.check(args, OPTION_RULES)
    if args.real_aws and args.endpoint_url and \
            args.endpoint_url != os.environ.get("AWS_ENDPOINT_URL", ""):
        raise DeployError("--real-aws and --endpoint-url exclude each other: pass one")
    if args.endpoint_url and not _is_http_url(args.endpoint_url):
        raise DeployError(f"--endpoint-url must look like http://HOST:PORT, "
                          f"got {args.endpoint_url!r}")


def _is_http_url(text: str) -> bool:
    try:
        url = urlsplit(text)
        return url.scheme in ("http", "https") and bool(url.hostname) and url.port != 0
    except ValueError:  # a port that is not one
        return False


def validate(args: argparse.Namespace) -> None:
    """Every input, before anything is made."""
    _validate_connection(args)
    redis = urlsplit(args.redis_url)
    if not args.redis_url:
        raise DeployError("--redis-url is required (or $REDIS_URL): a Redis the Lambdas can "
                          "reach, e.g. --redis-url redis://host.docker.internal:6379/0 for "
                          "LocalStack, or an ElastiCache endpoint")
    if redis.scheme not in ("redis", "rediss") or not redis.hostname:
        raise DeployError(f"--redis-url must look like redis://HOST:6379/0, "
                          f"got {args.redis_url!r}")
    if args.no_vendor and not args.layer:
        raise DeployError("--no-vendor needs --layer ARN: a Lambda layer holding the "
                          "dependencies (each folder's requirements.txt and "
                          "infra/aws/requirements.txt); or drop --no-vendor")
    if not 0 < args.seconds <= MAX_SECONDS:
        raise DeployError(f"--seconds must be above 0 and at most {MAX_SECONDS} (the worker's "
                          "Lambda timeout is 15 minutes)")
    if args.workers > max_workers():
        raise DeployError(f"--workers must be at most {max_workers()} on Lambda: an instance "
                          f"runs one invocation at a time, and the worker may have "
                          f"{max_workers()} (its max_instances, its reserved concurrency)")


def reserved_concurrency(function: Function) -> int:
    """Its reserved concurrency: the most instances, each serving one request."""
    return function.max_instances


def max_workers() -> int:
    """Worker invocations a tick may start on Lambda: one per worker instance."""
    return reserved_concurrency(FUNCTIONS["worker"])


def function_env(function: Function, redis_url: str) -> dict[str, object]:
    """What a function's Lambda gets: the adapter's targets, its settings, and the
    URLs of what it needs (Vars of the URLs made before it)."""
    env: dict[str, object] = {"FUNCTION_TARGET": function.name}
    if function.name in EVENT_TARGET:
        env["FUNCTION_EVENT_TARGET"] = EVENT_TARGET[function.name]
    env.update(function.defaults)
    for need in function.needs:
        env[url_variable(need)] = redis_url if need == "redis" else Var(url_variable(need))
    if any(not FUNCTIONS[n].public for n in function.needs if n in FUNCTIONS):
        env["UPSTREAM_AUTH"] = "aws-sigv4"  # AWS_IAM function URLs: sign with the role
    return env


def _function_ops(session: Session, args: argparse.Namespace, function: Function
                  ) -> list[Operation]:
    name = f"{args.prefix}-{function.name}"
    seconds = args.seconds if function.name == "worker" else 0
    settings = {
        "Role": ROLE_ARN, "Handler": aws_package.HANDLER, "Runtime": aws_package.RUNTIME,
        "Timeout": function.timeout_for(seconds), "MemorySize": function.memory,
        "Environment": {"Variables": function_env(function, args.redis_url)},
        "Layers": args.layer,
        "Description": f"brkcoin {function.name} (Functions Framework via Mangum)",
    }
    code = Package(function.folder, vendor=not args.no_vendor)
    arn, url = Var(f"{function.name.upper()}_ARN"), Var(url_variable(function.name))
    where = {"FunctionName": name}
    auth = "NONE" if function.public else "AWS_IAM"
    operations: list[Operation] = [
        Ensure(f"the Lambda function {name}: create it, or update its code and settings",
               Call("lambda", "get_function", where,
                    capture=(arn, ("Configuration", "FunctionArn"))),
               (Call("lambda", "create_function", {**where, "Code": {"ZipFile": code},
                                                   "Tags": TAGS, **settings},
                     capture=(arn, ("FunctionArn",)), new_role=True),
                Call("lambda", "function_active_v2", where, waiter=True)),
               (Call("lambda", "update_function_code", {**where, "ZipFile": code}),
                Call("lambda", "function_updated_v2", where, waiter=True),
                Call("lambda", "update_function_configuration", {**where, **settings}),
                Call("lambda", "function_updated_v2", where, waiter=True)),
               session),
        Calls(f"let it run at most {reserved_concurrency(function)} instance(s) at once, one "
              "request each: its reserved concurrency (the spec's max_instances)",
              (Call("lambda", "put_function_concurrency", {
                  **where, "ReservedConcurrentExecutions": reserved_concurrency(function)}),),
              session),
        Ensure(f"its function URL, auth {auth} ({'public' if function.public else 'private'})",
               Call("lambda", "get_function_url_config", where),
               (Call("lambda", "create_function_url_config", {**where, "AuthType": auth},
                     capture=(url, ("FunctionUrl",))),),
               (Call("lambda", "update_function_url_config", {**where, "AuthType": auth},
                     capture=(url, ("FunctionUrl",))),),
               session),
    ]
    if function.public:  # both actions granted to everyone (InvokeFunction only via the URL)
        operations.append(Calls("let anyone call its URL", (
            *_permission(name, "public-url", Action="lambda:InvokeFunctionUrl", Principal="*",
                         FunctionUrlAuthType="NONE"),
            *_permission(name, "public-url-invoke", Action="lambda:InvokeFunction",
                         Principal="*", InvokedViaFunctionUrl=True)), session))
    callers = [f.name for f in FUNCTIONS.values() if function.name in f.needs]
    if callers and not function.public:
        operations.append(Calls(
            f"let the functions' role call its URL (signed by {', '.join(callers)})", (
                *_permission(name, "brkcoin-role-url", Action="lambda:InvokeFunctionUrl",
                             Principal=ROLE_ARN, FunctionUrlAuthType="AWS_IAM"),
                *_permission(name, "brkcoin-role-invoke", Action="lambda:InvokeFunction",
                             Principal=ROLE_ARN, InvokedViaFunctionUrl=True)), session))
    return operations


def _permission(function: object, statement: object, **permission: object) -> tuple[Call, Call]:
    """A resource-policy statement, replacing one of the same id (so settings update)."""
    where = {"FunctionName": function, "StatementId": statement}
    return (Call("lambda", "remove_permission", where, missing_ok=True),
            Call("lambda", "add_permission", {**where, **permission}))


def _tick_rules(session: Session, args: argparse.Namespace, keep: int) -> Prune:
    """Delete the tick rules but the first `keep` (all of them: keep=0), with their
    targets and the permissions they were given."""
    kept = frozenset(f"{args.prefix}-worker-tick-{slot}" for slot in range(1, keep + 1))
    why = f"beyond the {keep} (from a deploy with more workers)" if keep else "(one per worker)"
    return Prune(
        f"delete the worker-tick rules {why}",
        Call("events", "list_rules", {"NamePrefix": f"{args.prefix}-worker-tick", "Limit": 100},
             capture=(RULES, ("Rules", "*", "Name"))),
        RULE, kept,
        (Call("events", "remove_targets", {"Rule": RULE, "Ids": ["worker"]}, missing_ok=True),
         Call("events", "delete_rule", {"Name": RULE}, missing_ok=True),
         Call("lambda", "remove_permission", {"FunctionName": f"{args.prefix}-worker",
                                              "StatementId": RULE}, missing_ok=True)),
        session)


def _ticks(session: Session, args: argparse.Namespace) -> list[Operation]:
    worker = Var("WORKER_ARN")
    tick = json.dumps({"seconds": args.seconds})
    operations: list[Operation] = []
    for slot in range(1, args.workers + 1):
        rule, arn = f"{args.prefix}-worker-tick-{slot}", Var(f"TICK_{slot}_ARN")
        operations.append(Calls(
            f"EventBridge rule {rule} ({slot} of {args.workers}): invoke the worker with "
            f"{tick} on {args.schedule}", (
                Call("events", "put_rule", {
                    "Name": rule, "ScheduleExpression": args.schedule, "State": "ENABLED",
                    "Description": "brkcoin: one mining invocation of the worker per tick"},
                     capture=(arn, ("RuleArn",))),
                *_permission(worker, rule, Action="lambda:InvokeFunction",
                             Principal="events.amazonaws.com", SourceArn=arn),
                Call("events", "put_targets", {"Rule": rule, "Targets": [{
                    "Id": "worker", "Arn": worker, "Input": tick,
                    # A tick not delivered within a minute is stale: the next is on its way.
                    "RetryPolicy": {"MaximumRetryAttempts": 2,
                                    "MaximumEventAgeInSeconds": 60}}]})), session))
    return operations + [_tick_rules(session, args, args.workers)]


def _session(args: argparse.Namespace) -> Session:
    _validate_connection(args)
    return Session(args.endpoint_url, args.real_aws, args.region)


def _plan(session: Session, verb: str, operations: list[Operation], outcome: str = "") -> Plan:
    def said(values: Values) -> str:
        return outcome.replace("${WEBUI_URL}", str(values.get("WEBUI_URL", "")))

    return Plan(f"brkcoin {verb} aws on {session.where()} ({session.region})",
                tuple(operations),
                ("AWS API calls, made with boto3 in this order; ${NAME} is what an earlier "
                 "call returned",), preflight=session.connect, outcome=said)


def deploy_plan(args: argparse.Namespace) -> Plan:
    validate(args)
    session = _session(args)
    role = f"{args.prefix}-lambda"
    operations: list[Operation] = [
        Ensure(f"the functions' execution role {role}, unless it exists",
               Call("iam", "get_role", {"RoleName": role}, capture=(ROLE_ARN, ("Role", "Arn"))),
               (Call("iam", "create_role", {
                   "RoleName": role, "AssumeRolePolicyDocument": json.dumps(TRUST_POLICY),
                   "Description": "brkcoin Lambda functions",
                   "Tags": [{"Key": k, "Value": v} for k, v in TAGS.items()]},
                     capture=(ROLE_ARN, ("Role", "Arn"))),), (), session),
        Calls("its only permission: writing logs", (Call("iam", "put_role_policy", {
            "RoleName": role, "PolicyName": LOGS_POLICY_NAME,
            "PolicyDocument": json.dumps(LOGS_POLICY)}),), session),
    ]
    for name in ORDER:
        operations += _function_ops(session, args, FUNCTIONS[name])
    operations += _ticks(session, args)
    return _plan(session, "deploy", operations, "web UI: ${WEBUI_URL}")


def destroy_plan(args: argparse.Namespace) -> Plan:
    session = _session(args)
    role = f"{args.prefix}-lambda"
    operations: list[Operation] = [_tick_rules(session, args, keep=0)]
    for name in reversed(ORDER):
        where = {"FunctionName": f"{args.prefix}-{name}"}
        operations.append(Calls(f"delete the function {args.prefix}-{name} and its URL", (
            Call("lambda", "delete_function_url_config", where, missing_ok=True),
            Call("lambda", "delete_function", where, missing_ok=True)), session))
    operations.append(Calls(f"delete the role {role}", (
        Call("iam", "delete_role_policy", {"RoleName": role, "PolicyName": LOGS_POLICY_NAME},
             missing_ok=True),
        Call("iam", "delete_role", {"RoleName": role}, missing_ok=True)), session))
    return _plan(session, "destroy", operations,
                 f"removed whatever existed of {args.prefix}-*: the rules, functions and role")

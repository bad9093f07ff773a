"""`brkcoin deploy aws` / `destroy aws` against a real AWS API emulator: moto's server
mode as its own process on loopback, reached through localstack-client's endpoint
setting exactly as LocalStack would be. (Lambda code does not run in moto; the
adapter is run for real in test_lambda_adapter.py.)"""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile

import boto3
import botocore.exceptions
import pytest
from deploy_support import lesson_commands

from brkcoin.cli import main as brkcoin
from brkcoin.deploy import aws_package
from brkcoin.layout import FUNCTIONS, TICK
from brkcoin.platform.processes import free_port

PREFIX = "brktest"
NAMES = ("rng", "hasher", "worker", "webui")


def client(endpoint: str, service: str):
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


def publish_layer(endpoint: str) -> str:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("python/README", "the dependencies would be here")
    return client(endpoint, "lambda").publish_layer_version(
        LayerName=f"{PREFIX}-deps", Content={"ZipFile": archive.getvalue()},
        CompatibleRuntimes=["python3.12"])["LayerVersionArn"]


@pytest.fixture(scope="module")
def layer(moto_endpoint: str) -> str:
    """A layer standing for the dependencies (what --no-vendor needs; moto checks it)."""
    return publish_layer(moto_endpoint)


def deploy(endpoint: str, layer: str, *extra: str) -> int:
    return brkcoin(["deploy", "aws", "--endpoint-url", endpoint, "--prefix", PREFIX,
                    "--no-vendor", "--layer", layer, *extra])


def reserved(endpoint: str) -> dict[str, int | None]:
    """Each function's reserved concurrency on the emulator (None: not reserved)."""
    lam = client(endpoint, "lambda")
    found = {}
    for name in functions(lam):
        answer = lam.get_function_concurrency(FunctionName=f"{PREFIX}-{name}")
        value = answer.get("ReservedConcurrentExecutions")
        found[name] = None if value is None else int(value)
    return found


def destroy(endpoint: str) -> int:
    return brkcoin(["destroy", "aws", "--endpoint-url", endpoint, "--prefix", PREFIX])


def functions(lam) -> dict[str, dict]:
    found = {}
    for page in lam.get_paginator("list_functions").paginate():
        for function in page["Functions"]:
            if function["FunctionName"].startswith(f"{PREFIX}-"):
                found[function["FunctionName"].removeprefix(f"{PREFIX}-")] = function
    return found


def policy(lam, name: str) -> dict[str, dict]:
    statements = json.loads(lam.get_policy(FunctionName=f"{PREFIX}-{name}")["Policy"])
    return {s["Sid"]: s for s in statements["Statement"]}


def url_auth_type(statement: dict) -> str | None:
    """AWS writes the auth type as a Condition; moto keeps it as a flat key."""
    condition = statement.get("Condition", {}).get("StringEquals", {})
    return condition.get("lambda:FunctionUrlAuthType") or statement.get("FunctionUrlAuthType")


def rules(endpoint: str) -> dict[str, dict]:
    """The tick rules, each with its targets."""
    events = client(endpoint, "events")
    found = events.list_rules(NamePrefix=f"{PREFIX}-worker-tick")["Rules"]
    return {r["Name"]: {**r, "Targets": events.list_targets_by_rule(Rule=r["Name"])["Targets"]}
            for r in found}


def snapshot(endpoint: str) -> dict:
    """Everything the deploy is expected to leave, in comparable form."""
    lam = client(endpoint, "lambda")
    found = functions(lam)
    return {
        "functions": found,
        "urls": {n: lam.get_function_url_config(FunctionName=f"{PREFIX}-{n}") for n in found},
        "policies": {n: policy(lam, n) for n in found},
        "rules": rules(endpoint),
        "role_policies": client(endpoint, "iam").list_role_policies(
            RoleName=f"{PREFIX}-lambda")["PolicyNames"],
        "reserved": reserved(endpoint),
    }


def test_deploy_update_destroy(moto_endpoint: str, layer: str, capsys) -> None:
    assert deploy(moto_endpoint, layer, "--redis-url", "redis://wallet-1:6379/0") == 0
    first = snapshot(moto_endpoint)

    assert set(first["functions"]) == set(NAMES)
    for name, function in first["functions"].items():
        spec = FUNCTIONS[name]
        assert function["Runtime"] == "python3.12"
        assert function["Handler"] == "brkcoin_lambda.handler"
        assert function["MemorySize"] == spec.memory
        timeout = spec.timeout_for(TICK.seconds) if name == "worker" else spec.timeout
        assert function["Timeout"] == timeout, name
        assert [x["Arn"] for x in function["Layers"]] == [layer]
        env = function["Environment"]["Variables"]
        assert env["FUNCTION_TARGET"] == name
        assert {k: env[k] for k in spec.defaults} == spec.defaults
    urls = {n: c["FunctionUrl"] for n, c in first["urls"].items()}
    assert {n: c["AuthType"] for n, c in first["urls"].items()} == {
        n: "NONE" if FUNCTIONS[n].public else "AWS_IAM" for n in NAMES}
    worker_env = first["functions"]["worker"]["Environment"]["Variables"]
    assert worker_env == {"FUNCTION_TARGET": "worker", "FUNCTION_EVENT_TARGET": "worker_event",
                          "REDIS_URL": "redis://wallet-1:6379/0", "WORKER_DELAY": "0.1",
                          "RNG_URL": urls["rng"], "HASHER_URL": urls["hasher"],
                          "UPSTREAM_AUTH": "aws-sigv4"}  # it signs its calls itself
    webui_env = first["functions"]["webui"]["Environment"]["Variables"]
    assert webui_env == {"FUNCTION_TARGET": "webui", "REDIS_URL": "redis://wallet-1:6379/0",
                         "RNG_URL": urls["rng"], "HASHER_URL": urls["hasher"],
                         "WORKER_URL": urls["worker"], "UPSTREAM_AUTH": "aws-sigv4"}
    assert "UPSTREAM_AUTH" not in first["functions"]["rng"]["Environment"]["Variables"]
    # At most max_instances instances each, one request at a time on Lambda.
    assert first["reserved"] == {n: FUNCTIONS[n].max_instances for n in NAMES}

    public = first["policies"]["webui"]["public-url"]
    assert public["Principal"] == "*" and public["Action"] == "lambda:InvokeFunctionUrl"
    assert url_auth_type(public) == "NONE"
    assert first["policies"]["webui"]["public-url-invoke"]["Action"] == "lambda:InvokeFunction"
    for private in ("rng", "hasher", "worker"):
        assert all(s["Principal"] != "*" for s in first["policies"][private].values()), private
    for backend in ("rng", "hasher", "worker"):  # the role may call their AWS_IAM URLs
        statement = first["policies"][backend]["brkcoin-role-url"]
        assert statement["Action"] == "lambda:InvokeFunctionUrl"
        assert url_auth_type(statement) == "AWS_IAM"

    [(name, rule)] = first["rules"].items()
    assert name == f"{PREFIX}-worker-tick-1"
    assert (rule["ScheduleExpression"], rule["State"]) == ("rate(1 minute)", "ENABLED")
    [target] = rule["Targets"]
    assert target["Arn"] == first["functions"]["worker"]["FunctionArn"]
    assert json.loads(target["Input"]) == {"seconds": TICK.seconds}
    invoke = first["policies"]["worker"][name]
    assert invoke["Principal"] == {"Service": "events.amazonaws.com"}
    assert invoke["Action"] == "lambda:InvokeFunction"
    assert invoke["Condition"]["ArnLike"]["AWS:SourceArn"] == rule["Arn"]

    # Again, with other settings: the same resources, updated in place.
    assert deploy(moto_endpoint, layer, "--redis-url", "redis://wallet-2:6379/0",
                  "--seconds", "50") == 0
    second = snapshot(moto_endpoint)
    assert set(second["functions"]) == set(NAMES)
    assert {n: c["FunctionUrl"] for n, c in second["urls"].items()} == urls
    assert {n: set(p) for n, p in second["policies"].items()} == {
        n: set(p) for n, p in first["policies"].items()}
    assert second["rules"][name]["Arn"] == rule["Arn"] and len(second["rules"]) == 1
    assert first["role_policies"] == second["role_policies"] == ["brkcoin-logs"]
    assert json.loads(second["rules"][name]["Targets"][0]["Input"]) == {"seconds": 50}
    env = second["functions"]["worker"]["Environment"]["Variables"]
    assert env["REDIS_URL"] == "redis://wallet-2:6379/0"
    assert second["reserved"] == first["reserved"]

    capsys.readouterr()
    assert destroy(moto_endpoint) == 0
    assert functions(client(moto_endpoint, "lambda")) == {}
    assert rules(moto_endpoint) == {}
    with pytest.raises(botocore.exceptions.ClientError, match="NoSuchEntity"):
        client(moto_endpoint, "iam").get_role(RoleName=f"{PREFIX}-lambda")
    # Destroying what is already gone is not an error.
    assert destroy(moto_endpoint) == 0


def test_n_workers_are_n_rules_each_invoking_the_worker(moto_endpoint: str, layer: str) -> None:
    redis = ("--redis-url", "redis://wallet:6379/0")
    try:
        assert deploy(moto_endpoint, layer, *redis, "--workers", "3") == 0
        found = snapshot(moto_endpoint)
        worker = found["functions"]["worker"]["FunctionArn"]
        assert sorted(found["rules"]) == [f"{PREFIX}-worker-tick-{n}" for n in (1, 2, 3)]
        for name, rule in found["rules"].items():
            [target] = rule["Targets"]
            assert (target["Arn"], json.loads(target["Input"])) == (
                worker, {"seconds": TICK.seconds})
            allowed = found["policies"]["worker"][name]  # EventBridge may invoke it
            assert allowed["Condition"]["ArnLike"]["AWS:SourceArn"] == rule["Arn"]

        # Fewer workers: the rules beyond them go, with their permissions.
        assert deploy(moto_endpoint, layer, *redis, "--workers", "1") == 0
        found = snapshot(moto_endpoint)
        assert list(found["rules"]) == [f"{PREFIX}-worker-tick-1"]
        ticks = {sid for sid in found["policies"]["worker"] if "worker-tick" in sid}
        assert ticks == {f"{PREFIX}-worker-tick-1"}
    finally:
        assert destroy(moto_endpoint) == 0


def test_reserved_concurrency_follows_the_spec(moto_endpoint: str, layer: str,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys) -> None:
    """Other maxima in the spec, other reservations on the emulator; and the workers a
    tick may start are the worker's instances (one invocation each)."""
    for name, most in (("rng", 3), ("worker", 4)):
        monkeypatch.setitem(FUNCTIONS, name, dataclasses.replace(FUNCTIONS[name],
                                                                 max_instances=most))
    redis = ("--redis-url", "redis://wallet:6379/0")
    try:
        assert deploy(moto_endpoint, layer, *redis, "--workers", "4") == 0
        assert reserved(moto_endpoint) == {"rng": 3, "hasher": FUNCTIONS["hasher"].max_instances,
                                           "worker": 4, "webui": FUNCTIONS["webui"].max_instances}
        capsys.readouterr()
        assert deploy(moto_endpoint, layer, *redis, "--workers", "5") == 2
        assert capsys.readouterr().err.startswith(
            "brkcoin deploy aws: --workers must be at most 4 on Lambda")
    finally:
        assert destroy(moto_endpoint) == 0
    assert functions(client(moto_endpoint, "lambda")) == {}


def test_the_reservations_fit_a_default_account(moto_quota_endpoint: str) -> None:
    """A region's 1000 concurrent executions, 100 of them never reservable: the spec's
    maxima (Lambda instances) fit, with the most workers a tick."""
    layer = publish_layer(moto_quota_endpoint)
    redis = ("--redis-url", "redis://wallet:6379/0")
    workers = str(FUNCTIONS["worker"].max_instances)
    try:
        assert deploy(moto_quota_endpoint, layer, *redis, "--workers", workers) == 0
        assert reserved(moto_quota_endpoint) == {n: FUNCTIONS[n].max_instances for n in NAMES}
    finally:
        assert destroy(moto_quota_endpoint) == 0
    assert functions(client(moto_quota_endpoint, "lambda")) == {}


def test_the_lessons_aws_commands_cap_the_deployed_rng(capsys) -> None:
    """The README's steps on Lambda: rng's reserved concurrency 1, 4, then the spec's,
    on the function the deploy names (default prefix)."""
    assert brkcoin(["deploy", "aws", "--dry-run", "--workers", "10",
                    "--redis-url", "redis://wallet:6379/0"]) == 0
    assert "put_function_concurrency(FunctionName='brkcoin-rng'" in capsys.readouterr().out
    steps = []
    for command in lesson_commands("aws"):
        assert command[:3] == ["aws", "lambda", "put-function-concurrency"], command
        assert command[command.index("--function-name") + 1] == "brkcoin-rng"
        steps.append(int(command[command.index("--reserved-concurrent-executions") + 1]))
    assert steps == [1, 4, FUNCTIONS["rng"].max_instances]


def test_the_dry_run_is_the_plan_apply_carries_out(moto_endpoint: str, layer: str,
                                                   capsys) -> None:
    argv = ["--endpoint-url", moto_endpoint, "--prefix", PREFIX, "--no-vendor", "--layer",
            layer, "--redis-url", "redis://wallet:6379/0", "--workers", "2"]
    assert brkcoin(["deploy", "aws", "--dry-run", *argv]) == 0
    printed = [line.split(". ", 1)[1] for line in capsys.readouterr().out.splitlines()
               if line.startswith("# ") and ". " in line[:6]]
    try:
        assert brkcoin(["deploy", "aws", *argv]) == 0
        done = [line.split("] ", 1)[1] for line in capsys.readouterr().out.splitlines()
                if line.startswith("[")]
        assert done == printed
        assert sum("EventBridge rule" in line for line in done) == 2
    finally:
        assert destroy(moto_endpoint) == 0


def test_unreachable_endpoint_is_a_clear_error(layer: str, capsys) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert brkcoin(["deploy", "aws", "--endpoint-url", url, "--no-vendor", "--layer", layer,
                    "--redis-url", "redis://wallet:6379/0"]) == 2
    err = capsys.readouterr().err
    assert f"no AWS API emulator answers at {url}" in err and "Traceback" not in err


@pytest.mark.parametrize("options, message", [
    ([], "--redis-url is required"),
    (["--redis-url", "wallet:6379"], "--redis-url must look like redis://HOST:6379/0"),
    (["--redis-url", "redis://wallet:6379/0", "--no-vendor"], "--no-vendor needs --layer ARN"),
    (["--redis-url", "redis://wallet:6379/0", "--seconds", "900"], "--seconds must be"),
    (["--redis-url", "redis://wallet:6379/0", "--schedule", "* * * * *"],
     "--schedule '* * * * *' is not an EventBridge schedule"),
    (["--redis-url", "redis://wallet:6379/0", "--real-aws", "--endpoint-url", "http://x:1"],
     "--real-aws and --endpoint-url exclude each other"),
    (["--redis-url", "redis://wallet:6379/0", "--workers",
      str(FUNCTIONS["worker"].max_instances + 1)],
     f"--workers must be at most {FUNCTIONS['worker'].max_instances} on Lambda"),
])
@pytest.mark.parametrize("dry_run", [["--dry-run"], []], ids=["dry-run", "apply"])
def test_inputs_are_checked_up_front(options: list[str], message: str, dry_run: list[str],
                                     capsys, monkeypatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    assert brkcoin(["deploy", "aws", *dry_run, *options]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"brkcoin deploy aws: {message}")
    assert err.count("\n") == 1


@pytest.mark.parametrize("name", NAMES)
def test_package_holds_the_folder_and_the_adapter(name: str) -> None:
    folder = FUNCTIONS[name].folder
    archive = zipfile.ZipFile(io.BytesIO(aws_package.build_zip(folder)))
    names = set(archive.namelist())
    assert {"main.py", "requirements.txt", "brkcoin_lambda.py"} <= names
    assert "sigv4_proxy.py" not in names  # the functions sign their own calls
    assert not any("__pycache__" in n for n in names)
    assert archive.read("main.py") == (folder / "main.py").read_bytes()
    # Same files, same bytes: a redeploy without changes keeps the CodeSha256.
    assert aws_package.build_zip(folder) == aws_package.build_zip(folder)


def test_vendoring_installs_lambda_wheels_of_both_requirement_files() -> None:
    folder = FUNCTIONS["worker"].folder
    command = aws_package.pip_command(folder, folder / "deps")
    assert command[command.index("--platform") + 1] == "manylinux2014_x86_64"
    assert command[command.index("--python-version") + 1] == "3.12"
    assert "--only-binary=:all:" in command
    requirements = [command[i + 1] for i, w in enumerate(command) if w == "-r"]
    assert requirements == [str(folder / "requirements.txt"),
                            str(aws_package.ADAPTER_REQUIREMENTS)]

"""`brkcoin deploy aws` / `destroy aws` against a real AWS API emulator: moto's server
mode as its own process on loopback, reached through localstack-client's endpoint
setting exactly as LocalStack would be. (Lambda code does not run in moto; the
adapter is run for real in test_lambda_adapter.py.)"""

from __future__ import annotations

import io
import json
import zipfile

import boto3
import botocore.exceptions
import pytest

from brkcoin.cli import main as brkcoin
from brkcoin.deploy import aws_package
from brkcoin.layout import FUNCTIONS
from brkcoin.processes import free_port

PREFIX = "brktest"
NAMES = ("rng", "hasher", "worker", "webui")


def client(endpoint: str, service: str):
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


def deploy(endpoint: str, *extra: str) -> int:
    return brkcoin(["deploy", "aws", "--endpoint-url", endpoint, "--prefix", PREFIX,
                    "--no-vendor", *extra])


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


def snapshot(endpoint: str) -> dict:
    """Everything the deploy is expected to leave, in comparable form."""
    lam, events = client(endpoint, "lambda"), client(endpoint, "events")
    found = functions(lam)
    rule = events.describe_rule(Name=f"{PREFIX}-worker-tick")
    return {
        "functions": found,
        "urls": {n: lam.get_function_url_config(FunctionName=f"{PREFIX}-{n}") for n in found},
        "policies": {n: policy(lam, n) for n in found},
        "rule": rule,
        "targets": events.list_targets_by_rule(Rule=f"{PREFIX}-worker-tick")["Targets"],
        "role_policies": client(endpoint, "iam").list_role_policies(
            RoleName=f"{PREFIX}-lambda")["PolicyNames"],
    }


def test_deploy_update_destroy(moto_endpoint: str, capsys) -> None:
    assert deploy(moto_endpoint, "--redis-url", "redis://wallet-1:6379/0") == 0
    first = snapshot(moto_endpoint)

    assert set(first["functions"]) == set(NAMES)
    for name, function in first["functions"].items():
        assert function["Runtime"] == "python3.12"
        assert function["Handler"] == "brkcoin_lambda.handler"
        assert function["Environment"]["Variables"]["FUNCTION_TARGET"] == name
    urls = {n: c["FunctionUrl"].rstrip("/") for n, c in first["urls"].items()}
    assert {n: c["AuthType"] for n, c in first["urls"].items()} == {
        "rng": "AWS_IAM", "hasher": "AWS_IAM", "worker": "AWS_IAM", "webui": "NONE"}
    worker_env = first["functions"]["worker"]["Environment"]["Variables"]
    assert worker_env == {"FUNCTION_TARGET": "worker", "FUNCTION_EVENT_TARGET": "worker_event",
                          "REDIS_URL": "redis://wallet-1:6379/0",
                          "RNG_URL": urls["rng"], "HASHER_URL": urls["hasher"],
                          "SIGN_URLS": "RNG_URL,HASHER_URL"}
    webui_env = first["functions"]["webui"]["Environment"]["Variables"]
    assert webui_env["WORKER_URL"] == urls["worker"]
    assert webui_env["SIGN_URLS"] == "RNG_URL,HASHER_URL,WORKER_URL"
    assert first["functions"]["worker"]["Timeout"] >= 55 + 30

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

    rule = first["rule"]
    assert (rule["ScheduleExpression"], rule["State"]) == ("rate(1 minute)", "ENABLED")
    [target] = first["targets"]
    assert target["Arn"] == first["functions"]["worker"]["FunctionArn"]
    assert json.loads(target["Input"]) == {"seconds": 55}
    invoke = first["policies"]["worker"]["eventbridge-tick"]
    assert invoke["Principal"] == {"Service": "events.amazonaws.com"}
    assert invoke["Action"] == "lambda:InvokeFunction"
    assert invoke["Condition"]["ArnLike"]["AWS:SourceArn"] == rule["Arn"]

    # Again, with other settings: the same resources, updated in place.
    assert deploy(moto_endpoint, "--redis-url", "redis://wallet-2:6379/0", "--seconds", "50") == 0
    second = snapshot(moto_endpoint)
    assert set(second["functions"]) == set(NAMES)
    assert {n: c["FunctionUrl"] for n, c in second["urls"].items()} == {
        n: c["FunctionUrl"] for n, c in first["urls"].items()}
    assert {n: set(p) for n, p in second["policies"].items()} == {
        n: set(p) for n, p in first["policies"].items()}
    assert second["rule"]["Arn"] == rule["Arn"] and len(second["targets"]) == 1
    assert first["role_policies"] == second["role_policies"] == ["brkcoin-logs"]
    assert json.loads(second["targets"][0]["Input"]) == {"seconds": 50}
    env = second["functions"]["worker"]["Environment"]["Variables"]
    assert env["REDIS_URL"] == "redis://wallet-2:6379/0"

    capsys.readouterr()
    assert brkcoin(["destroy", "aws", "--endpoint-url", moto_endpoint, "--prefix", PREFIX]) == 0
    assert "function brktest-worker" in capsys.readouterr().out
    assert functions(client(moto_endpoint, "lambda")) == {}
    with pytest.raises(botocore.exceptions.ClientError, match="ResourceNotFound"):
        client(moto_endpoint, "events").describe_rule(Name=f"{PREFIX}-worker-tick")
    with pytest.raises(botocore.exceptions.ClientError, match="NoSuchEntity"):
        client(moto_endpoint, "iam").get_role(RoleName=f"{PREFIX}-lambda")
    # Destroying what is already gone is not an error.
    assert brkcoin(["destroy", "aws", "--endpoint-url", moto_endpoint, "--prefix", PREFIX]) == 0
    assert "nothing" in capsys.readouterr().out


def test_unreachable_endpoint_is_a_clear_error(capsys) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert brkcoin(["deploy", "aws", "--endpoint-url", url, "--no-vendor"]) == 2
    err = capsys.readouterr().err
    assert f"no AWS API emulator answers at {url}" in err and "Traceback" not in err


def test_real_aws_needs_a_redis_url(capsys, monkeypatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert brkcoin(["deploy", "aws", "--real-aws", "--redis-url", ""]) == 2
    assert "--redis-url" in capsys.readouterr().err


@pytest.mark.parametrize("name", NAMES)
def test_package_holds_the_folder_and_the_adapter(name: str) -> None:
    folder = FUNCTIONS[name].folder
    archive = zipfile.ZipFile(io.BytesIO(aws_package.build_zip(folder)))
    names = set(archive.namelist())
    assert {"main.py", "requirements.txt", "brkcoin_lambda.py", "sigv4_proxy.py"} <= names
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

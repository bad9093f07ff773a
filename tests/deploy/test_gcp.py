"""`brkcoin deploy gcp`: the plan, command by command; its printed form run by bash
against a stand-in `gcloud` that records its argv (fake_gcloud.py: no cloud here), so
the copy-paste script is shown to pass every argument through intact; and every flag
checked against the installed gcloud's own --help when gcloud is there. Hostile
values in every option: test_gcp_injection.py."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fake_gcloud import FakeGcloud, expected_calls

from brkcoin.cli import main as brkcoin
from brkcoin.deploy import gcp

ARGS = ["--project", "demo", "--region", "europe-west1"]
SA = "{}@demo.iam.gserviceaccount.com"


class Shown(dict[str, str]):
    """Variables shown as the script writes them: ${NAME}."""

    def __missing__(self, name: str) -> str:
        return f"${{{name}}}"


def shown(command: gcp.Command) -> list[str]:
    return gcp.argv(command, Shown())


def plan(*extra: str) -> list[gcp.Step]:
    parser = argparse.ArgumentParser()
    gcp.add_deploy_arguments(parser)
    args = parser.parse_args([*ARGS, *extra])
    gcp.validate(args)
    return gcp.deploy_plan(args)


def flags(command: gcp.Command) -> dict[str, str]:
    out = {}
    for word in shown(command):
        if word.startswith("--"):
            key, _, value = word.partition("=")
            out[key] = value
    return out


def find(steps: list[gcp.Step], *prefix: str) -> list[gcp.Step]:
    return [s for s in steps if tuple(s.command[:len(prefix)]) == prefix]


def test_apis_network_and_redis_come_first() -> None:
    steps = plan()
    assert steps[0].command[:3] == ("gcloud", "services", "enable")
    assert {"run.googleapis.com", "redis.googleapis.com", "cloudscheduler.googleapis.com",
            "cloudbuild.googleapis.com"} <= set(steps[0].command)
    [subnet] = find(steps, "gcloud", "compute", "networks", "subnets", "create")
    assert "--enable-private-ip-google-access" in subnet.command
    [redis] = find(steps, "gcloud", "redis", "instances", "create")
    assert flags(redis.command)["--network"] == "projects/demo/global/networks/brkcoin"
    assert redis.check[:4] == ("gcloud", "redis", "instances", "describe")
    [host] = [s for s in steps if s.capture == gcp.REDIS_HOST]
    assert steps.index(host) > steps.index(redis)


def test_functions_are_private_but_the_web_ui() -> None:
    deploys = {s.command[3]: s.command for s in find(plan(), "gcloud", "run", "deploy")}
    assert list(deploys) == ["rng", "hasher", "worker", "webui"]
    for name, command in deploys.items():
        f = flags(command)
        folder = "webui" if name == "webui" else f"functions/{name}"
        assert (f["--source"], f["--function"], f["--base-image"]) == (folder, name, "python312")
        assert f["--service-account"] == SA.format(f"brkcoin-{name}")
        public = name == "webui"
        assert ("--allow-unauthenticated" in f) is public, name
        assert ("--no-allow-unauthenticated" in f) is not public, name


def test_redis_is_reached_by_direct_vpc_egress() -> None:
    deploys = {s.command[3]: flags(s.command) for s in find(plan(), "gcloud", "run", "deploy")}
    for name in ("worker", "webui"):
        f = deploys[name]
        assert (f["--network"], f["--subnet"]) == ("brkcoin", "brkcoin-europe-west1")
        assert f["--vpc-egress"] == "private-ranges-only"
        assert "REDIS_URL=redis://${REDIS_HOST}:6379/0" in f["--set-env-vars"]
    assert "--network" not in deploys["rng"] and "--network" not in deploys["hasher"]
    assert "RNG_URL=${RNG_URL}" in deploys["worker"]["--set-env-vars"]
    assert int(deploys["worker"]["--timeout"]) > 55


def test_the_worker_calls_private_backends_with_id_tokens() -> None:
    def worker_env(*options: str) -> str:
        [worker] = [s for s in find(plan(*options), "gcloud", "run", "deploy")
                    if s.command[3] == "worker"]
        return flags(worker.command)["--set-env-vars"]

    assert "UPSTREAM_AUTH=google-id-token" in worker_env()
    assert "UPSTREAM_AUTH" not in worker_env("--backend-access", "network")


def test_one_service_account_per_role_with_only_invoker_grants() -> None:
    steps = plan()
    created = [s.command[4] for s in find(steps, "gcloud", "iam", "service-accounts", "create")]
    assert created == [f"brkcoin-{r}" for r in ("rng", "hasher", "worker", "webui", "scheduler")]
    grants = {(s.command[4], flags(s.command)["--member"], flags(s.command)["--role"])
              for s in find(steps, "gcloud", "run", "services", "add-iam-policy-binding")}
    worker, scheduler = SA.format("brkcoin-worker"), SA.format("brkcoin-scheduler")
    assert grants == {("rng", f"serviceAccount:{worker}", "roles/run.invoker"),
                      ("hasher", f"serviceAccount:{worker}", "roles/run.invoker"),
                      ("worker", f"serviceAccount:{scheduler}", "roles/run.invoker")}


def test_the_scheduler_calls_the_worker_with_oidc() -> None:
    [job] = find(plan(), "gcloud", "scheduler", "jobs", "create", "http")
    for command in (job.command, job.if_exists):
        f = flags(command)
        assert f["--oidc-service-account-email"] == SA.format("brkcoin-scheduler")
        assert f["--oidc-token-audience"] == "${WORKER_URL}"
        assert f["--uri"] == "${WORKER_URL}/" and f["--http-method"] == "POST"
        assert json.loads(f["--message-body"]) == {"seconds": 55}
        assert f["--schedule"] == "* * * * *"
    assert job.if_exists[:5] == ("gcloud", "scheduler", "jobs", "update", "http")


def test_variables_are_set_before_use() -> None:
    known: set[gcp.Var] = set()
    used: set[gcp.Var] = set()
    for step in plan("--backend-access", "network") + plan():
        parts = [p for w in step.check + step.command + step.if_exists
                 for p in (w if isinstance(w, tuple) else (w,))]
        variables = {p for p in parts if isinstance(p, gcp.Var)}
        assert variables <= known, step
        assert not any("$" in p for p in parts if isinstance(p, str)), step  # text is text
        used |= variables
        if step.capture:
            known.add(step.capture)
    assert {v.name for v in used} == {"REDIS_HOST", "RNG_URL", "HASHER_URL", "WORKER_URL"}


def test_network_private_backends() -> None:
    steps = plan("--backend-access", "network")
    deploys = {s.command[3]: flags(s.command) for s in find(steps, "gcloud", "run", "deploy")}
    for name in ("rng", "hasher"):
        assert deploys[name]["--ingress"] == "internal"
        assert "--allow-unauthenticated" in deploys[name]
    assert deploys["worker"]["--vpc-egress"] == "all-traffic"
    assert "--no-allow-unauthenticated" in deploys["worker"]
    granted = [s.command[4] for s in find(steps, "gcloud", "run", "services",
                                          "add-iam-policy-binding")]
    assert granted == ["worker"]  # only the scheduler's grant is left


def test_existing_network_is_used_not_created() -> None:
    steps = plan("--network", "shared", "--subnet", "shared-ew1")
    assert not find(steps, "gcloud", "compute")
    worker = flags(find(steps, "gcloud", "run", "deploy", "worker")[0].command)
    assert (worker["--network"], worker["--subnet"]) == ("shared", "shared-ew1")


@pytest.mark.parametrize("exists", [False, True], ids=["fresh", "again"])
def test_dry_run_output_runs_in_bash_as_planned(tmp_path: Path, capsys, exists: bool) -> None:
    assert brkcoin(["deploy", "gcp", "--dry-run", *ARGS]) == 0
    calls = FakeGcloud.install(tmp_path).run_script(capsys.readouterr().out, exists)
    assert calls == expected_calls(plan(), exists)
    worker = [c for c in calls if c[:3] == ["run", "deploy", "worker"]][0]
    assert ("--set-env-vars=REDIS_URL=redis://10.0.0.3:6379/0,"
            "RNG_URL=https://rng-abc123-ew.a.run.app,"
            "HASHER_URL=https://hasher-abc123-ew.a.run.app,") in " ".join(worker)


def test_deploy_runs_the_same_plan_without_a_shell(tmp_path: Path, monkeypatch) -> None:
    fake = FakeGcloud.install(tmp_path)
    for name, value in fake.env().items():
        monkeypatch.setenv(name, value)
    assert brkcoin(["deploy", "gcp", *ARGS]) == 0
    calls = fake.calls()
    assert calls[0][:2] == ["auth", "list"]
    assert calls[1:] == expected_calls(plan(), exists=False)


def test_without_gcloud_a_clear_message(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no gcloud here
    assert brkcoin(["deploy", "gcp", *ARGS]) == 2
    err = capsys.readouterr().err
    assert "`gcloud` is not installed" in err and "--dry-run" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("missing, message", [
    ([], "--project is required"),
    (["--project", "demo"], "--region is required"),
    (["--project", "Demo!", "--region", "europe-west1"], "is not a project id"),
])
def test_inputs_are_checked(missing: list[str], message: str, capsys, monkeypatch) -> None:
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    monkeypatch.delenv("GOOGLE_CLOUD_REGION", raising=False)
    assert brkcoin(["deploy", "gcp", "--dry-run", *missing]) == 2
    assert message in capsys.readouterr().err


def test_destroy_plan_removes_what_deploy_made(capsys) -> None:
    assert brkcoin(["destroy", "gcp", "--dry-run", *ARGS]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    deleted = [shlex.split(line.split("&&", 1)[1])[:5] for line in lines]
    assert [d[1:3] for d in deleted] == [["scheduler", "jobs"]] + [["run", "services"]] * 4 + [
        ["iam", "service-accounts"]] * 5 + [["redis", "instances"], ["compute", "networks"],
                                            ["compute", "networks"]]
    assert all("delete" in d for d in deleted)


VERBS = ("create", "deploy", "describe", "enable", "update", "add-iam-policy-binding", "delete")


def _command_path(words: Sequence[str]) -> tuple[str, ...]:
    """`run services describe rng --region=x` -> ("run", "services", "describe")."""
    path = []
    for word in words:
        path.append(word)
        if word in VERBS:
            break
    if path[-1] in ("create", "update") and words[len(path):len(path) + 1] == ["http"]:
        path.append("http")  # scheduler jobs create http
    return tuple(path)


def _help_flags(path: tuple[str, ...]) -> set[str]:
    env = {**os.environ, "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
           "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "1",
           "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false"}
    result = subprocess.run(["gcloud", *path, "--help"], capture_output=True, text=True,
                            env=env, timeout=60, check=True)
    return set(re.findall(r"--[a-z][a-z0-9-]*", result.stdout))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("gcloud") is None, reason="gcloud not installed")
def test_every_flag_is_known_to_the_installed_gcloud(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    gcp.add_destroy_arguments(parser)
    steps = (plan() + plan("--backend-access", "network")
             + gcp.destroy_plan(parser.parse_args(ARGS)))
    by_path: dict[tuple[str, ...], set[str]] = {}
    for step in steps:
        for command in (step.command, step.check, step.if_exists):
            if command:
                path = _command_path(shown(command)[1:])
                by_path.setdefault(path, set()).update(flags(command))
    with ThreadPoolExecutor(4) as pool:
        known = dict(zip(by_path, pool.map(_help_flags, by_path), strict=True))
    unknown = {" ".join(p): sorted(f - known[p]) for p, f in by_path.items() if f - known[p]}
    assert unknown == {}
    assert len(by_path) >= 12  # every command group of the plan was looked up

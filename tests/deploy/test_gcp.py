"""`brkcoin deploy gcp`: the plan, command by command; its printed form run by bash
against a stand-in `gcloud` that records its argv (fake_gcloud.py: no cloud here), so
the copy-paste script is shown to pass every argument through intact; and every flag
checked against the installed gcloud's own --help when gcloud is there. Hostile
values in every option: test_gcp_injection.py."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from deploy_support import lesson_commands
from fake_gcloud import FakeGcloud, expected_calls

from brkcoin.cli import build_parser
from brkcoin.cli import main as brkcoin
from brkcoin.deploy import gcp
from brkcoin.deploy.plan import Operation
from brkcoin.deploy.shell import Command, Each, Step, argv
from brkcoin.layout import FUNCTIONS, TICK

ARGS = ["--project", "my-project", "--region", "europe-west1"]
SA = "{}@my-project.iam.gserviceaccount.com"


class Shown(dict[str, str]):
    """Variables shown as the script writes them: ${NAME}."""

    def __missing__(self, name: str) -> str:
        return f"${{{name}}}"


def shown(command: Command) -> list[str]:
    return argv(command, Shown())


def plan(*extra: str, verb: str = "deploy") -> list[Operation]:
    args = build_parser().parse_args([verb, "gcp", *ARGS, *extra])
    made = gcp.deploy_plan(args) if verb == "deploy" else gcp.destroy_plan(args)
    return list(made.operations)


def steps_of(operations: list[Operation]) -> list[Step]:
    return [s for s in operations if isinstance(s, Step)]


def flags(command: Command) -> dict[str, str]:
    out = {}
    for word in shown(command):
        if word.startswith("--"):
            key, _, value = word.partition("=")
            out[key] = value
    return out


def find(steps: list[Operation], *prefix: str) -> list[Step]:
    return [s for s in steps_of(steps) if tuple(s.command[:len(prefix)]) == prefix]


def test_apis_network_and_redis_come_first() -> None:
    steps = plan()
    assert steps[0].command[:3] == ("gcloud", "services", "enable")
    assert {"run.googleapis.com", "redis.googleapis.com", "cloudscheduler.googleapis.com",
            "cloudbuild.googleapis.com"} <= set(steps[0].command)
    [subnet] = find(steps, "gcloud", "compute", "networks", "subnets", "create")
    assert "--enable-private-ip-google-access" in subnet.command
    [redis] = find(steps, "gcloud", "redis", "instances", "create")
    assert flags(redis.command)["--network"] == "projects/my-project/global/networks/brkcoin"
    assert redis.check[:4] == ("gcloud", "redis", "instances", "describe")
    [host] = [s for s in steps_of(steps) if s.capture == gcp.REDIS_HOST]
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


def test_each_function_is_deployed_as_its_spec_says() -> None:
    deploys = {s.command[3]: flags(s.command) for s in find(plan(), "gcloud", "run", "deploy")}
    for name, f in deploys.items():
        spec = FUNCTIONS[name]
        assert f["--concurrency"] == str(spec.concurrency), name
        assert f["--memory"] == f"{spec.memory}Mi", name
        assert f["--min-instances"] == str(spec.min_instances), name
        assert f["--max-instances"] == str(spec.max_instances), name
        timeout = spec.timeout_for(TICK.seconds) if name == "worker" else spec.timeout
        assert f["--timeout"] == str(timeout), name
        env = dict(pair.split("=", 1) for pair in f["--set-env-vars"].split(","))
        assert {k: env[k] for k in spec.defaults} == spec.defaults, name
        assert set(spec.wiring) <= set(env), name
    # The web UI probes every function: it gets all their URLs (and Redis').
    webui = deploys["webui"]["--set-env-vars"]
    assert ("REDIS_URL=redis://${REDIS_HOST}:6379/0,RNG_URL=${RNG_URL},HASHER_URL=${HASHER_URL},"
            "WORKER_URL=${WORKER_URL}") in webui
    assert "THREADS" not in " ".join(" ".join(shown(s.command)) for s in steps_of(plan()))


def test_the_scale_flags_follow_the_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    """Other bounds and concurrency in the spec, other flags: rendered, not written down."""
    changed = {"rng": {"concurrency": 1, "min_instances": 2, "max_instances": 4},
               "worker": {"concurrency": 3, "min_instances": 1, "max_instances": 6}}
    for name, values in changed.items():
        monkeypatch.setitem(FUNCTIONS, name, dataclasses.replace(FUNCTIONS[name], **values))
    deploys = {s.command[3]: flags(s.command) for s in find(plan(), "gcloud", "run", "deploy")}
    for name, values in changed.items():
        assert {key: deploys[name][f"--{key.replace('_', '-')}"] for key in values} == {
            key: str(value) for key, value in values.items()}, name


def test_the_lessons_gcloud_commands_update_the_deployed_rng() -> None:
    """The README's steps on Cloud Run: one request on one instance, 4 instances, then
    the spec's bounds, on the service the deploy makes, where it makes it."""
    deployed = {s.command[3] for s in find(plan(), "gcloud", "run", "deploy")}
    steps = []
    for command in lesson_commands("gcloud"):
        assert command[:5] == ["gcloud", "run", "services", "update", "rng"], command
        assert "rng" in deployed
        options = dict(zip(command[5::2], command[6::2], strict=True))
        assert (options.pop("--project"), options.pop("--region")) == tuple(ARGS[1::2])
        steps.append(options)
    rng = FUNCTIONS["rng"]
    assert steps == [{"--concurrency": "1", "--max-instances": "1"},
                     {"--min-instances": "4", "--max-instances": "4"},
                     {"--min-instances": str(rng.min_instances),
                      "--max-instances": str(rng.max_instances)}]


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
    assert job.command[5] == "brkcoin-worker-tick-1"
    for command in (job.command, job.if_exists):
        f = flags(command)
        assert f["--oidc-service-account-email"] == SA.format("brkcoin-scheduler")
        assert f["--oidc-token-audience"] == "${WORKER_URL}"
        assert f["--uri"] == "${WORKER_URL}/" and f["--http-method"] == "POST"
        assert json.loads(f["--message-body"]) == {"seconds": TICK.seconds}
        assert f["--schedule"] == TICK.cron
    assert job.if_exists[:5] == ("gcloud", "scheduler", "jobs", "update", "http")


def test_n_workers_are_n_scheduler_jobs_each_with_its_oidc_token() -> None:
    steps = plan("--workers", "3")
    jobs = find(steps, "gcloud", "scheduler", "jobs", "create", "http")
    assert [j.command[5] for j in jobs] == [f"brkcoin-worker-tick-{n}" for n in (1, 2, 3)]
    assert [j.check[4] for j in jobs] == [j.command[5] for j in jobs]  # each guarded
    assert all(flags(j.command)["--oidc-token-audience"] == "${WORKER_URL}" for j in jobs)
    # then the jobs beyond the 3 are listed and deleted
    [listing] = find(steps, "gcloud", "scheduler", "jobs", "list")
    assert flags(listing.command)["--filter"] == (
        'name~"/jobs/brkcoin-worker-tick(-[0-9]+)?$" AND '
        'NOT name~"/jobs/brkcoin-worker-tick-(1|2|3)$"')
    assert listing.capture == gcp.STALE_JOBS and listing.may_be_empty
    assert steps.index(listing) > steps.index(jobs[-1])
    [each] = [s for s in steps if isinstance(s, Each)]
    assert each.items == gcp.STALE_JOBS and shown(each.command)[:5] == [
        "gcloud", "scheduler", "jobs", "delete", "${JOB}"]


def test_a_smaller_deploy_deletes_the_jobs_beyond_n(tmp_path: Path, capsys) -> None:
    assert brkcoin(["deploy", "gcp", "--dry-run", "--workers", "2", *ARGS]) == 0
    stale = "brkcoin-worker-tick-3 brkcoin-worker-tick-4"  # what gcloud would list
    calls = FakeGcloud.install(tmp_path).run_script(capsys.readouterr().out, True, jobs=stale)
    assert calls == expected_calls(plan("--workers", "2"), True, jobs=stale)
    deleted = [c[3] for c in calls if c[:3] == ["scheduler", "jobs", "delete"]]
    assert deleted == ["brkcoin-worker-tick-3", "brkcoin-worker-tick-4"]


def test_variables_are_set_before_use() -> None:
    known: set[gcp.Var] = set()
    used: set[gcp.Var] = set()
    for step in plan("--backend-access", "network") + plan():
        if isinstance(step, Each):
            assert step.items in known, step
            known.add(step.item)
            words = step.command
        else:
            assert isinstance(step, Step)
            words = step.check + step.command + step.if_exists
        parts = [p for w in words for p in (w if isinstance(w, tuple) else (w,))]
        variables = {p for p in parts if isinstance(p, gcp.Var)}
        assert variables <= known, step
        assert not any("$" in p for p in parts if isinstance(p, str)
                       and not p.startswith("--filter=")), step  # text is text
        used |= variables
        if isinstance(step, Step) and step.capture:
            known.add(step.capture)
    assert {v.name for v in used} == {"REDIS_HOST", "RNG_URL", "HASHER_URL", "WORKER_URL",
                                      "JOB"}


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
    (["--project", "my-project"], "--region is required"),
    (["--project", "Demo!", "--region", "europe-west1"], "is not a project id"),
])
def test_inputs_are_checked(missing: list[str], message: str, capsys, monkeypatch) -> None:
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    monkeypatch.delenv("GOOGLE_CLOUD_REGION", raising=False)
    assert brkcoin(["deploy", "gcp", "--dry-run", *missing]) == 2
    assert message in capsys.readouterr().err


def test_destroy_plan_removes_what_deploy_made(tmp_path: Path, capsys) -> None:
    assert brkcoin(["destroy", "gcp", "--dry-run", *ARGS]) == 0
    jobs = "brkcoin-worker-tick-1 brkcoin-worker-tick-2 brkcoin-worker-tick"
    calls = FakeGcloud.install(tmp_path).run_script(capsys.readouterr().out, True, jobs=jobs)
    assert calls == expected_calls(plan(verb="destroy"), True, jobs=jobs)
    deleted = [c[:4] if c[1] == "jobs" else c[:2] for c in calls if "delete" in c]
    assert deleted == [["scheduler", "jobs", "delete", job] for job in jobs.split()] + [
        ["run", "services"]] * 4 + [["iam", "service-accounts"]] * 5 + [
        ["redis", "instances"], ["compute", "networks"], ["compute", "networks"]]
    [listing] = find(plan(verb="destroy"), "gcloud", "scheduler", "jobs", "list")
    assert flags(listing.command)["--filter"] == 'name~"/jobs/brkcoin-worker-tick(-[0-9]+)?$"'


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
    steps = plan() + plan("--backend-access", "network") + plan(verb="destroy")
    by_path: dict[tuple[str, ...], set[str]] = {}
    for step in steps:
        for command in (step.command, getattr(step, "check", ()), getattr(step, "if_exists", ())):
            if command:
                path = _command_path(shown(command)[1:])
                by_path.setdefault(path, set()).update(flags(command))
    with ThreadPoolExecutor(4) as pool:
        known = dict(zip(by_path, pool.map(_help_flags, by_path), strict=True))
    unknown = {" ".join(p): sorted(f - known[p]) for p, f in by_path.items() if f - known[p]}
    assert unknown == {}
    assert len(by_path) >= 12  # every command group of the plan was looked up

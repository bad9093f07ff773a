"""infra/container/compose.yaml against the Compose Specification's JSON schema (as
shipped by check-jsonschema), the seed's topology, and what `docker stack deploy`
loads; plus `brkcoin deploy compose`. (No Docker engine here: nothing is started.)"""

from __future__ import annotations

import copy
import importlib.resources
import json
from typing import Any

import jsonschema
import pytest
import yaml

from brkcoin.cli import main as brkcoin
from brkcoin.layout import ROOT

COMPOSE = ROOT / "infra" / "container" / "compose.yaml"
FUNCTIONS = ("rng", "hasher", "worker", "webui")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendor.joinpath("compose-spec.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def test_valid_against_the_compose_spec(compose: dict, validator) -> None:
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []


def test_the_schema_catches_a_mistake(compose: dict, validator) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["rng"]["read_onyl"] = True
    assert not validator.is_valid(broken)


def test_isolated_networks_as_the_seed(compose: dict) -> None:
    services = compose["services"]
    networks = {name: set(s["networks"]) for name, s in services.items()}
    assert networks["worker"] >= {"rng", "hasher", "redis"}
    assert networks["rng"] == {"rng"} and networks["hasher"] == {"hasher"}
    assert networks["redis"] == {"redis"}
    # Unlike the seed, the web UI joins every network: its Functions panel probes them.
    assert networks["webui"] == {"rng", "hasher", "redis", "worker"}
    assert networks["scheduler"].isdisjoint({"rng", "hasher", "redis"})
    assert networks["scheduler"] & networks["worker"], "the scheduler must reach the worker"
    assert services["webui"]["ports"] == ["${WEBUI_PORT:-8000}:8080"]
    published = [n for n, s in services.items() if s.get("ports")]
    assert published == ["webui"]


def test_redis_keeps_an_append_only_file_on_a_volume(compose: dict) -> None:
    redis = compose["services"]["redis"]
    assert "--appendonly" in redis["command"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(str(v).startswith("wallet:/data") for v in redis["volumes"])
    assert "wallet" in compose["volumes"]


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_services_are_read_only_restarting_and_built_from_the_dockerfile(
    compose: dict, name: str
) -> None:
    service = compose["services"][name]
    assert service["read_only"] is True
    assert service["restart"] == "unless-stopped"
    assert {"type": "tmpfs", "target": "/tmp"} in service["volumes"]
    assert service["build"] == {"context": "../..", "dockerfile": "infra/container/Dockerfile",
                                "target": name,
                                "args": {"EXTRA_CA_CERTS": "${EXTRA_CA_CERTS:-}"}}
    assert service["image"] == f"${{REGISTRY:-brkcoin}}/{name}:${{TAG:-latest}}"
    assert "ALL" in service["cap_drop"]


def test_every_service_has_a_healthcheck(compose: dict) -> None:
    # The function images carry their own HEALTHCHECK (see test_container.py).
    for name in ("redis", "scheduler"):
        assert compose["services"][name]["healthcheck"]["test"][0] == "CMD"


def test_worker_reaches_its_backends_by_service_name(compose: dict) -> None:
    env = compose["services"]["worker"]["environment"]
    assert env["RNG_URL"] == "http://rng:8080"
    assert env["HASHER_URL"] == "http://hasher:8080"
    assert env["REDIS_URL"] == "redis://redis:6379/0"


def test_webui_probes_every_function_by_service_name(compose: dict) -> None:
    env = compose["services"]["webui"]["environment"]
    assert env == {"REDIS_URL": "redis://redis:6379/0", "RNG_URL": "http://rng:8080",
                   "HASHER_URL": "http://hasher:8080", "WORKER_URL": "http://worker:8080"}


def test_scheduler_posts_every_worker_replica_every_minute(compose: dict) -> None:
    # infra/container/test runs it for real; here, what it is built from.
    scheduler = compose["services"]["scheduler"]
    script = scheduler["command"][0]
    assert "60 - $$(date +%s) % 60" in script  # aligned to the minute, like cron
    assert 'getent ahostsv4 "$$WORKER_HOST"' in script  # every replica's address
    assert 'flock -n' in script and "-X POST" in script  # one invocation per replica
    assert scheduler["environment"]["WORKER_HOST"] == "${WORKER_HOST:-worker}"
    assert scheduler["environment"]["SECONDS_PER_TICK"] == "${SECONDS_PER_TICK:-55}"
    assert {"type": "tmpfs", "target": "/tmp"} in scheduler["volumes"]  # the flock files


def test_loadable_by_docker_stack_deploy(compose: dict) -> None:
    # docker stack deploy validates against docker/cli's own v3 schema (not shipped on
    # PyPI); these are the places where it is stricter than the Compose spec.
    assert set(compose) <= {"version", "services", "networks", "volumes", "secrets",
                            "configs"} | {k for k in compose if k.startswith("x-")}
    for name, service in compose["services"].items():
        assert isinstance(service.get("depends_on", []), list), f"{name}: list form only"
        assert "tmpfs" not in service, f"{name}: swarm ignores short tmpfs"
        deploy = service["deploy"]
        assert isinstance(deploy.get("replicas", 1), int), f"{name}: literal replicas"
    assert compose["services"]["rng"]["deploy"]["mode"] == "global"


def commands(out: str) -> list[str]:
    """The command lines of a printed plan (the rest are `#` comments)."""
    return [line for line in out.splitlines() if not line.startswith("#")]


def test_deploy_compose_dry_run_prints_the_command(capsys) -> None:
    assert brkcoin(["deploy", "compose", "--dry-run"]) == 0
    assert commands(capsys.readouterr().out) == [
        "REGISTRY=brkcoin TAG=latest docker compose -f infra/container/compose.yaml -p brkcoin "
        "up --detach --build --wait --scale worker=1"]


def test_workers_are_worker_replicas_each_posted_once_a_tick(capsys) -> None:
    assert brkcoin(["deploy", "compose", "--dry-run", "--workers", "4"]) == 0
    [up] = commands(capsys.readouterr().out)
    assert up.endswith(" up --detach --build --wait --scale worker=4")


def test_deploy_compose_swarm_dry_run(capsys) -> None:
    assert brkcoin(["deploy", "compose", "--swarm", "--registry", "ghcr.io/me", "--workers", "3",
                     "--dry-run"]) == 0
    env = "REGISTRY=ghcr.io/me TAG=latest WORKER_HOST=tasks.worker "
    assert commands(capsys.readouterr().out) == [
        env + "docker compose -f infra/container/compose.yaml -p brkcoin build",
        env + "docker compose -f infra/container/compose.yaml -p brkcoin push",
        env + "docker stack deploy --compose-file infra/container/compose.yaml brkcoin",
        # the file's literal replica count would win otherwise
        "docker service scale brkcoin_worker=3",
    ]

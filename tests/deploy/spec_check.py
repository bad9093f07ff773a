"""The static files of the targets read back and compared with the spec
(brkcoin.layout): each function's per-target values, how it scales (Knative's
autoscaling annotations, the HPAs), its settings with their defaults, the URLs of
what it needs (and the networks to reach them), public or private, and the tick.
Each check returns the disagreements, one line each."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from dockerfile_model import parse

from brkcoin.deploy import k8s
from brkcoin.layout import FUNCTIONS, PORT, TICK, WORKER_EVENT, Function, url_variable

SPEC = "the spec says"


def _differ(where: str, what: str, found: object, expected: object) -> list[str]:
    return [] if found == expected else [f"{where}: {what} is {found!r}, {SPEC} {expected!r}"]


def _settings(where: str, function: Function, env: dict[str, str],
              host_of: dict[str, str]) -> list[str]:
    """Its settings with the spec's defaults, and a URL of each thing it needs."""
    problems = []
    for key, value in function.defaults.items():
        problems += _differ(where, key, env.get(key), value)
    for need in function.needs:
        key = url_variable(need)
        host = urlsplit(env.get(key, "")).hostname
        problems += _differ(where, f"the host of {key}", host, host_of[need])
    return problems


# --- compose.yaml -------------------------------------------------------------------


def _interpolated(value: object) -> str:
    """${NAME:-default} as compose resolves it when NAME is unset."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))


def check_compose(path: Path) -> list[str]:
    services = yaml.safe_load(path.read_text())["services"]
    problems = []
    for name, function in FUNCTIONS.items():
        where = f"compose.yaml {name}"
        service = services.get(name)
        if service is None:
            problems.append(f"{where}: no such service")
            continue
        env = {k: _interpolated(v) for k, v in (service.get("environment") or {}).items()}
        problems += _settings(where, function, env, {n: n for n in function.needs})
        for need in function.needs:  # a network it shares with what it calls
            if not set(service["networks"]) & set(services[need]["networks"]):
                problems.append(f"{where}: shares no network with {need}, which it needs")
        problems += _differ(where, "published", bool(service.get("ports")), function.public)
    scheduler = services["scheduler"]["environment"]
    problems += _differ("compose.yaml scheduler", "SECONDS_PER_TICK",
                        float(_interpolated(scheduler["SECONDS_PER_TICK"])), TICK.seconds)
    return problems


# --- the Dockerfile --------------------------------------------------------------


def check_dockerfile(path: Path) -> list[str]:
    stages = parse(path)
    problems = _differ("Dockerfile", "EXPOSE", stages["base"].effective("EXPOSE"), str(PORT))
    problems += _differ("Dockerfile", "the stages", set(stages) - {"base"}, set(FUNCTIONS))
    for name, function in FUNCTIONS.items():
        if name in stages:
            problems += _differ(f"Dockerfile {name}", "CMD", stages[name].cmd(),
                                function.command())
    return problems


# --- infra/k8s ---------------------------------------------------------------------


def _by_kind(documents: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in documents if d["kind"] == kind}


def _pod_env(documents: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    maps = _by_kind(documents, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env |= maps[source["configMapRef"]["name"]]["data"]
    return env | {e["name"]: e["value"] for e in container.get("env", [])}


def _container(where: str, documents: list[dict[str, Any]], function: Function,
               container: dict[str, Any]) -> list[str]:
    hosts = {need: f"{need}.brkcoin.svc.cluster.local" for need in function.needs}
    return (_settings(where, function, _pod_env(documents, container), hosts)
            + _differ(where, "the memory limit", container["resources"]["limits"]["memory"],
                      f"{function.memory}Mi"))


def _knative_scaling(where: str, function: Function, annotations: dict[str, Any]) -> list[str]:
    """Every autoscaling annotation the spec gives the revision, and no other; and
    the cluster-wide settings (not in the files) at Knative's defaults."""
    expected = k8s.knative_annotations(function)
    found = {k: v for k, v in annotations.items() if k.startswith(k8s.KNATIVE)}
    problems = []
    for key in sorted(expected.keys() | found.keys()):
        problems += _differ(where, key.removeprefix(k8s.KNATIVE), found.get(key),
                            expected.get(key))
    if function.scaling.kind == "kpa":
        settings = k8s.knative_cluster_settings(function)
        for key, default in k8s.KNATIVE_CLUSTER_DEFAULTS.items():
            problems += _differ(where, f"{key} (cluster-wide: Knative's default, as brkcoin "
                                       "ships no config-autoscaler)", default, settings[key])
    return problems


def check_knative(directory: Path) -> list[str]:
    documents, _ = k8s.load_kustomization(directory)
    services = _by_kind(documents, "Service")
    problems = []
    for function in [*FUNCTIONS.values(), WORKER_EVENT]:
        name = function.name.replace("_", "-")
        where = f"knative {name}"
        if name not in services:
            problems.append(f"{where}: no such Service")
            continue
        template = services[name]["spec"]["template"]
        spec, annotations = template["spec"], template["metadata"]["annotations"]
        problems += _differ(where, "containerConcurrency", spec["containerConcurrency"],
                            function.concurrency)
        problems += _differ(where, "timeoutSeconds", spec["timeoutSeconds"], function.timeout)
        problems += _knative_scaling(where, function, annotations)
        labels = services[name]["metadata"]["labels"]
        public = labels.get("networking.knative.dev/visibility") != "cluster-local"
        problems += _differ(where, "public", public, function.public)
        [container] = spec["containers"]
        problems += _container(where, documents, function, container)
        if function is WORKER_EVENT:
            problems += _differ(where, "args", container.get("args"), function.command())
    for name, ping in _by_kind(documents, "PingSource").items():
        problems += _differ(f"knative {name}", "schedule", ping["spec"]["schedule"], TICK.cron)
        problems += _differ(f"knative {name}", "seconds",
                            json.loads(ping["spec"]["data"])["seconds"], TICK.seconds)
    return problems


def _admitted(policies: dict[str, dict[str, Any]], target: str) -> set[str] | None:
    """Which pods the NetworkPolicies let reach `target`'s pods (None: any)."""
    admitted: set[str] = set()
    for policy in policies.values():
        if policy["spec"]["podSelector"].get("matchLabels", {}).get(
                "app.kubernetes.io/name") != target:
            continue
        for rule in policy["spec"].get("ingress", []):
            if "from" not in rule:
                return None
            admitted |= {peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
                         for peer in rule["from"]}
    return admitted


def check_plain(directory: Path) -> list[str]:
    documents, _ = k8s.load_kustomization(directory)
    deployments = _by_kind(documents, "Deployment")
    scalers = _by_kind(documents, "HorizontalPodAutoscaler")
    policies = _by_kind(documents, "NetworkPolicy")
    problems = []
    for name, function in FUNCTIONS.items():
        where = f"plain {name}"
        if name not in deployments or name not in scalers:
            problems.append(f"{where}: no Deployment and HorizontalPodAutoscaler")
            continue
        scaler = k8s.hpa_spec(function)  # an HPA does not scale to zero: min 1
        problems += _differ(where, "replicas", deployments[name]["spec"]["replicas"],
                            scaler["minReplicas"])
        for key, value in scaler.items():
            problems += _differ(where, key, scalers[name]["spec"].get(key), value)
        problems += _differ(where, "the HPA's target", scalers[name]["spec"]["scaleTargetRef"],
                            {"apiVersion": "apps/v1", "kind": "Deployment", "name": name})
        [container] = deployments[name]["spec"]["template"]["spec"]["containers"]
        problems += _container(where, documents, function, container)
        admitted = _admitted(policies, name)
        problems += _differ(where, "reachable from anywhere", admitted is None, function.public)
    for target in ["redis", *FUNCTIONS]:  # each reachable by what needs it
        callers = {n for n, f in FUNCTIONS.items() if target in f.needs}
        admitted = _admitted(policies, target)
        if admitted is not None and not callers <= admitted:
            problems.append(f"plain NetworkPolicies: {target} is not reachable from "
                            f"{sorted(callers - admitted)}, which {SPEC} need it")
    cron = _by_kind(documents, "CronJob")["worker-tick"]
    [tick] = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    command = tick["command"]
    problems += _differ("plain worker-tick", "schedule", cron["spec"]["schedule"], TICK.cron)
    problems += _differ("plain worker-tick", "seconds",
                        json.loads(command[command.index("--data") + 1])["seconds"],
                        TICK.seconds)
    return problems


def check_all(infra: Path) -> list[str]:
    """Every static file under infra/ (or a copy of it)."""
    return (check_compose(infra / "container" / "compose.yaml")
            + check_dockerfile(infra / "container" / "Dockerfile")
            + check_knative(infra / "k8s" / "knative")
            + check_plain(infra / "k8s" / "plain"))

"""The Kubernetes manifests, validated offline: core kinds against the Kubernetes
OpenAPI schemas (kubernetes-validate, strict), Knative kinds against the models
generated from Knative's own CRD schemas (cloudcoil-models-knative-*); then what a
cluster would need of them. (No cluster here: nothing is applied.)"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import shlex
import shutil
import subprocess
import urllib.request
import uuid
import warnings
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from deploy_support import NO_DELAYS, lesson_commands, spawn_in, wait_http

from brkcoin.cli import main as brkcoin
from brkcoin.deploy import k8s
from brkcoin.deploy.common import DeployError
from brkcoin.layout import FUNCTIONS, ROOT, TICK, Function, Scaling
from brkcoin.platform.processes import free_port, stop

K8S_VERSIONS = ("1.30.0", "1.37.0")  # the oldest and newest schemas we promise
FUNCTION_NAMES = tuple(FUNCTIONS)
# (Values the spec gives, file by file: test_spec_files.py.)


def rendered(variant: str, workers: int = 1) -> list[dict[str, Any]]:
    return k8s.render(variant, workers=workers)


def by_kind(documents: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in documents if d["kind"] == kind}


def pod_specs(documents: list[dict]) -> list[tuple[str, dict]]:
    specs = []
    for d in documents:
        spec = d.get("spec", {})
        if d["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        if "template" in spec:
            specs.append((d["metadata"]["name"], spec["template"]["spec"]))
    return specs


@functools.cache
def knative_models() -> dict[tuple[str, str], type]:
    with warnings.catch_warnings():  # the generated models warn about their own field names
        warnings.simplefilter("ignore", UserWarning)
        from cloudcoil.models.knative_eventing.sources.v1 import PingSource
        from cloudcoil.models.knative_serving.serving.v1 import Service
    return {("serving.knative.dev/v1", "Service"): Service,
            ("sources.knative.dev/v1", "PingSource"): PingSource}


def validate_knative(document: dict) -> None:
    """Validate with the CRD-derived model; unknown fields fail too (they would be pruned)."""
    model = knative_models()[(document["apiVersion"], document["kind"])]
    parsed = model.model_validate(document)
    assert parsed.model_dump(by_alias=True, exclude_unset=True) == document, (
        f"{document['kind']} {document['metadata']['name']} has fields Knative does not know")


def validate(document: dict) -> None:
    if (document["apiVersion"], document["kind"]) in knative_models():
        validate_knative(document)
    else:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(document, version, strict=True)


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("variant", k8s.VARIANTS)
def test_every_manifest_validates(variant: str, workers: int) -> None:
    documents = rendered(variant, workers)
    assert documents
    for document in documents:
        validate(document)


def test_the_validators_catch_mistakes() -> None:
    documents = rendered("knative")
    statefulset = copy.deepcopy(by_kind(documents, "StatefulSet")["redis"])
    statefulset["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["exec"] = "x"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(statefulset)
    service = copy.deepcopy(by_kind(documents, "Service")["rng"])
    service["spec"]["template"]["spec"]["containerConcurency"] = 4
    with pytest.raises(AssertionError, match="fields Knative does not know"):
        validate(service)
    service = copy.deepcopy(by_kind(documents, "Service")["rng"])
    service["spec"]["template"]["spec"]["containerConcurrency"] = "many"
    with pytest.raises(ValueError):
        validate(service)


@pytest.mark.parametrize("variant", k8s.VARIANTS)
def test_pods_are_probed_limited_and_non_root(variant: str) -> None:
    specs = pod_specs(rendered(variant))
    assert {name for name, _ in specs} >= {"redis", *FUNCTION_NAMES}
    for name, spec in specs:
        pod_context = spec.get("securityContext", {})
        for container in spec["containers"]:
            context = {**pod_context, **container.get("securityContext", {})}
            assert context.get("runAsNonRoot") is True, name
            assert context.get("allowPrivilegeEscalation") is False, name
            assert context.get("readOnlyRootFilesystem") is True, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert container["resources"]["requests"] and container["resources"]["limits"], name
            if name != "worker-tick":  # a one-shot curl has nothing to probe
                assert "readinessProbe" in container and "livenessProbe" in container, name
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            if name in FUNCTION_NAMES or name == "worker-event":
                assert "/tmp" in mounts, f"{name}: gunicorn needs a writable /tmp"


def test_knative_services_autoscale_on_concurrency() -> None:
    services = by_kind(rendered("knative"), "Service")
    services = {n: s for n, s in services.items() if s["apiVersion"].startswith("serving")}
    assert set(services) == {*FUNCTION_NAMES, "worker-event"}
    for name, service in services.items():
        template = service["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        assert annotations["autoscaling.knative.dev/metric"] == "concurrency"
        assert int(annotations["autoscaling.knative.dev/max-scale"]) >= 1
        # Knative aims at 70% of containerConcurrency when no target is given.
        assert "autoscaling.knative.dev/target" not in annotations
        assert template["spec"]["containerConcurrency"] >= 1
        visibility = service["metadata"]["labels"].get("networking.knative.dev/visibility")
        assert visibility == (None if name == "webui" else "cluster-local"), name
        image = template["spec"]["containers"][0]["image"]
        assert image == f"brkcoin/{'worker' if name == 'worker-event' else name}:latest"


DEFAULTS = Scaling()  # Knative's documented defaults


def a_function(scaling: Scaling = DEFAULTS, **values: object) -> Function:
    return dataclasses.replace(FUNCTIONS["rng"], scaling=scaling, **values)


def test_a_kpa_function_is_knatives_pod_autoscaler_with_every_setting() -> None:
    """Knative's documented defaults, written out as Knative reads them."""
    assert k8s.knative_annotations(a_function(min_instances=1, max_instances=7)) == {
        "autoscaling.knative.dev/class": "kpa.autoscaling.knative.dev",
        "autoscaling.knative.dev/metric": "concurrency",
        "autoscaling.knative.dev/target-utilization-percentage": "70",
        "autoscaling.knative.dev/window": "60s",
        "autoscaling.knative.dev/panic-window-percentage": "10",
        "autoscaling.knative.dev/panic-threshold-percentage": "200",
        "autoscaling.knative.dev/scale-to-zero-pod-retention-period": "30s",
        "autoscaling.knative.dev/min-scale": "1",
        "autoscaling.knative.dev/max-scale": "7",
    }
    other = Scaling(target_utilization=0.55, stable_window=120, panic_window_percentage=5.5,
                    panic_threshold_percentage=150, scale_to_zero_grace=0)
    annotations = k8s.knative_annotations(a_function(other))
    assert [annotations[k8s.KNATIVE + key] for key in (
        "target-utilization-percentage", "window", "panic-window-percentage",
        "panic-threshold-percentage", "scale-to-zero-pod-retention-period")] == [
        "55", "120s", "5.5", "150", "0s"]


def test_a_cpu_function_is_knatives_hpa_class_never_at_zero() -> None:
    function = a_function(Scaling(kind="cpu", cpu_target_percentage=65), max_instances=5)
    assert k8s.knative_annotations(function) == {
        "autoscaling.knative.dev/class": "hpa.autoscaling.knative.dev",
        "autoscaling.knative.dev/metric": "cpu",
        "autoscaling.knative.dev/target": "65",
        "autoscaling.knative.dev/min-scale": "1",
        "autoscaling.knative.dev/max-scale": "5",
    }


@pytest.mark.parametrize("function, refused", [
    (a_function(Scaling(stable_window=5)), "stable_window must be whole seconds from 6"),
    (a_function(Scaling(stable_window=60.5)), "stable_window must be whole seconds"),
    (a_function(Scaling(stable_window=7200)), "stable_window must be whole seconds"),
    (a_function(Scaling(panic_window_percentage=0.5)), "panic_window_percentage must be"),
    (a_function(Scaling(panic_threshold_percentage=100)), "panic_threshold_percentage"),
    (a_function(Scaling(target_utilization=1.5)), "target_utilization x 100 must be"),
    (a_function(Scaling(scale_to_zero_grace=-1)), "scale_to_zero_grace must be"),
    (a_function(Scaling(kind="rps")), "scaling kind 'rps' is neither kpa nor cpu"),
    (a_function(Scaling(kind="cpu", cpu_target_percentage=0)), "cpu_target_percentage"),
    (a_function(min_instances=3, max_instances=2), "must satisfy 0 <= min <= max"),
])
def test_what_knative_would_refuse_is_refused(function: Function, refused: str) -> None:
    """The bounds of Knative's annotation validation (annotation_validation.go)."""
    with pytest.raises(DeployError, match=refused):
        k8s.knative_annotations(function)


def test_the_hpa_approximates_on_cpu() -> None:
    scaling = Scaling(cpu_target_percentage=65, stable_window=90)
    assert k8s.hpa_spec(a_function(scaling, max_instances=7)) == {
        "minReplicas": 1, "maxReplicas": 7,
        "metrics": [{"type": "Resource", "resource": {
            "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 65}}}],
        "behavior": {"scaleDown": {"stabilizationWindowSeconds": 90}}}
    assert k8s.hpa_spec(a_function(min_instances=2))["minReplicas"] == 2
    with pytest.raises(DeployError, match="a whole number from 1 to 100 for an HPA"):
        k8s.hpa_spec(a_function(Scaling(cpu_target_percentage=62.5)))


def test_the_cluster_wide_settings_are_knatives_defaults() -> None:
    """What brkcoin cannot set per revision is, in the spec's defaults, the cluster's."""
    assert k8s.knative_cluster_settings(a_function()) == k8s.KNATIVE_CLUSTER_DEFAULTS == {
        "max-scale-up-rate": 1000.0, "max-scale-down-rate": 2.0, "tick (fixed)": 2.0}


def merge_patch(target: Any, patch: Any) -> Any:
    """A JSON merge patch (RFC 7386), as `kubectl patch --type merge` applies it."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def test_the_lessons_knative_patches_make_the_revisions_it_says() -> None:
    """The README's steps on Knative, applied to the rendered rng: valid Services, with
    the plateau at one request and one pod, then 4 pods, then the spec's bounds."""
    patches = [c for c in lesson_commands("kubectl") if "ksvc" in c]
    service = by_kind(rendered("knative"), "Service")["rng"]
    steps = []
    for command in patches:
        assert command[:8] == ["kubectl", "-n", k8s.NAMESPACE, "patch", "ksvc", "rng",
                               "--type", "merge"], command
        service = merge_patch(service, json.loads(command[command.index("-p") + 1]))
        validate(service)
        template = service["spec"]["template"]
        scale = {key: template["metadata"]["annotations"][k8s.KNATIVE + key]
                 for key in ("min-scale", "max-scale")}
        k8s.knative_annotations(dataclasses.replace(  # within Knative's bounds
            FUNCTIONS["rng"], min_instances=int(scale["min-scale"]),
            max_instances=int(scale["max-scale"])))
        steps.append((template["spec"]["containerConcurrency"], scale["min-scale"],
                      scale["max-scale"]))
    rng = FUNCTIONS["rng"]
    assert steps == [(1, str(rng.min_instances), "1"), (1, "4", "4"),
                     (1, str(rng.min_instances), str(rng.max_instances))]


def test_the_lessons_plain_steps_free_rng_from_its_hpa_first() -> None:
    commands = [c for c in lesson_commands("kubectl") if "ksvc" not in c]
    assert commands == [
        ["kubectl", "-n", k8s.NAMESPACE, "delete", "hpa", "rng"],
        ["kubectl", "-n", k8s.NAMESPACE, "set", "env", "deployment/rng",
         "INSTANCE_CONCURRENCY=1"],
        ["kubectl", "-n", k8s.NAMESPACE, "scale", "deployment", "rng", "--replicas", "4"]]
    documents = rendered("plain")
    hpa = by_kind(documents, "HorizontalPodAutoscaler")["rng"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "rng"  # the one `kubectl scale` scales
    assert "rng" in by_kind(documents, "Deployment")
    assert {d["metadata"]["namespace"] for d in documents if d["kind"] != "Namespace"} == {
        k8s.NAMESPACE}


def test_pingsource_ticks_the_cloudevent_target() -> None:
    documents = rendered("knative")
    [ping] = by_kind(documents, "PingSource").values()
    assert ping["metadata"]["name"] == "worker-tick-1"
    assert ping["metadata"]["labels"]["brkcoin/slot"] == "1"
    assert ping["spec"]["schedule"] == TICK.cron
    assert json.loads(ping["spec"]["data"]) == {"seconds": TICK.seconds}
    sink = ping["spec"]["sink"]["ref"]
    assert (sink["apiVersion"], sink["kind"], sink["name"]) == (
        "serving.knative.dev/v1", "Service", "worker-event")
    container = by_kind(documents, "Service")["worker-event"]["spec"]["template"]["spec"][
        "containers"][0]
    assert container["args"] == ["functions-framework", "--target", "worker_event",
                                 "--source", "functions/worker/main.py", "--port", "8080"]


def test_knative_fans_out_one_pingsource_per_worker() -> None:
    one, three = rendered("knative"), rendered("knative", workers=3)
    pings = by_kind(three, "PingSource")
    assert list(pings) == ["worker-tick-1", "worker-tick-2", "worker-tick-3"]
    assert [p["metadata"]["labels"]["brkcoin/slot"] for p in pings.values()] == ["1", "2", "3"]
    first = by_kind(one, "PingSource")["worker-tick-1"]
    for ping in pings.values():  # copies of the file's one, but for name and slot
        assert ping["spec"] == first["spec"]
    others = [d for d in three if d["kind"] != "PingSource"]
    assert others == [d for d in one if d["kind"] != "PingSource"]
    # N events at once take N / containerConcurrency worker-event pods
    event = by_kind(three, "Service")["worker-event"]["spec"]["template"]["spec"]
    assert event["containerConcurrency"] == FUNCTIONS["worker"].concurrency


def test_knative_deploy_deletes_the_pingsources_beyond_n(capsys) -> None:
    assert brkcoin(["deploy", "k8s", "--dry-run", "--workers", "3"]) == 0
    out = capsys.readouterr().out
    manifests = out.split("<<'BRKCOIN_END_OF_INPUT'\n", 1)[1].split("BRKCOIN_END_OF_INPUT")[0]
    assert [d for d in yaml.safe_load_all(manifests) if d] == rendered("knative", 3)
    prune = [line for line in out.splitlines() if line.startswith("kubectl") and "delete" in line]
    assert shlex.split(prune[0]) == [
        "kubectl", "--namespace", "brkcoin", "delete", "pingsources.sources.knative.dev",
        "--ignore-not-found", "--selector",
        "app.kubernetes.io/part-of=brkcoin,brkcoin/slot notin (1,2,3)"]


@pytest.mark.parametrize("workers, pods", [(1, 1), (8, 1), (9, 2), (80, 10)])
def test_plain_fans_out_the_cronjob_and_starts_the_pods_it_needs(workers: int,
                                                                 pods: int) -> None:
    documents = rendered("plain", workers)
    job = by_kind(documents, "CronJob")["worker-tick"]["spec"]["jobTemplate"]["spec"]
    assert (job["parallelism"], job["completions"], job["backoffLimit"]) == (
        workers, workers, workers)
    assert by_kind(documents, "Deployment")["worker"]["spec"]["replicas"] == pods
    hpa = by_kind(documents, "HorizontalPodAutoscaler")["worker"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (pods, FUNCTIONS["worker"].max_instances)


def test_redis_statefulset_keeps_its_aof_on_a_claim() -> None:
    redis = by_kind(rendered("plain"), "StatefulSet")["redis"]
    container = redis["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][container["args"].index("--appendonly") + 1] == "yes"
    claim = redis["spec"]["volumeClaimTemplates"][0]
    assert claim["metadata"]["name"] == "data"
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]


@pytest.mark.parametrize("variant", k8s.VARIANTS)
def test_configured_urls_point_at_services_of_the_variant(variant: str) -> None:
    documents = rendered(variant)
    config = by_kind(documents, "ConfigMap")["brkcoin-config"]["data"]
    services = by_kind(documents, "Service")
    for key in ("RNG_URL", "HASHER_URL", "WORKER_URL"):
        host = config[key].removeprefix("http://")
        name, namespace = host.split(".")[:2]
        assert name in services and namespace == services[name]["metadata"]["namespace"], key
    assert config["REDIS_URL"].startswith("redis://redis.brkcoin.svc")


def test_plain_variant_scales_and_schedules() -> None:
    documents = rendered("plain")
    deployments = by_kind(documents, "Deployment")
    assert set(deployments) == set(FUNCTION_NAMES)
    for name, hpa in by_kind(documents, "HorizontalPodAutoscaler").items():
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments, name
    cron = by_kind(documents, "CronJob")["worker-tick"]
    assert cron["spec"]["schedule"] == TICK.cron
    [tick] = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert tick["image"] == "buildpack-deps:bookworm-curl"  # compose's scheduler's curl
    command = tick["command"]
    assert command[0] == "curl" and command[-1] == "http://worker.brkcoin.svc.cluster.local/"
    assert json.loads(command[command.index("--data") + 1]) == {"seconds": TICK.seconds}
    assert by_kind(documents, "Service")["worker"]["spec"]["ports"][0]["port"] == 80


def test_registry_and_tag_reach_every_function_image() -> None:
    images = {c["image"] for _, spec in pod_specs(k8s.render("plain", "ghcr.io/me/", "v2"))
              for c in spec["containers"]}
    assert images == {"ghcr.io/me/rng:v2", "ghcr.io/me/hasher:v2", "ghcr.io/me/worker:v2",
                      "ghcr.io/me/webui:v2", "redis:7.4-alpine", "buildpack-deps:bookworm-curl"}


def _identity(document: dict) -> tuple:
    return (document["apiVersion"], document["kind"], document["metadata"]["name"])


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("variant", k8s.VARIANTS)
def test_renderer_agrees_with_kubectl_kustomize(variant: str) -> None:
    result = subprocess.run(["kubectl", "kustomize", str(ROOT / "infra" / "k8s" / variant)],
                            capture_output=True, text=True, timeout=60, check=True)
    theirs = sorted((d for d in yaml.safe_load_all(result.stdout) if d), key=_identity)
    ours = sorted(rendered(variant), key=_identity)
    assert ours == theirs


def test_out_writes_the_manifests_and_applies_nothing(tmp_path: Path, monkeypatch,
                                                      capsys) -> None:
    out = tmp_path / "brkcoin.yaml"
    argv = ["deploy", "k8s", "--variant", "plain", "--workers", "2", "--out", str(out)]
    assert brkcoin([*argv, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert f"cat > {out} <<" in printed and not out.exists()  # a dry run writes nothing
    monkeypatch.setenv("PATH", str(tmp_path))  # no kubectl needed: none on this PATH
    assert brkcoin(argv) == 0
    assert f"kubectl apply -f {out}" in capsys.readouterr().out
    assert [d for d in yaml.safe_load_all(out.read_text()) if d] == rendered("plain", 2)


@pytest.mark.slow
def test_the_knative_event_command_takes_a_pingsource_event(
    requirements_venv, function_processes, redis_url: str, tmp_path: Path
) -> None:
    """worker-event's args, run in the worker's venv, mine on a PingSource-shaped event."""
    container = by_kind(rendered("knative"), "Service")["worker-event"]["spec"]["template"][
        "spec"]["containers"][0]
    venv = requirements_venv(FUNCTIONS["worker"].folder / "requirements.txt")
    port = free_port()
    command = [str(venv / "bin" / container["args"][0]), *container["args"][1:-1], str(port)]
    env = {**NO_DELAYS, "PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": str(tmp_path),
           "REDIS_URL": redis_url, "RNG_URL": function_processes["rng"].url,
           "HASHER_URL": function_processes["hasher"].url}
    process = spawn_in(command, ROOT, env, tmp_path / "worker-event.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/")
        ping = by_kind(rendered("knative"), "PingSource")["worker-tick-1"]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/", method="POST", data=b'{"seconds": 0.3}',
            headers={"Content-Type": ping["spec"]["contentType"], "ce-specversion": "1.0",
                     "ce-id": str(uuid.uuid4()), "ce-type": "dev.knative.sources.ping",
                     "ce-source": "/apis/v1/namespaces/brkcoin/pingsources/worker-tick"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
    finally:
        stop(process)

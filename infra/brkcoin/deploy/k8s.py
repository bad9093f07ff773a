"""`brkcoin deploy k8s`: the Knative (default) or plain-Kubernetes manifests.

The manifests are Kustomize directories (`kubectl apply -k` works on them as they
are: one worker). brkcoin renders the small subset it uses itself (`resources`
and `images`), so a dry run needs no kubectl, and sets per deploy the image
registry/tag and the fan-out:

- knative: one PingSource per worker (worker-tick-1 .. N, each labelled with its
  slot), and the PingSources beyond N deleted;
- plain: the CronJob's Job runs N pods at once (parallelism = completions = N),
  and the worker starts with the pods N invocations need (its HPA's minReplicas).

How each function scales is in the files too, from its spec (brkcoin.layout):
knative_annotations() is what a Knative Service's revision template carries, and
hpa_spec() what a plain HorizontalPodAutoscaler holds; tests/deploy/spec_check.py
holds the files to them.
"""

from __future__ import annotations

import argparse
import copy
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from brkcoin.deploy import rules
from brkcoin.deploy.common import K8S_DIR, DeployError, capture, require_tool
from brkcoin.deploy.plan import Operation, Plan
from brkcoin.deploy.shell import Step, WriteFile
from brkcoin.layout import FUNCTIONS, Function

VARIANTS = ("knative", "plain")
KUSTOMIZE_KEYS = {"apiVersion", "kind", "resources", "images"}
KNATIVE_CRDS = ("services.serving.knative.dev", "pingsources.sources.knative.dev")
KUBECTL_HINT = "install kubectl (https://kubernetes.io/docs/tasks/tools/), or use --dry-run"
NAMESPACE = "brkcoin"
SLOT = "brkcoin/slot"  # the label that numbers the PingSources
OPTION_RULES = {"registry": rules.REGISTRY.or_empty(), "tag": rules.IMAGE_TAG}


# --- the spec's scaling, as Knative and the HPA take it ---------------------------
#
# Sources: Knative Serving's pkg/apis/autoscaling/register.go and
# annotation_validation.go (the keys and their bounds), config/core/configmaps/
# autoscaler.yaml (the cluster-wide keys and defaults),
# pkg/reconciler/autoscaling/resources/target.go (how the target is resolved);
# https://knative.dev/docs/serving/autoscaling/.

KNATIVE = "autoscaling.knative.dev/"
KPA, HPA = "kpa.autoscaling.knative.dev", "hpa.autoscaling.knative.dev"
# Knative settings a revision cannot set: they are cluster-wide, in the
# config-autoscaler ConfigMap of knative-serving, which brkcoin does not ship (it
# is the cluster's, and `brkcoin destroy k8s` deletes what it applied). Their
# Knative defaults, which the spec must keep to (spec_check.py); the 2 s tick is
# not even a setting any more: Knative's autoscaler decides every 2 s.
KNATIVE_CLUSTER_DEFAULTS = {"max-scale-up-rate": 1000.0, "max-scale-down-rate": 2.0,
                            "tick (fixed)": 2.0}


def knative_cluster_settings(function: Function) -> dict[str, float]:
    """The spec's values of the cluster-wide settings, keyed as KNATIVE_CLUSTER_DEFAULTS."""
    s = function.scaling
    return {"max-scale-up-rate": s.max_scale_up_rate,
            "max-scale-down-rate": s.max_scale_down_rate, "tick (fixed)": s.tick}


def _number(value: float) -> str:
    return f"{round(value, 6):g}"


def _seconds(what: str, value: float, least: float, most: float) -> str:
    """A duration as Knative reads it: whole seconds ("60s") within its bounds."""
    if value != int(value) or not least <= value <= most:
        raise DeployError(f"{what} must be whole seconds from {least:g} to {most:g}, "
                          f"not {value:g}")
    return f"{int(value)}s"


def _within(what: str, value: float, least: float, most: float) -> str:
    if not least <= value <= most:
        raise DeployError(f"{what} must be from {least:g} to {most:g} for Knative, "
                          f"not {value:g}")
    return _number(value)


def knative_annotations(function: Function) -> dict[str, str]:
    """The autoscaling annotations of a function's Knative revision, from its spec.

    kind "kpa": Knative's Pod Autoscaler on requests in flight. No `target`: with
    containerConcurrency set (the spec's concurrency), Knative aims at
    containerConcurrency x target-utilization-percentage itself, and a `target`
    would be multiplied by the utilisation again. The last pod's linger is the
    per-revision scale-to-zero-pod-retention-period (the minimum it stays once
    the autoscaler wants zero); the cluster's scale-to-zero-grace-period is only
    an upper bound for the network to take the activator in.
    kind "cpu": Knative's HPA class on CPU (never to zero), `target` a percentage
    of the CPU request; the windows and the panic mode are the KPA's only.
    """
    s = function.scaling
    least, most = function.min_instances, function.max_instances
    if not 0 <= least <= most or most < 1:
        raise DeployError(f"{function.name}: min-scale {least} and max-scale {most} must "
                          "satisfy 0 <= min <= max, max >= 1")
    if s.kind == "cpu":
        return {KNATIVE + "class": HPA, KNATIVE + "metric": "cpu",
                KNATIVE + "target": _within("cpu_target_percentage",
                                            s.cpu_target_percentage, 1, 100),
                KNATIVE + "min-scale": str(max(1, least)),
                KNATIVE + "max-scale": str(most)}
    if s.kind != "kpa":
        raise DeployError(f"{function.name}: scaling kind {s.kind!r} is neither kpa nor cpu")
    return {
        KNATIVE + "class": KPA,
        KNATIVE + "metric": "concurrency",
        KNATIVE + "target-utilization-percentage": _within(
            "target_utilization x 100", s.target_utilization * 100, 1, 100),
        KNATIVE + "window": _seconds("stable_window", s.stable_window, 6, 3600),
        KNATIVE + "panic-window-percentage": _within(
            "panic_window_percentage", s.panic_window_percentage, 1, 100),
        KNATIVE + "panic-threshold-percentage": _within(
            "panic_threshold_percentage", s.panic_threshold_percentage, 110, 1000),
        KNATIVE + "scale-to-zero-pod-retention-period": _seconds(
            "scale_to_zero_grace", s.scale_to_zero_grace, 0, 3600),
        KNATIVE + "min-scale": str(least),
        KNATIVE + "max-scale": str(most),
    }


def hpa_spec(function: Function) -> dict[str, Any]:
    """A plain HorizontalPodAutoscaler's bounds, metric and behaviour, from the spec:
    the spec's kind "cpu" (scale up at once, down to the highest recommendation of
    the stable window). The HPA scales on CPU only (of the pod's CPU request) and
    never to zero: for a kind "kpa" function it can only approximate the KPA, which
    counts requests."""
    s = function.scaling
    if s.cpu_target_percentage != int(s.cpu_target_percentage) or \
            not 1 <= s.cpu_target_percentage <= 100:
        raise DeployError(f"{function.name}: cpu_target_percentage must be a whole number "
                          f"from 1 to 100 for an HPA, not {s.cpu_target_percentage:g}")
    window = _seconds("stable_window", s.stable_window, 0, 3600)
    return {"minReplicas": max(1, function.min_instances),
            "maxReplicas": function.max_instances,
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization",
                                          "averageUtilization": int(s.cpu_target_percentage)}}}],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": int(window[:-1])}}}


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", choices=VARIANTS, default="knative",
                        help="knative (Knative Serving + Eventing, default) or plain "
                             "(Deployments, HPA, CronJob)")
    parser.add_argument("--registry", default="",
                        help="where the images were pushed, e.g. ghcr.io/me (default: brkcoin/)")
    parser.add_argument("--tag", default="latest", help="image tag (default: latest)")
    parser.add_argument("--context", default="", help="kubectl context (default: the current one)")


def add_deploy_arguments(parser: argparse.ArgumentParser) -> None:
    _common_arguments(parser)
    parser.add_argument("--out", type=Path,
                        help="write the manifests to this file instead of applying them "
                             "(kubectl apply -f FILE applies them later)")


def add_destroy_arguments(parser: argparse.ArgumentParser) -> None:
    _common_arguments(parser)


def load_kustomization(directory: Path) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Documents and image overrides of a Kustomize directory, bases first."""
    path = directory / "kustomization.yaml"
    if not path.is_file():
        raise DeployError(f"no kustomization.yaml in {directory}")
    kustomization = yaml.safe_load(path.read_text()) or {}
    unsupported = set(kustomization) - KUSTOMIZE_KEYS
    if unsupported:  # fail loudly rather than render something kubectl -k would not
        raise DeployError(f"{path}: brkcoin renders only {sorted(KUSTOMIZE_KEYS)}, "
                          f"not {sorted(unsupported)}; use `kubectl apply -k` instead")
    documents: list[dict[str, Any]] = []
    images: list[dict[str, str]] = []
    for entry in kustomization.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            sub_documents, sub_images = load_kustomization(target)
            documents += sub_documents
            images += sub_images
        else:
            documents += [d for d in yaml.safe_load_all(target.read_text()) if d]
    return documents, images + kustomization.get("images", [])


def _containers(node: Any) -> Iterator[dict[str, Any]]:
    """Every container spec in a manifest, whatever the kind (Pod templates, Knative)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (c for c in value if isinstance(c, dict))
            else:
                yield from _containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from _containers(item)


def _split_image(image: str) -> tuple[str, str]:
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:  # no tag, or a registry port
        return image, ""
    return name, tag


def set_images(documents: list[dict[str, Any]], images: list[dict[str, str]]) -> None:
    """Apply kustomize-style `images` overrides (name -> newName/newTag) in place."""
    overrides = {i["name"]: i for i in images}
    for document in documents:
        for container in _containers(document):
            name, tag = _split_image(container["image"])
            override = overrides.get(name)
            if override:
                name = override.get("newName", name)
                tag = override.get("newTag", tag)
                container["image"] = f"{name}:{tag}" if tag else name


def _by_kind(documents: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in documents if d["kind"] == kind}


def fan_out(documents: list[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    """The manifests with `workers` worker invocations per tick (the files have one)."""
    pings = _by_kind(documents, "PingSource")
    if pings:  # knative: worker-tick-1 .. worker-tick-N
        first = pings["worker-tick-1"]
        copies = []
        for slot in range(1, workers + 1):
            ping = copy.deepcopy(first)
            ping["metadata"]["name"] = f"worker-tick-{slot}"
            ping["metadata"]["labels"][SLOT] = str(slot)
            copies.append(ping)
        at = documents.index(first)
        return documents[:at] + copies + [d for d in documents[at + 1:]
                                          if d["kind"] != "PingSource"]
    job = _by_kind(documents, "CronJob")["worker-tick"]["spec"]["jobTemplate"]["spec"]
    job.update(parallelism=workers, completions=workers, backoffLimit=workers)
    # Pods for N invocations from the start: the ones an autoscaler adds later
    # would get no request until the connections of a tick end.
    worker = FUNCTIONS["worker"]
    pods = min(worker.max_instances, max(1, worker.min_instances,
                                         math.ceil(workers / worker.concurrency)))
    _by_kind(documents, "Deployment")["worker"]["spec"]["replicas"] = pods
    _by_kind(documents, "HorizontalPodAutoscaler")["worker"]["spec"]["minReplicas"] = pods
    return documents


def render(variant: str, registry: str = "", tag: str = "latest",
           workers: int = 1) -> list[dict[str, Any]]:
    """The manifests `brkcoin deploy k8s` applies, images pointed at registry:tag."""
    if variant not in VARIANTS:
        raise DeployError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    documents, images = load_kustomization(K8S_DIR / variant)
    images = [dict(i, newTag=tag) for i in images]
    if registry:
        prefix = registry.rstrip("/")
        images = [dict(i, newName=f"{prefix}/{i['name'].split('/')[-1]}") for i in images]
    set_images(documents, images)
    return fan_out(documents, workers)


def to_yaml(documents: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(documents, sort_keys=False, explicit_start=True)


def _kubectl(args: argparse.Namespace) -> tuple[str, ...]:
    return ("kubectl",) + (("--context", args.context) if args.context else ())


def _check_cluster(args: argparse.Namespace) -> None:
    require_tool("kubectl", KUBECTL_HINT)
    probe = capture([*_kubectl(args), "version", "--request-timeout=10s", "-o", "json"])
    if probe.returncode != 0 or '"serverVersion"' not in probe.stdout:
        last = (probe.stderr.strip().splitlines() or ["no answer"])[-1]
        raise DeployError(f"no Kubernetes cluster reachable through kubectl ({last})")
    if args.variant == "knative":
        crds = capture([*_kubectl(args), "get", "crd", *KNATIVE_CRDS, "-o", "name"])
        if crds.returncode != 0:
            raise DeployError("Knative Serving and Eventing are not installed in this cluster "
                              "(their CRDs are missing): install them, or use --variant plain")


def _plan(args: argparse.Namespace, verb: str, operations: list[Operation]) -> Plan:
    return Plan(f"brkcoin {verb} k8s --variant {args.variant}", tuple(operations),
                ("a bash script as printed; the manifests go to kubectl on its input",),
                preflight=lambda: _check_cluster(args))


def deploy_plan(args: argparse.Namespace) -> Plan:
    rules.check(args, OPTION_RULES)
    workers = args.workers
    manifests = to_yaml(render(args.variant, args.registry, args.tag, workers))
    if args.out:
        return Plan("brkcoin deploy k8s --out", (WriteFile(
            f"write the manifests ({args.variant}, {workers} worker(s) a tick) to {args.out}; "
            f"apply them with: kubectl apply -f {args.out}", args.out, manifests),))
    ticks = (f"{workers} PingSource(s)" if args.variant == "knative"
             else f"a CronJob of {workers} POST(s) a tick")
    operations: list[Operation] = [Step(
        f"apply the namespace, Redis, the functions and {ticks}",
        (*_kubectl(args), "apply", "-f", "-"), stdin=manifests)]
    if args.variant == "knative":
        kept = ",".join(str(slot) for slot in range(1, workers + 1))
        operations.append(Step(
            f"delete the PingSources beyond the {workers} (from a deploy with more workers)",
            (*_kubectl(args), "--namespace", NAMESPACE, "delete",
             "pingsources.sources.knative.dev", "--ignore-not-found",
             "--selector", f"app.kubernetes.io/part-of=brkcoin,{SLOT} notin ({kept})")))
    return _plan(args, "deploy", operations)


def destroy_plan(args: argparse.Namespace) -> Plan:
    rules.check(args, OPTION_RULES)
    # Deleting the Namespace (in the stream) removes the Redis PVC and the wallet too.
    manifests = to_yaml(render(args.variant, args.registry, args.tag))
    return _plan(args, "destroy", [Step(
        "delete everything brkcoin made, the namespace (and with it the wallet) included",
        (*_kubectl(args), "delete", "--ignore-not-found", "-f", "-"), stdin=manifests)])

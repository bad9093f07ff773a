"""`brkcoin deploy k8s`: the Knative (default) or plain-Kubernetes manifests.

The manifests are Kustomize directories (`kubectl apply -k` works on them as they
are: one worker). brkcoin renders the small subset it uses itself (`resources`
and `images`), so a dry run needs no kubectl, and sets per deploy the image
registry/tag and the fan-out:

- knative: one PingSource per worker (worker-tick-1 .. N, each labelled with its
  slot), and the PingSources beyond N deleted;
- plain: the CronJob's Job runs N pods at once (parallelism = completions = N),
  and the worker starts with the pods N invocations need (its HPA's minReplicas).
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
from brkcoin.layout import FUNCTIONS

VARIANTS = ("knative", "plain")
KUSTOMIZE_KEYS = {"apiVersion", "kind", "resources", "images"}
KNATIVE_CRDS = ("services.serving.knative.dev", "pingsources.sources.knative.dev")
KUBECTL_HINT = "install kubectl (https://kubernetes.io/docs/tasks/tools/), or use --dry-run"
NAMESPACE = "brkcoin"
SLOT = "brkcoin/slot"  # the label that numbers the PingSources
OPTION_RULES = {"registry": rules.REGISTRY.or_empty(), "tag": rules.IMAGE_TAG}


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

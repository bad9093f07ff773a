"""`brkcoin deploy k8s`: the Knative (default) or plain-Kubernetes manifests.

The manifests are Kustomize directories (`kubectl apply -k` works on them as they
are). brkcoin renders the small subset it uses itself (`resources` and `images`),
so a dry run needs no kubectl and the image registry/tag can be set per deploy.
"""

from __future__ import annotations

import argparse
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from brkcoin.deploy.common import K8S_DIR, DeployError, capture, require_tool, shell_line

VARIANTS = ("knative", "plain")
KUSTOMIZE_KEYS = {"apiVersion", "kind", "resources", "images"}
KNATIVE_CRDS = ("services.serving.knative.dev", "pingsources.sources.knative.dev")
KUBECTL_HINT = "install kubectl (https://kubernetes.io/docs/tasks/tools/), or use --dry-run"


def add_deploy_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", choices=VARIANTS, default="knative",
                        help="knative (Knative Serving + Eventing, default) or plain "
                             "(Deployments, HPA, CronJob)")
    parser.add_argument("--registry", default="",
                        help="where the images were pushed, e.g. ghcr.io/me (default: brkcoin/)")
    parser.add_argument("--tag", default="latest", help="image tag (default: latest)")
    parser.add_argument("--context", default="", help="kubectl context (default: the current one)")
    parser.add_argument("--out", type=Path,
                        help="with --dry-run: write the manifests to this file instead of stdout")


def add_destroy_arguments(parser: argparse.ArgumentParser) -> None:
    add_deploy_arguments(parser)


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


def render(variant: str, registry: str = "", tag: str = "latest") -> list[dict[str, Any]]:
    """The manifests `brkcoin deploy k8s` applies, images pointed at registry:tag."""
    if variant not in VARIANTS:
        raise DeployError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    documents, images = load_kustomization(K8S_DIR / variant)
    images = [dict(i, newTag=tag) for i in images]
    if registry:
        prefix = registry.rstrip("/")
        images = [dict(i, newName=f"{prefix}/{i['name'].split('/')[-1]}") for i in images]
    set_images(documents, images)
    return documents


def to_yaml(documents: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(documents, sort_keys=False, explicit_start=True)


def _kubectl(args: argparse.Namespace) -> list[str]:
    return ["kubectl"] + (["--context", args.context] if args.context else [])


def _check_cluster(args: argparse.Namespace) -> None:
    require_tool("kubectl", KUBECTL_HINT)
    probe = capture(_kubectl(args) + ["version", "--request-timeout=10s", "-o", "json"])
    if probe.returncode != 0 or '"serverVersion"' not in probe.stdout:
        last = (probe.stderr.strip().splitlines() or ["no answer"])[-1]
        raise DeployError(f"no Kubernetes cluster reachable through kubectl ({last})")
    if args.variant == "knative":
        crds = capture(_kubectl(args) + ["get", "crd", *KNATIVE_CRDS, "-o", "name"])
        if crds.returncode != 0:
            raise DeployError("Knative Serving and Eventing are not installed in this cluster "
                              "(their CRDs are missing): install them, or use --variant plain")


def _apply(args: argparse.Namespace, verb: list[str], manifests: str) -> None:
    command = _kubectl(args) + verb
    print(f"+ {shell_line(command)}", flush=True)
    result = subprocess.run(command, input=manifests, text=True, check=False)
    if result.returncode != 0:
        raise DeployError(f"`{shell_line(command)}` failed with exit code {result.returncode}")


def _plan(args: argparse.Namespace, verb: list[str], manifests: str) -> int:
    header = f"# brkcoin would run: {shell_line(_kubectl(args) + verb)} with:\n"
    if args.out:
        args.out.write_text(header + manifests)
        apply = shell_line(_kubectl(args) + ["apply", "-f", str(args.out)])
        print(f"wrote {args.out}; apply with: {apply}")
    else:
        print(header + manifests, end="")
    return 0


def deploy(args: argparse.Namespace) -> int:
    manifests = to_yaml(render(args.variant, args.registry, args.tag))
    verb = ["apply", "-f", "-"]
    if args.dry_run:
        return _plan(args, verb, manifests)
    _check_cluster(args)
    _apply(args, verb, manifests)
    print("applied; watch with: kubectl -n brkcoin get pods" + (
        ",ksvc" if args.variant == "knative" else ""))
    return 0


def destroy(args: argparse.Namespace) -> int:
    # Deleting the Namespace (in the stream) removes the Redis PVC and the wallet too.
    manifests = to_yaml(render(args.variant, args.registry, args.tag))
    verb = ["delete", "--ignore-not-found", "-f", "-"]
    if args.dry_run:
        return _plan(args, verb, manifests)
    _check_cluster(args)
    _apply(args, verb, manifests)
    return 0

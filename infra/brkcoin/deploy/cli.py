"""`brkcoin deploy TARGET` and `brkcoin destroy TARGET`.

Each target is one module with add_deploy_arguments, add_destroy_arguments,
deploy(args) and destroy(args); this one only wires them into argparse and turns
a DeployError (missing tool, input or endpoint) into a message and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Protocol

from brkcoin.deploy import aws, compose, gcp, k8s
from brkcoin.deploy.common import DeployError

Runner = Callable[[argparse.Namespace], int]


class Target(Protocol):
    """What a target module provides."""

    def add_deploy_arguments(self, parser: argparse.ArgumentParser) -> None: ...
    def add_destroy_arguments(self, parser: argparse.ArgumentParser) -> None: ...
    def deploy(self, args: argparse.Namespace) -> int: ...
    def destroy(self, args: argparse.Namespace) -> int: ...


TARGETS: dict[str, tuple[Target, str]] = {
    "compose": (compose, "Docker Compose on one engine, or a Swarm stack (--swarm)"),
    "k8s": (k8s, "Kubernetes: Knative Services + PingSource, or plain (--variant plain)"),
    "aws": (aws, "AWS Lambda with function URLs and an EventBridge schedule (LocalStack)"),
    "gcp": (gcp, "Google Cloud Run functions, Memorystore and Cloud Scheduler"),
}


def _guarded(verb: str, target: str, action: Runner) -> Runner:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(action(args) or 0)
        except DeployError as e:
            print(f"brkcoin {verb} {target}: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"brkcoin {verb} {target}: interrupted", file=sys.stderr)
            return 130

    return run


def _add_verb(sub: argparse._SubParsersAction[argparse.ArgumentParser], verb: str,
              description: str) -> None:
    parser = sub.add_parser(verb, help=description, description=description)
    targets = parser.add_subparsers(dest="target", required=True, metavar="TARGET")
    for name, (module, summary) in TARGETS.items():
        target = targets.add_parser(name, help=summary, description=f"{verb}: {summary}")
        target.add_argument("--dry-run", action="store_true",
                            help="print what would be applied or run, change nothing")
        if verb == "deploy":
            module.add_deploy_arguments(target)
            target.set_defaults(run=_guarded(verb, name, module.deploy))
        else:
            module.add_destroy_arguments(target)
            target.set_defaults(run=_guarded(verb, name, module.destroy))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `deploy` and `destroy` subcommands."""
    _add_verb(sub, "deploy", "deploy brkcoin's functions to a target")
    _add_verb(sub, "destroy", "remove what `brkcoin deploy TARGET` made")


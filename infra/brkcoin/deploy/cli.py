"""`brkcoin deploy TARGET` and `brkcoin destroy TARGET`.

Each target is one module with add_deploy_arguments, add_destroy_arguments,
deploy_plan(args) and destroy_plan(args) (which check their inputs first); this
one wires them into argparse, adds what every target shares (--dry-run, and
--workers, the fan-out), and hands the plan to plan.run.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Protocol

from brkcoin.deploy import aws, compose, gcp, k8s
from brkcoin.deploy.common import DeployError
from brkcoin.deploy.plan import Plan, run
from brkcoin.layout import MAX_WORKERS


class Target(Protocol):
    """What a target module provides."""

    def add_deploy_arguments(self, parser: argparse.ArgumentParser) -> None: ...
    def add_destroy_arguments(self, parser: argparse.ArgumentParser) -> None: ...
    def deploy_plan(self, args: argparse.Namespace) -> Plan: ...
    def destroy_plan(self, args: argparse.Namespace) -> Plan: ...


TARGETS: dict[str, tuple[Target, str]] = {
    "compose": (compose, "Docker Compose on one engine, or a Swarm stack (--swarm)"),
    "k8s": (k8s, "Kubernetes: Knative Services + PingSources, or plain (--variant plain)"),
    "aws": (aws, "AWS Lambda with function URLs and EventBridge schedules (LocalStack)"),
    "gcp": (gcp, "Google Cloud Run functions, Memorystore and Cloud Scheduler"),
}


def check_workers(args: argparse.Namespace) -> None:
    if not 1 <= args.workers <= MAX_WORKERS:
        raise DeployError(f"--workers must be a whole number from 1 to {MAX_WORKERS} (the "
                          f"worker's instances times the invocations each takes), "
                          f"got {args.workers}")


def _runner(verb: str, name: str, target: Target) -> Callable[[argparse.Namespace], int]:
    def deploy(args: argparse.Namespace) -> int:
        def make() -> Plan:
            check_workers(args)
            return target.deploy_plan(args)
        return run(make, args.dry_run, f"deploy {name}")

    def destroy(args: argparse.Namespace) -> int:
        return run(lambda: target.destroy_plan(args), args.dry_run, f"destroy {name}")

    return deploy if verb == "deploy" else destroy


def _add_verb(sub: argparse._SubParsersAction[argparse.ArgumentParser], verb: str,
              description: str) -> None:
    parser = sub.add_parser(verb, help=description, description=description)
    targets = parser.add_subparsers(dest="target", required=True, metavar="TARGET")
    for name, (module, summary) in TARGETS.items():
        target = targets.add_parser(name, help=summary, description=f"{verb}: {summary}")
        target.add_argument("--dry-run", action="store_true",
                            help="print the plan (every operation, in order), change nothing")
        if verb == "deploy":
            target.add_argument("--workers", type=int, default=1, metavar="N",
                                help="worker invocations each schedule tick starts, as 'N "
                                     "workers' in the DockerCoins lesson (default: 1)")
            module.add_deploy_arguments(target)
        else:
            module.add_destroy_arguments(target)
        target.set_defaults(run=_runner(verb, name, module))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `deploy` and `destroy` subcommands."""
    _add_verb(sub, "deploy", "deploy brkcoin's functions to a target")
    _add_verb(sub, "destroy", "remove what `brkcoin deploy TARGET` made")

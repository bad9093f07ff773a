"""`brkcoin deploy compose`: the whole system on one Docker engine, or a Swarm stack.

Fan-out: the compose file's scheduler POSTs every worker replica once a tick, so
`--workers N` is N worker replicas (`--scale worker=N`, or `docker service scale`
in a swarm, where the file's literal replica count would otherwise win).
"""

from __future__ import annotations

import argparse

from brkcoin.deploy import rules
from brkcoin.deploy.common import CONTAINER_DIR, DeployError, capture, require_tool
from brkcoin.deploy.plan import Plan
from brkcoin.deploy.shell import Step
from brkcoin.layout import ROOT

COMPOSE_FILE = CONTAINER_DIR / "compose.yaml"
OPTION_RULES = {"project": rules.COMPOSE_PROJECT, "registry": rules.REGISTRY.or_empty(),
                "tag": rules.IMAGE_TAG}
DOCKER_HINT = "install Docker (https://docs.docker.com/engine/install/), or use --dry-run"


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--swarm", action="store_true",
                        help="a Docker Swarm stack (docker stack deploy) instead of compose")
    parser.add_argument("--project", default="brkcoin",
                        help="compose project / stack name (default: brkcoin)")
    parser.add_argument("--registry", default="",
                        help="image prefix, e.g. ghcr.io/me (needed by --swarm with several nodes)")
    parser.add_argument("--tag", default="latest", help="image tag (default: latest)")


def add_deploy_arguments(parser: argparse.ArgumentParser) -> None:
    _common_arguments(parser)


def add_destroy_arguments(parser: argparse.ArgumentParser) -> None:
    _common_arguments(parser)
    parser.add_argument("--volumes", action="store_true",
                        help="also delete the wallet volume (Redis AOF): all coins are lost")


def _file() -> str:
    return COMPOSE_FILE.relative_to(ROOT).as_posix()


def _env(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    """The variables compose.yaml interpolates: the image names and, in swarm, the
    name the scheduler resolves to every worker replica (`worker` is one VIP there)."""
    env = (("REGISTRY", args.registry.rstrip("/") or "brkcoin"), ("TAG", args.tag))
    return env + ((("WORKER_HOST", "tasks.worker"),) if args.swarm else ())


def _check_docker() -> None:
    require_tool("docker", DOCKER_HINT)
    info = capture(["docker", "info", "--format", "{{.ServerVersion}}"])
    if info.returncode != 0:
        last = (info.stderr.strip().splitlines() or ["no answer"])[-1]
        raise DeployError(
            f"the Docker engine is not reachable ({last}); start it, or use --dry-run")


def _plan(title: str, steps: list[Step], done: str = "") -> Plan:
    return Plan(title, tuple(steps), ("from the repository root; a bash script as printed",),
                preflight=_check_docker, outcome=lambda values: done)


def deploy_plan(args: argparse.Namespace) -> Plan:
    rules.check(args, OPTION_RULES)
    compose = ("docker", "compose", "-f", _file(), "-p", args.project)
    env, workers = _env(args), args.workers
    if not args.swarm:
        return _plan("brkcoin deploy compose", [Step(
            f"build the images, start every service with {workers} worker replica(s) "
            "(one invocation each per tick), wait until healthy",
            (*compose, "up", "--detach", "--build", "--wait", "--scale", f"worker={workers}"),
            env=env)], "brkcoin is up: web UI on http://localhost:8000")
    steps = [Step("build the images", (*compose, "build"), env=env)]
    if args.registry:
        steps.append(Step(f"push them to {args.registry}", (*compose, "push"), env=env))
    # Swarm reads the same file; images must already exist on (or be pullable by) every node.
    steps.append(Step(f"deploy the stack {args.project}",
                      ("docker", "stack", "deploy", "--compose-file", _file(), args.project),
                      env=env))
    if workers != 1:
        steps.append(Step(f"run {workers} worker replicas (one invocation each per tick)",
                          ("docker", "service", "scale", f"{args.project}_worker={workers}")))
    return _plan("brkcoin deploy compose --swarm", steps,
                 f"stack {args.project} deployed: `docker stack services {args.project}`")


def destroy_plan(args: argparse.Namespace) -> Plan:
    rules.check(args, OPTION_RULES)
    if args.swarm:
        return _plan("brkcoin destroy compose --swarm", [Step(
            f"remove the stack {args.project}", ("docker", "stack", "rm", args.project))])
    down: tuple[str, ...] = ("docker", "compose", "-f", _file(), "-p", args.project, "down",
                             "--remove-orphans")
    what = "stop and remove the containers and networks"
    if args.volumes:
        down, what = (*down, "--volumes"), what + ", and the wallet volume: all coins are lost"
    else:
        what += " (the wallet volume stays)"
    return _plan("brkcoin destroy compose", [Step(what, down, env=_env(args))])

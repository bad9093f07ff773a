"""`brkcoin deploy compose`: the whole system on one Docker engine, or a Swarm stack."""

from __future__ import annotations

import argparse
import os

from brkcoin.deploy.common import (
    CONTAINER_DIR,
    DeployError,
    capture,
    require_tool,
    run,
    shell_line,
)
from brkcoin.layout import ROOT

COMPOSE_FILE = CONTAINER_DIR / "compose.yaml"
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
    return str(COMPOSE_FILE.relative_to(ROOT))


def deploy_commands(args: argparse.Namespace) -> list[list[str]]:
    """The docker commands, in order, run from the repository root."""
    compose = ["docker", "compose", "-f", _file(), "-p", args.project]
    if not args.swarm:
        return [compose + ["up", "--detach", "--build", "--wait"]]
    commands = [compose + ["build"]]
    if args.registry:
        commands.append(compose + ["push"])
    # Swarm reads the same file; images must already exist on (or be pullable by) every node.
    commands.append(["docker", "stack", "deploy", "--compose-file", _file(), args.project])
    return commands


def destroy_commands(args: argparse.Namespace) -> list[list[str]]:
    if args.swarm:
        return [["docker", "stack", "rm", args.project]]
    down = ["docker", "compose", "-f", _file(), "-p", args.project, "down", "--remove-orphans"]
    if args.volumes:
        down.append("--volumes")
    return [down]


def _env(args: argparse.Namespace) -> dict[str, str]:
    """The variables compose.yaml interpolates: the image names and, in swarm, the
    name the scheduler resolves to every worker replica (`worker` is one VIP there)."""
    env = {"REGISTRY": args.registry.rstrip("/") or "brkcoin", "TAG": args.tag}
    if args.swarm:
        env["WORKER_HOST"] = "tasks.worker"
    return env


def _check_docker() -> None:
    require_tool("docker", DOCKER_HINT)
    info = capture(["docker", "info", "--format", "{{.ServerVersion}}"])
    if info.returncode != 0:
        last = (info.stderr.strip().splitlines() or ["no answer"])[-1]
        raise DeployError(
            f"the Docker engine is not reachable ({last}); start it, or use --dry-run")


def _print_plan(commands: list[list[str]], env: dict[str, str], show_file: bool) -> None:
    prefix = " ".join(f"{k}={v}" for k, v in env.items())
    print("# from the repository root, brkcoin would run:")
    for command in commands:
        print(f"# $ {prefix} {shell_line(command)}")
    if show_file:
        print(f"# {_file()}:")
        print(COMPOSE_FILE.read_text(), end="")


def _execute(commands: list[list[str]], env: dict[str, str]) -> None:
    _check_docker()
    for command in commands:
        run(command, env={**os.environ, **env})


def deploy(args: argparse.Namespace) -> int:
    commands, env = deploy_commands(args), _env(args)
    if args.dry_run:
        _print_plan(commands, env, show_file=True)
        return 0
    _execute(commands, env)
    print("brkcoin is up: web UI on http://localhost:8000" if not args.swarm
          else f"stack {args.project} deployed: `docker stack services {args.project}`")
    return 0


def destroy(args: argparse.Namespace) -> int:
    commands, env = destroy_commands(args), _env(args)
    if args.dry_run:
        _print_plan(commands, env, show_file=False)
        return 0
    _execute(commands, env)
    return 0

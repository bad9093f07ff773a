"""`brkcoin deploy|destroy TARGET`: wired into the real `brkcoin` parser, and a clear
one-line message with exit code 2 (never a traceback) when a tool, engine or
cluster is missing. The docker client here has no engine, and the cluster kubectl
is pointed at is a closed loopback port: both failures are real."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from brkcoin.cli import build_parser
from brkcoin.cli import main as brkcoin
from brkcoin.platform.processes import free_port


@pytest.mark.parametrize("verb", ["deploy", "destroy"])
def test_every_target_is_a_subcommand(verb: str) -> None:
    for target in ("compose", "k8s", "aws", "gcp"):
        args = build_parser().parse_args([verb, target, "--dry-run"])
        assert callable(args.run) and args.target == target


@pytest.mark.parametrize("argv, tool", [
    (["deploy", "compose"], "docker"),
    (["destroy", "compose"], "docker"),
    (["deploy", "k8s"], "kubectl"),
    (["destroy", "k8s", "--variant", "plain"], "kubectl"),
    (["deploy", "gcp", "--project", "my-project", "--region", "europe-west1"], "gcloud"),
])
def test_a_missing_tool_is_named(argv: list[str], tool: str, tmp_path: Path, monkeypatch,
                                 capsys) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert brkcoin(argv) == 2
    err = capsys.readouterr().err
    assert f"`{tool}` is not installed" in err and "Traceback" not in err


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client")
def test_docker_without_an_engine(monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/docker.sock")  # nothing there
    assert brkcoin(["deploy", "compose"]) == 2
    assert "the Docker engine is not reachable" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl")
def test_kubectl_without_a_cluster(monkeypatch, tmp_path: Path, capsys) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: none, cluster: {{server: "https://127.0.0.1:{free_port()}"}}}}]
users: [{{name: none, user: {{}}}}]
contexts: [{{name: none, context: {{cluster: none, user: none}}}}]
current-context: none
""")
    monkeypatch.setenv("KUBECONFIG", str(config))
    assert brkcoin(["deploy", "k8s"]) == 2
    assert "no Kubernetes cluster reachable" in capsys.readouterr().err


def test_destroy_compose_keeps_the_wallet_unless_asked(capsys) -> None:
    assert brkcoin(["destroy", "compose", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "down --remove-orphans" in out and "--volumes" not in out
    assert brkcoin(["destroy", "compose", "--dry-run", "--volumes"]) == 0
    assert "down --remove-orphans --volumes" in capsys.readouterr().out

"""The container contract: infra/container/Dockerfile read stage by stage, and each
stage's exact CMD run in a venv built from the same requirements.txt, on a copy of
exactly what the stage COPYs. (No Docker engine here: the image itself is not built.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from deploy_support import NO_DELAYS, spawn_in, wait_http
from dockerfile_model import Stage, parse

from brkcoin.layout import FUNCTIONS, ROOT
from brkcoin.platform.processes import free_port, functions_framework_command, stop

DOCKERFILE = ROOT / "infra" / "container" / "Dockerfile"
NAMES = ("rng", "hasher", "worker", "webui")
HELLO = {"rng": b"RNG running on ", "hasher": b"HASHER running on ",
         "worker": b"WORKER running on ", "webui": b"<!doctype html"}


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return parse(DOCKERFILE)


def test_one_stage_per_function_on_a_slim_official_python(stages: dict[str, Stage]) -> None:
    assert set(stages) == {"base", *NAMES}
    assert stages["base"].base.startswith("python:") and stages["base"].base.endswith("-slim")
    for name in NAMES:
        assert stages[name].parent is stages["base"], f"{name} must build FROM base"


@pytest.mark.parametrize("name", NAMES)
def test_stage_runs_the_plain_command_as_non_root(stages: dict[str, Stage], name: str) -> None:
    stage, folder = stages[name], FUNCTIONS[name].folder.relative_to(ROOT).as_posix()
    # The local runner's command, run from WORKDIR /app: no interpreter path, host or ROOT.
    local = functions_framework_command(FUNCTIONS[name], "127.0.0.1", 8080)
    local = [Path(local[0]).name] + [w.removeprefix(f"{ROOT}/") for w in local[1:]
                                     if w not in ("--host", "127.0.0.1")]
    assert stage.cmd() == local
    assert stage.cmd() == ["functions-framework", "--target", name,
                           "--source", f"{folder}/main.py", "--port", "8080"]
    user = stage.effective("USER")
    assert user and user.split(":")[0] not in ("root", "0"), f"{name} runs as {user!r}"
    assert f"-r {folder}/requirements.txt" in " ".join(stage.own("RUN"))
    assert stage.env()["XDG_RUNTIME_DIR"] == "/tmp"  # gunicorn's socket on the tmpfs
    healthcheck = stage.effective("HEALTHCHECK") or ""
    assert "CMD" in healthcheck and "127.0.0.1:8080" in healthcheck
    assert "THREADS" not in stage.env()  # uvicorn workers serve the async functions


def test_user_10001_has_a_group_of_its_own(stages: dict[str, Stage]) -> None:
    # `useradd --user-group` alone picks gid 999: USER 10001:10001 would have no group name.
    script = " ".join(stages["base"].own("RUN"))
    assert "groupadd --gid 10001 brkcoin" in script
    assert "useradd --uid 10001 --gid 10001" in script


def test_extra_ca_certificates_build_argument(stages: dict[str, Stage]) -> None:
    base = stages["base"]
    assert 'EXTRA_CA_CERTS=""' in base.own("ARG")  # empty by default: nothing added
    script = " ".join(base.own("RUN"))
    assert "update-ca-certificates" in script and "/etc/pip.conf" in script


def _image_tree(stage: Stage, into: Path) -> Path:
    """What the stage's COPY instructions put under WORKDIR /app, and nothing else."""
    app = into / "app"
    for source, dest in stage.copies():
        src = ROOT / source
        if src.is_dir():
            shutil.copytree(src, app / dest, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (app / dest).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, app / dest)
    return app


def _healthcheck(stage: Stage, venv: Path, port: int) -> int:
    """Run the HEALTHCHECK's exec-form command, pointed at `port`."""
    command = json.loads(stage.effective("HEALTHCHECK").split("CMD", 1)[1])
    assert command[0] == "python"
    command = [str(venv / "bin" / "python")] + [w.replace(":8080", f":{port}") for w in command[1:]]
    return subprocess.run(command, capture_output=True, timeout=10, check=False).returncode


@pytest.mark.slow
def test_each_cmd_serves_its_function(stages: dict[str, Stage], requirements_venv,
                                      tmp_path: Path, redis_url: str) -> None:
    started = {}
    try:
        for name in NAMES:
            stage = stages[name]
            venv = requirements_venv(FUNCTIONS[name].folder / "requirements.txt")
            app = _image_tree(stage, tmp_path / name)
            port = free_port()
            command = stage.cmd()
            assert command[0] == "functions-framework" and command[-2:] == ["--port", "8080"]
            command = [str(venv / "bin" / command[0]), *command[1:-1], str(port)]
            run_dir = tmp_path / name / "tmp"  # the container's /tmp tmpfs
            run_dir.mkdir()
            env = {**stage.env(), **NO_DELAYS, "XDG_RUNTIME_DIR": str(run_dir),
                   "REDIS_URL": redis_url, "PATH": os.environ["PATH"], "HOME": str(run_dir)}
            started[name] = (spawn_in(command, app, env, tmp_path / f"{name}.log"), port, venv)
        for name, (_, port, venv) in started.items():
            wait_http(f"http://127.0.0.1:{port}/", timeout=30)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                assert response.status == 200
                assert response.read().lower().startswith(HELLO[name].lower()), name
            assert _healthcheck(stages[name], venv, port) == 0, f"{name} HEALTHCHECK failed"
        # The healthcheck can fail: it does once the server is gone.
        process, port, venv = started["rng"]
        stop(process)
        assert _healthcheck(stages["rng"], venv, port) != 0
    finally:
        for process, _, _ in started.values():
            stop(process)

"""Each function image, run as compose runs it (read-only root, a tmpfs on /tmp, no
capabilities, no new privileges, port on loopback only), on one network with a
Redis: its metadata, the user and group it runs as, its HEALTHCHECK, and the
DockerCoins contract over HTTP."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

import engine
import pytest
from container_support import (
    http,
    inspect,
    proc_status,
    run_healthcheck,
    wait_answering,
)

FUNCTIONS = engine.FUNCTIONS
HELLO = {"rng": "RNG running on ", "hasher": "HASHER running on ",
         "worker": "WORKER running on ", "webui": "<!doctype html"}
NO_DELAYS = ["RNG_DELAY=0", "HASHER_DELAY=0", "WORKER_DELAY=0.01"]
URLS = ["REDIS_URL=redis://redis:6379/0", "RNG_URL=http://rng:8080",
        "HASHER_URL=http://hasher:8080", "WORKER_URL=http://worker:8080"]
LOCKED_DOWN = ["--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
               "--security-opt", "no-new-privileges"]


@dataclass
class Running:
    container: str
    url: str  # http://127.0.0.1:PORT, the published port


@pytest.fixture(scope="module")
def running(images: dict[str, str]) -> Iterator[dict[str, Running]]:
    network = engine.CHECK
    engine.podman("network", "create", network)
    started: dict[str, Running] = {}
    try:
        engine.podman("run", "--detach", "--name", f"{network}-redis", "--network", network,
                      "--network-alias", "redis", "--tmpfs", "/data",
                      engine.base_image("redis"), "redis-server", "--save", "")
        for name in FUNCTIONS:
            container = f"{network}-{name}"
            env = [arg for pair in NO_DELAYS + URLS for arg in ("--env", pair)]
            engine.podman("run", "--detach", "--name", container, "--network", network,
                          "--network-alias", name, *LOCKED_DOWN, *env,
                          "--publish", "127.0.0.1::8080", images[name])
            port = engine.podman("port", container, "8080/tcp").stdout.strip().rsplit(":", 1)[1]
            started[name] = Running(container, f"http://127.0.0.1:{port}")
        for run in started.values():
            wait_answering(run.url + "/", timeout=30)
        yield started
    finally:
        engine.podman("rm", "--force", "--volumes", "--time", "5",
                      *(r.container for r in started.values()), f"{network}-redis", check=False)
        engine.podman("network", "rm", "--force", network, check=False)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_image_config(images: dict[str, str], name: str) -> None:
    [inspected] = json.loads(engine.podman("image", "inspect", images[name]).stdout)
    config = inspected["Config"]
    folder = "webui" if name == "webui" else f"functions/{name}"
    assert config["Cmd"] == ["functions-framework", "--target", name,
                             "--source", f"{folder}/main.py", "--port", "8080"]
    assert config["User"] == "10001:10001"
    assert config["WorkingDir"] == "/app"
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["XDG_RUNTIME_DIR"] == "/tmp"
    assert "THREADS" not in env  # served by uvicorn workers now, not gunicorn threads
    assert "8080/tcp" in config["ExposedPorts"]
    # Kept only in the Docker image format (podman's default OCI format drops it).
    assert inspected["ManifestType"] == "application/vnd.docker.distribution.manifest.v2+json"
    test = inspected["Healthcheck"]["Test"]
    assert test[0] == "CMD" and "http://127.0.0.1:8080/" in " ".join(test)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_holds_only_its_own_folder(running: dict[str, Running], name: str) -> None:
    listing = engine.podman("exec", running[name].container, "find", "/app").stdout.split()
    folder = "/app/webui" if name == "webui" else f"/app/functions/{name}"
    others = [p for p in listing if p not in ("/app", "/app/functions")
              and not p.startswith(folder)]
    assert others == []
    assert f"{folder}/main.py" in listing and f"{folder}/requirements.txt" in listing
    assert not [p for p in listing if "__pycache__" in p or p.endswith(".pyc")]


@pytest.mark.parametrize("name", FUNCTIONS)
def test_runs_as_10001_with_a_named_group(running: dict[str, Running], name: str) -> None:
    assert engine.podman("exec", running[name].container, "id").stdout.strip() == (
        "uid=10001(brkcoin) gid=10001(brkcoin) groups=10001(brkcoin)")
    status = proc_status(running[name].container)
    assert status["Uid"].split() == ["10001"] * 4 and status["Gid"].split() == ["10001"] * 4


@pytest.mark.parametrize("name", FUNCTIONS)
def test_read_only_root_and_a_writable_tmp(running: dict[str, Running], name: str) -> None:
    container = running[name].container
    assert inspect(container, "{{.HostConfig.ReadonlyRootfs}}") == "true"
    probe = ("import errno, sys\n"
             "try:\n    open(sys.argv[1], 'w')\n"
             "except OSError as e:\n    print(errno.errorcode[e.errno])\n"
             "else:\n    print('written')\n")
    for path, expected in (("/app/new-file", "EROFS"), ("/etc/new-file", "EROFS"),
                           ("/tmp/new-file", "written")):
        out = engine.podman("exec", container, "python", "-c", probe, path).stdout.strip()
        assert out == expected, path
    # gunicorn's control socket lives on the tmpfs (XDG_RUNTIME_DIR=/tmp)
    assert engine.podman("exec", container, "find", "/tmp", "-type", "s").stdout.strip()


@pytest.mark.parametrize("name", FUNCTIONS)
def test_no_capabilities_and_no_new_privileges(running: dict[str, Running], name: str) -> None:
    status = proc_status(running[name].container)
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[cap], 16) == 0, cap
    assert status["NoNewPrivs"] == "1"


@pytest.mark.parametrize("name", FUNCTIONS)
def test_healthcheck_passes(running: dict[str, Running], name: str) -> None:
    assert run_healthcheck(running[name].container) == 0


def test_healthcheck_fails_when_nothing_serves(images: dict[str, str]) -> None:
    container = f"{engine.CHECK}-idle"
    engine.podman("run", "--detach", "--name", container, *LOCKED_DOWN,
                  "--entrypoint", "sleep", images["rng"], "120")
    try:
        assert run_healthcheck(container) != 0
    finally:
        engine.podman("rm", "--force", "--time", "0", container, check=False)


def test_rng_contract(running: dict[str, Running]) -> None:
    rng = running["rng"]
    hello = http(rng.url + "/")
    hostname = inspect(rng.container, "{{.Config.Hostname}}")
    assert hello.text == f"RNG running on {hostname}\n"
    first, second = http(rng.url + "/32"), http(rng.url + "/32")
    assert first.status == 200 and first.content_type == "application/octet-stream"
    assert len(first.body) == len(second.body) == 32 and first.body != second.body
    for bad in ("/0", "/x", f"/{2**20 + 1}"):
        answer = http(rng.url + bad)
        assert answer.status == 400 and "error" in answer.json(), bad


def test_hasher_contract(running: dict[str, Running]) -> None:
    hasher = running["hasher"]
    assert http(hasher.url + "/").text.startswith(HELLO["hasher"])
    body = b"brkcoin \x00\xff"
    answer = http(hasher.url + "/", body, content_type="application/octet-stream")
    assert answer.status == 200 and answer.content_type.startswith("text/plain")
    assert answer.text == hashlib.sha256(body).hexdigest()
    units = [bytes([i]) * 32 for i in range(3)]  # the batch form, as the worker sends it
    batch = http(hasher.url + "/?chunk=32", b"".join(units),
                 content_type="application/octet-stream")
    assert batch.text.split() == [hashlib.sha256(unit).hexdigest() for unit in units]
    ragged = http(hasher.url + "/?chunk=32", b"x" * 33, content_type="application/octet-stream")
    assert ragged.status == 400 and "error" in ragged.json()


def test_worker_mines_into_the_wallet_and_webui_reads_it(running: dict[str, Running]) -> None:
    worker, webui = running["worker"], running["webui"]
    assert http(worker.url + "/").text.startswith(HELLO["worker"])
    assert http(worker.url + "/", b'{"seconds": "soon"}').status == 400
    summary = http(worker.url + "/", b'{"seconds": 1.5}').json()
    assert summary["hashes"] > 0 and not any(summary["errors"].values()), summary
    wallet = http(webui.url + "/json").json()
    assert wallet["hashes"] == summary["hashes"] and wallet["coins"] == summary["new_coins"]
    assert isinstance(wallet["now"], float)
    page = http(webui.url + "/")
    assert page.status == 200 and page.text.lower().startswith(HELLO["webui"])
    health = http(webui.url + "/health").json()
    assert health["redis"]["up"], health
    assert all(health["functions"][name]["up"] for name in ("rng", "hasher", "worker")), health

"""podman for the container tests: every call bounded in time; the base images the
Dockerfile and compose file name, pulled or (no registry reachable) made locally;
the four function images built from infra/container/Dockerfile as a user builds them.

`python engine.py cleanup` removes whatever the tests started (never an image).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
CONTAINER_DIR = ROOT / "infra" / "container"
DOCKERFILE = CONTAINER_DIR / "Dockerfile"
COMPOSE_FILE = CONTAINER_DIR / "compose.yaml"
STAND_INS = HERE / "stand-ins"
FUNCTIONS = ("rng", "hasher", "worker", "webui")
DEBIAN = "localhost/brkcoin-debian:bookworm"  # the stand-ins' base, from debootstrap
PROJECT = "brkcoin-ci"  # compose project of the stack test
CHECK = "brkcoin-check"  # network and name prefix of the single-image checks


class PodmanError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"[containers] {message}", file=sys.stderr, flush=True)


def podman(*args: str, timeout: float = 120, check: bool = True,
           stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["podman", *args], input=stdin, capture_output=True,
                            timeout=timeout, check=False)
    done = subprocess.CompletedProcess(result.args, result.returncode,
                                       result.stdout.decode(errors="replace"),
                                       result.stderr.decode(errors="replace"))
    if check and done.returncode != 0:
        raise PodmanError(f"podman {' '.join(args)[:300]} exited {done.returncode}:\n"
                          f"{done.stderr[-3000:]}")
    return done


def exists(image: str) -> bool:
    return podman("image", "exists", image, check=False).returncode == 0


def image(name: str) -> str:
    """The tag compose.yaml uses by default (${REGISTRY:-brkcoin}/NAME:${TAG:-latest})."""
    return f"brkcoin/{name}:latest"


def qualified(name: str) -> str:
    """Docker Hub's full name for a short one, as docker resolves it."""
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return name
    return f"docker.io/{name}" if rest else f"docker.io/library/{name}"


def base_images() -> dict[str, str]:
    """Each image the Dockerfile builds FROM or compose.yaml runs, with its stand-in recipe."""
    text = DOCKERFILE.read_text()
    version = re.search(r"^ARG PYTHON_VERSION=(\S+)", text, re.M)
    python = re.search(r"^FROM (\S+) AS base", text, re.M)
    if not (version and python):
        raise PodmanError(f"{DOCKERFILE}: no `ARG PYTHON_VERSION=` or `FROM ... AS base`")
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    return {
        python.group(1).replace("${PYTHON_VERSION}", version.group(1)): "python",
        services["redis"]["image"]: "redis",
        services["scheduler"]["image"]: "curl",
    }


def base_image(recipe: str) -> str:
    """The fully qualified name of the base image made by `recipe` when missing."""
    return qualified(next(name for name, r in base_images().items() if r == recipe))


def apt_mirror() -> str:
    """The Debian mirror apt uses here: debootstrap fetches from it."""
    sources = Path("/etc/apt")
    found = [uri for path in sorted(sources.glob("sources.list.d/*.sources"))
             for uri in re.findall(r"^URIs:\s*(\S+)", path.read_text(), re.M)]
    for path in [sources / "sources.list", *sorted(sources.glob("sources.list.d/*.list"))]:
        if path.exists():
            found += re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", path.read_text(), re.M)
    debian = [uri for uri in found if uri.rstrip("/").endswith("/debian")]
    return debian[0] if debian else "http://deb.debian.org/debian"


def extra_ca_certs() -> str:
    """For the EXTRA_CA_CERTS build argument: $EXTRA_CA_CERTS, else the certificates
    this machine adds to its own store (a TLS-inspecting proxy's, for one)."""
    if "EXTRA_CA_CERTS" in os.environ:
        return os.environ["EXTRA_CA_CERTS"]
    local = sorted(Path("/usr/local/share/ca-certificates").rglob("*.crt"))
    return "".join(path.read_text() for path in local)


def ensure_debian() -> None:
    if exists(DEBIAN):
        return
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="brkcoin-debootstrap-", dir="/var/tmp"))
    try:
        mirror = apt_mirror()
        log(f"debootstrap bookworm from {mirror} (1 to 3 minutes)")
        subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(root), mirror],
                       check=True, timeout=900, capture_output=True)
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (root / cache).glob("*"):
                if entry.is_file():
                    entry.unlink()
        tar = subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-c", "."],
                             check=True, timeout=300, capture_output=True)
        podman("import", "--change", 'CMD ["bash"]', "-", DEBIAN, stdin=tar.stdout, timeout=300)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    log(f"{DEBIAN}: {time.monotonic() - started:.0f} s")


def ensure_base_images() -> None:
    """Present already, else pulled, else made locally under the same name, so the
    Dockerfile and compose file are used unchanged (podman pulls only what is missing)."""
    for name, recipe in base_images().items():
        full = qualified(name)
        if exists(full):
            continue
        started = time.monotonic()
        if podman("pull", "--quiet", full, timeout=600, check=False).returncode == 0:
            log(f"{full}: pulled in {time.monotonic() - started:.0f} s")
            continue
        log(f"{full}: no registry answers; making a stand-in ({recipe}.Containerfile)")
        ensure_debian()
        started = time.monotonic()
        podman("build", "--format", "docker", "--tag", full,
               "--file", str(STAND_INS / f"{recipe}.Containerfile"), str(STAND_INS), timeout=900)
        log(f"{full}: stand-in built in {time.monotonic() - started:.0f} s")


def build_function_images() -> None:
    """`docker build -f infra/container/Dockerfile --target NAME .` for the four
    functions, in the Docker image format (the OCI one drops HEALTHCHECK)."""
    certs = extra_ca_certs()
    for name in FUNCTIONS:
        started = time.monotonic()
        podman("build", "--format", "docker", "--file", str(DOCKERFILE),
               "--ignorefile", str(CONTAINER_DIR / "Dockerfile.dockerignore"),
               "--target", name, "--build-arg", f"EXTRA_CA_CERTS={certs}",
               "--tag", image(name), str(ROOT), timeout=900)
        log(f"{image(name)}: built in {time.monotonic() - started:.0f} s")


def leftovers() -> dict[str, list[str]]:
    """What the tests may have started and not removed: containers, pods, networks, volumes."""
    def names(*args: str) -> list[str]:
        return [n for n in podman(*args, check=False).stdout.split() if n]

    mine = (PROJECT, CHECK, f"pod_{PROJECT}")
    return {
        "containers": [n for n in names("ps", "--all", "--format", "{{.Names}}")
                       if n.startswith(mine)],
        "pods": [n for n in names("pod", "ps", "--format", "{{.Name}}") if n.startswith(mine)],
        "networks": [n for n in names("network", "ls", "--format", "{{.Name}}")
                     if n.startswith(mine)],
        "volumes": [n for n in names("volume", "ls", "--format", "{{.Name}}")
                    if n.startswith(mine)],
    }


def cleanup() -> dict[str, list[str]]:
    """Remove everything the tests started; return what was still there."""
    left = leftovers()
    for pod in left["pods"]:
        podman("pod", "rm", "--force", "--time", "5", pod, check=False)
    if left["containers"]:
        podman("rm", "--force", "--volumes", "--time", "5", *left["containers"], check=False)
    for kind in ("networks", "volumes"):
        if left[kind]:
            podman(kind[:-1], "rm", "--force", *left[kind], check=False)
    return left


if __name__ == "__main__":
    if sys.argv[1:] != ["cleanup"]:
        sys.exit("usage: engine.py cleanup")
    removed = {kind: names for kind, names in cleanup().items() if names}
    if removed:
        log(f"removed what the tests left: {removed}")

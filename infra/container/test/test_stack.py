"""infra/container/compose.yaml under podman-compose, as a user runs it (the seed's
demo delays, the real scheduler): it mines within a minute, the web UI sees every
function, the networks isolate as the seed's, killed containers come back, more
worker replicas mine more, and `down` leaves only the wallet volume.

The tests run in file order on one stack; each leaves it as the next expects.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import engine
import pytest
from container_support import (
    free_port,
    http,
    inspect,
    proc_status,
    run_healthcheck,
    wait_for,
)

PROJECT = engine.PROJECT
ARTIFACTS = engine.ROOT / "tests" / "artifacts" / "containers"
# Variables compose.yaml reads: a user's own values must not change what is tested.
COMPOSE_VARIABLES = ("REGISTRY", "TAG", "RNG_DELAY", "HASHER_DELAY", "WORKER_DELAY",
                     "WORKER_TOKEN", "WORKER_HOST", "SECONDS_PER_TICK", "WEBUI_PORT")
TICK_ENDS = 55  # second of the minute when a tick's invocations end (SECONDS_PER_TICK)


def podman_compose() -> str:
    beside = Path(sys.executable).parent / "podman-compose"  # installed into the venv
    found = str(beside) if beside.exists() else shutil.which("podman-compose")
    if not found:
        pytest.fail("podman-compose is not installed: `make test-containers` installs it")
    return found


@dataclass
class Stack:
    url: str  # the web UI, published on loopback
    env: dict[str, str]
    up_at: float  # time.time() when `up` returned

    def compose(self, *args: str, timeout: float = 180) -> str:
        command = [podman_compose(), "-f", str(engine.COMPOSE_FILE), "-p", PROJECT, *args]
        result = subprocess.run(command, env=self.env, capture_output=True, text=True,
                                timeout=timeout, check=False)
        assert result.returncode == 0, f"{' '.join(args)}:\n{result.stderr[-3000:]}"
        return result.stdout

    def wallet(self) -> dict[str, Any]:
        return http(self.url + "/json", timeout=5).json()


def container(service: str, replica: int = 1) -> str:
    return f"{PROJECT}_{service}_{replica}"  # podman-compose's names


@pytest.fixture(scope="module")
def stack(images: dict[str, str]) -> Iterator[Stack]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in COMPOSE_VARIABLES}
    env["WEBUI_PORT"] = f"127.0.0.1:{port}"  # published on loopback only
    running = Stack(f"http://127.0.0.1:{port}", env, 0.0)
    try:
        running.compose("up", "--detach")
        running.up_at = time.time()
        yield running
    finally:
        engine.cleanup()  # whatever a failed test left standing


def hashes_per_second(stack: Stack, seconds: float = 10) -> float:
    """The rate over a window, both ends read from Redis' clock, as the page does."""
    before = stack.wallet()
    time.sleep(seconds)
    after = stack.wallet()
    hashes: int = after["hashes"] - before["hashes"]
    elapsed: float = after["now"] - before["now"]
    return hashes / elapsed


def sleep_into_a_tick(length: float, not_before: float = 0.0) -> None:
    """Sleep until a window of `length` seconds, starting after `not_before`, lies
    inside a tick: from 3 s after the top of a minute to before the tick ends."""
    now = max(time.time(), not_before)
    minute, second = now - now % 60, now % 60
    if second < 3:
        start = minute + 3
    elif second <= TICK_ENDS - 3 - length:
        start = now
    else:
        start = minute + 60 + 3
    time.sleep(max(0.0, start - time.time()))


def resolves(name: str, where: str) -> bool:
    """Whether `name` resolves inside container `where` (glibc's getent, in every image)."""
    return engine.podman("exec", where, "getent", "ahostsv4", name,
                         check=False).returncode == 0


def test_mines_within_a_minute_of_start(stack: Stack) -> None:
    # The scheduler's first tick goes at once: no wait for the top of the minute.
    wait_for("the first hashes in the wallet", lambda: stack.wallet()["hashes"] > 0,
             timeout=stack.up_at + 60 - time.time())
    engine.log(f"first hashes {time.time() - stack.up_at:.0f} s after `up` returned")


def test_webui_sees_every_function_up(stack: Stack) -> None:
    def all_up() -> dict[str, Any] | None:
        report = http(stack.url + "/health", timeout=5).json()
        up = report["redis"]["up"] and all(f["up"] for f in report["functions"].values())
        return report if up else None

    health = wait_for("every function up in /health", all_up, timeout=20)
    assert health is not None and set(health["functions"]) == {"rng", "hasher", "worker"}


def test_the_page_shows_every_function_up(stack: Stack) -> None:
    chromium = shutil.which(os.environ.get("BRKCOIN_CHROMIUM", "chromium"))
    if chromium is None:
        message = "no Chromium: `sh infra/install-browser.sh` installs it"
        if os.environ.get("BRKCOIN_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(stack.url + "/")
            for name in ("webui", "redis", "rng", "hasher", "worker"):
                page.wait_for_selector(f'#health li[data-name="{name}"].up', timeout=15_000)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "compose-webui.png"), full_page=True)
        finally:
            browser.close()


def test_networks_isolate_as_the_seed(stack: Stack) -> None:
    # rng, hasher and redis never see each other; the worker sees them all (and
    # they see it); the scheduler sees only the worker; the web UI sees everything.
    reach = {
        "worker": {"rng", "hasher", "redis"},
        "webui": {"rng", "hasher", "redis", "worker"},
        "scheduler": {"worker"},
        "rng": {"worker"},
        "hasher": {"worker"},
    }
    for service, reachable in reach.items():
        for name in ("rng", "hasher", "redis", "worker"):
            if name != service:
                assert resolves(name, container(service)) == (name in reachable), (
                    f"{service} {'cannot' if name in reachable else 'can'} resolve {name}")


def test_services_run_locked_down(stack: Stack) -> None:
    users = {"rng": "10001", "hasher": "10001", "worker": "10001", "webui": "10001",
             "scheduler": "65534"}
    for service, uid in users.items():
        name = container(service)
        assert inspect(name, "{{.HostConfig.ReadonlyRootfs}}") == "true", service
        status = proc_status(name)
        assert status["Uid"].split()[0] == uid, service
        assert int(status["CapEff"], 16) == 0 and status["NoNewPrivs"] == "1", service
        mounts = engine.podman("exec", name, "cat", "/proc/mounts").stdout.splitlines()
        assert any(m.split()[1:3] == ["/tmp", "tmpfs"] for m in mounts), service


def test_more_worker_replicas_mine_more(stack: Stack) -> None:
    sleep_into_a_tick(10, not_before=stack.up_at)
    one = hashes_per_second(stack)
    stack.compose("up", "--detach", "--scale", "worker=3")
    scheduler = container("scheduler")

    def worker_addresses() -> list[str]:
        # Names reach aardvark-dns as the containers come up (and one may be
        # recreated): empty, or fewer than three, for a moment.
        listed = engine.podman("exec", scheduler, "getent", "ahostsv4", "worker",
                               check=False).stdout.split()
        found = sorted({word for word in listed if word[0].isdigit()})
        return found if len(found) == 3 else []

    replicas = wait_for("three worker replicas in the scheduler's DNS", worker_addresses,
                        timeout=30)

    def mining() -> list[str]:
        """The replicas with an invocation in flight: each holds its lock while it
        mines (a tick now would skip it)."""
        return [address for address in replicas if engine.podman(
            "exec", scheduler, "flock", "-n", "-E", "75", f"/tmp/{address}", "true",
            check=False).returncode == 75]

    # The new replicas get their first POST at the next tick; one that joined the
    # scheduler's DNS just as a tick fired gets it at the one after (CI saw it).
    now = time.time()
    for _ in range(2):
        sleep_into_a_tick(10, not_before=now - now % 60 + 60)
        if len(mining()) == 3:
            break
        now = time.time()
    three = hashes_per_second(stack)
    engine.log(f"hashes/s: one worker {one:.1f}, three workers {three:.1f}")
    assert one > 1.5  # the seed's 0.1 s delays: about 3.3 a second
    assert mining() == replicas, "an invocation of each replica in flight"
    assert three > 2 * one


@pytest.mark.parametrize("service", ["hasher", "worker"])
def test_a_killed_container_is_restarted(stack: Stack, service: str) -> None:
    name = container(service)
    pid, restarts = int(inspect(name, "{{.State.Pid}}")), int(inspect(name, "{{.RestartCount}}"))
    os.kill(pid, signal.SIGKILL)  # its main process dies, as in a crash
    wait_for(f"{name} restarted", lambda: inspect(name, "{{.State.Running}} {{.RestartCount}}")
             == f"true {restarts + 1}", timeout=30)
    wait_for(f"{name} healthy again", lambda: run_healthcheck(name) == 0, timeout=30)
    assert int(inspect(name, "{{.State.Pid}}")) != pid


def test_down_leaves_only_the_wallet_volume(stack: Stack) -> None:
    hashes = stack.wallet()["hashes"]
    # podman-compose cannot scale in, and `down` stops only the replicas the file declares.
    engine.podman("rm", "--force", "--time", "10", container("worker", 2), container("worker", 3))
    stack.compose("down")
    left = engine.leftovers()
    assert left == {"containers": [], "pods": [], "networks": [],
                    "volumes": [f"{PROJECT}_wallet"]}
    # The wallet outlives the stack: Redis reads it back from the append-only file.
    stack.compose("up", "--detach", "redis")
    kept = wait_for("redis serving the kept wallet", lambda: engine.podman(
        "exec", container("redis"), "redis-cli", "get", "hashes", check=False).stdout.strip(),
        timeout=20)
    assert int(kept) >= hashes > 0
    stack.compose("down", "--volumes")
    assert engine.leftovers() == {"containers": [], "pods": [], "networks": [], "volumes": []}

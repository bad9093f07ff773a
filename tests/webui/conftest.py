"""Fixtures for the web UI tests: a real redis-server, the real local stack
(functions-framework processes on free loopback ports) and a real headless
Chromium driven by Playwright. Nothing is mocked.

Without Chromium or Playwright the browser tests skip and say how to install
them; with BRKCOIN_REQUIRE_BROWSER=1 (CI) they fail instead.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from brkcoin.platform.processes import free_port
from brkcoin.stack import Stack

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
DOCS = ROOT / "docs"
# Fast mining for the tests; the worker's small delay keeps the 2-core machine usable.
STACK_ENV = {"RNG_DELAY": "0", "HASHER_DELAY": "0", "WORKER_DELAY": "0.01"}
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INSTALL_HINT = (
    "install it with `sudo sh infra/install-browser.sh` (Debian: apt-get install chromium) "
    "and `.venv/bin/pip install 'playwright>=1.50,<2'`; set BRKCOIN_CHROMIUM to use another binary"
)


def _get_json(url: str, timeout: float = 5) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def _add_coin(client: redis.Redis, digest: str, when: float | None = None) -> None:
    """Record a coin exactly as the worker's flush does (wallet + capped recent list)."""
    when = time.time() if when is None else when
    pipe = client.pipeline(transaction=True)
    pipe.hset("wallet", digest, os.urandom(32))
    pipe.lpush("coins:recent", json.dumps({"digest": digest, "time": when}))
    pipe.ltrim("coins:recent", 0, 99)
    pipe.execute()


@pytest.fixture
def get_json() -> Callable[..., dict]:
    """GET a URL and decode its JSON body."""
    return _get_json


@pytest.fixture
def add_coin() -> Callable[..., None]:
    """Write a coin into Redis the way the worker does."""
    return _add_coin


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """rng, hasher, worker and webui processes and a real Redis, all on free ports."""
    names = ("rng", "hasher", "worker", "webui")
    running = Stack(
        tmp_path_factory.mktemp("stack"),
        ports={name: free_port() for name in names},
        redis_port=free_port(),
        env=STACK_ENV,
        names=names,
    ).start()
    yield running
    running.stop()


class Miner:
    """Runs worker invocations in the background, as the scheduler would."""

    def __init__(self, worker_url: str) -> None:
        self.worker_url = worker_url
        self.threads: list[threading.Thread] = []
        self.results: list[dict] = []

    def mine(self, seconds: float, concurrency: int = 1) -> None:
        body = json.dumps({"seconds": seconds, "concurrency": concurrency}).encode()

        def run() -> None:
            request = urllib.request.Request(
                self.worker_url + "/", body, {"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=seconds + 30) as answer:
                    self.results.append(json.loads(answer.read()))
            except urllib.error.HTTPError as e:  # 503 with the unrecorded counts
                self.results.append(json.loads(e.read()))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)

    def wait(self, timeout: float = 60) -> list[dict]:
        for thread in self.threads:
            thread.join(timeout)
        return self.results


@pytest.fixture
def miner(stack: Stack) -> Iterator[Miner]:
    running = Miner(stack.urls["worker"])
    yield running
    running.wait()  # never leave an invocation running into the next test


@pytest.fixture
def miner_of() -> Iterator[Callable[[str], Miner]]:
    """miner_of(worker URL): a Miner for any stack's worker, waited for at teardown."""
    made: list[Miner] = []

    def make(worker_url: str) -> Miner:
        made.append(Miner(worker_url))
        return made[-1]

    yield make
    for running in made:
        running.wait()


def _chromium() -> str | None:
    given = os.environ.get("BRKCOIN_CHROMIUM")
    if given:
        return shutil.which(given)  # a path or a name; None when not executable
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _missing(reason: str) -> None:
    if os.environ.get("BRKCOIN_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} and BRKCOIN_REQUIRE_BROWSER=1; {INSTALL_HINT}", pytrace=False)
    pytest.skip(f"{reason}: browser tests skipped; {INSTALL_HINT}")


# Module-scoped: Playwright's sync API runs an event loop in this thread while
# it is open, and a test after it that calls asyncio.run() (on the same xdist
# worker) would find that loop running.
@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    executable = _chromium()
    if executable is None:
        _missing("no Chromium found")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright for Python is not installed")
    with sync_playwright() as playwright:
        # The system Chromium, never a downloaded one; the flags stop it from
        # calling home (the test machines have no internet).
        launched = playwright.chromium.launch(
            executable_path=executable, args=CHROMIUM_ARGS, headless=True
        )
        yield launched
        launched.close()


class Console:
    """Everything the page reports as an error: console.error and uncaught exceptions."""

    def __init__(self, page) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))


@pytest.fixture
def page_factory(browser) -> Iterator[Callable[..., tuple[object, Console]]]:
    contexts = []

    def open_page(width: int = 1280, height: int = 900) -> tuple[object, Console]:
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15_000)
        return page, Console(page)

    yield open_page
    for context in contexts:
        context.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def screenshot(artifacts: Path) -> Callable[..., None]:
    """screenshot(page, name, docs=False): into tests/artifacts/; with docs=True and
    BRKCOIN_UPDATE_DOCS=1 also into docs/, where the README shows it."""

    def save(page, name: str, docs: bool = False) -> None:
        path = artifacts / name
        page.screenshot(path=str(path), full_page=True)
        if docs and os.environ.get("BRKCOIN_UPDATE_DOCS") == "1":
            DOCS.mkdir(exist_ok=True)
            shutil.copyfile(path, DOCS / name)

    return save

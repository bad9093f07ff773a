"""The page in a real headless Chromium against the real local stack: Redis,
rng, hasher, worker and webui as functions-framework processes."""

from __future__ import annotations

import secrets
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from brkcoin.platform.processes import free_port

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
WEBUI = ROOT / "webui"

SPEED = "Number(document.getElementById('speed').dataset.value)"
POINTS = "brkcoin.chart.data[1].filter(v => v !== null).length"
# Pixels of the speed line's colour (#f5b53d) on the chart canvas: proof it was drawn.
LINE_PIXELS = """() => {
  const c = document.querySelector('#chart canvas');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (Math.abs(d[i] - 245) < 12 && Math.abs(d[i + 1] - 181) < 12
        && Math.abs(d[i + 2] - 61) < 12 && d[i + 3] > 200) n++;
  }
  return n;
}"""
# Chromium's own log line for an HTTP error answer; expected while Redis is down.
HTTP_503 = "Failed to load resource: the server responded with a status of 503"


def _shown(page, element_id: str) -> int:
    return int(page.get_attribute(f"#{element_id}", "data-value"))


def _wait_totals_match(page, totals: dict) -> None:
    page.wait_for_function(
        "([h, c]) => document.getElementById('hashes').dataset.value === String(h)"
        " && document.getElementById('coins').dataset.value === String(c)",
        arg=[totals["hashes"], totals["coins"]],
        timeout=5000,
    )


def test_live_page_while_mining(stack, miner, page_factory, get_json, add_coin, screenshot):
    page, console = page_factory(1280, 900)
    wallet = stack.redis.client()
    start = int(wallet.get("hashes") or 0)  # the stack is the session's: others mined too
    miner.mine(seconds=12, concurrency=2)
    page.goto(stack.urls["webui"] + "/")

    page.wait_for_function(f"() => {SPEED} > 0", timeout=10_000)
    page.wait_for_function(f"() => {POINTS} >= 4", timeout=10_000)
    assert page.evaluate(LINE_PIXELS) > 50, "the speed line is not drawn"

    # The page's speed agrees with what Redis' counter did over the same seconds.
    speeds, before = [], (time.time(), int(wallet.get("hashes")))
    for _ in range(4):
        time.sleep(1)
        speeds.append(page.evaluate(SPEED))
    true_rate = (int(wallet.get("hashes")) - before[1]) / (time.time() - before[0])
    assert true_rate > 0
    assert 0.6 * true_rate < statistics.median(speeds) < 1.4 * true_rate, (speeds, true_rate)

    # The worker's coins fill the table, newest first.
    page.wait_for_function("() => document.querySelectorAll('#coins-body tr').length >= 3")
    mined = {d.decode() for d in wallet.hkeys("wallet")}
    shown = page.eval_on_selector_all("#coins-body td.digest", "tds => tds.map(td => td.title)")
    assert set(shown) <= mined, "every coin in the table is in the wallet"

    page.wait_for_selector('#health li[data-name="worker"].up', timeout=8000)
    # The panel adds up the worker's telemetry: one invocation of two loops.
    page.wait_for_function(
        "() => ['invocations', 'loops'].map(f => document.querySelector("
        "`.fn[data-name=worker] [data-field=${f}]`).dataset.value).join() === '1,2'"
        " && Number(document.querySelector('.fn[data-name=rng] [data-field=calls_per_s]')"
        ".dataset.value) > 0",
        timeout=5000,
    )
    screenshot(page, "webui-mining.png")

    results = miner.wait()
    assert results and all("error" not in r for r in results), results
    totals = get_json(stack.urls["webui"] + "/json")
    assert totals["hashes"] == int(wallet.get("hashes")) == start + sum(
        r["hashes"] for r in results)
    assert totals["coins"] == wallet.hlen("wallet")
    _wait_totals_match(page, totals)

    # A coin recorded the worker's way appears in the table (after mining: while
    # mining, the worker's own coins push it out of the 10 rows within a second).
    digest = "0" + secrets.token_hex(32)[1:]
    add_coin(wallet, digest)
    page.wait_for_selector(f'#coins-body tr:first-child td.digest[title="{digest}"]', timeout=5000)
    _wait_totals_match(page, {"hashes": totals["hashes"], "coins": totals["coins"] + 1})
    for name in ("webui", "redis", "rng", "hasher", "worker"):
        assert page.get_attribute(f'#health li[data-name="{name}"]', "class") == "up", name
    assert page.text_content("#status-text") == "live"
    assert console.errors == []


def test_phone_width(stack, miner, page_factory, get_json, screenshot):
    page, console = page_factory(390, 844)
    miner.mine(seconds=6)
    page.goto(stack.urls["webui"] + "/")
    page.wait_for_function(f"() => {SPEED} > 0 && {POINTS} >= 2", timeout=10_000)
    # Nothing wider than the phone: no sideways scrolling.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    for selector in ("#chart canvas", "#per-function .fns"):
        box = page.locator(selector).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, selector
    for element_id in ("speed", "hashes", "coins"):
        box = page.locator(f"#{element_id}").bounding_box()
        assert box["height"] >= 24, f"#{element_id} is not a big number"
    screenshot(page, "webui-mining-phone.png")
    miner.wait()
    _wait_totals_match(page, get_json(stack.urls["webui"] + "/json"))
    assert console.errors == []


def test_keeps_working_across_a_redis_restart(stack, page_factory, get_json):
    page, console = page_factory(1024, 768)
    wallet = stack.redis.client()
    page.goto(stack.urls["webui"] + "/")
    page.wait_for_function("() => document.getElementById('status-text').textContent === 'live'")
    newest = page.evaluate("brkcoin.state.samples.at(-1).now")

    stack.redis.stop()
    try:
        page.wait_for_function(
            "() => document.getElementById('status-text').textContent === 'Redis unreachable'",
            timeout=5000,
        )
        assert "Redis unreachable at 127.0.0.1" in page.text_content("#alert")
        assert page.evaluate("document.body.classList.contains('stale')"), "numbers not dimmed"
        page.wait_for_selector('#health li[data-name="redis"].down', timeout=3000)
    finally:
        stack.redis.start()  # the same port and AOF: the next tests see the same wallet

    wallet.incrby("hashes", 1000)  # the page must follow the counter again
    page.wait_for_function(
        "() => document.getElementById('status-text').textContent === 'live'", timeout=5000
    )
    _wait_totals_match(page, get_json(stack.urls["webui"] + "/json"))
    assert page.is_hidden("#alert")
    assert not page.evaluate("document.body.classList.contains('stale')")
    # Readings go on (their number is capped, so the newest's time tells).
    page.wait_for_function(f"() => brkcoin.state.samples.at(-1).now > {newest}",
                           timeout=5000)
    unexpected = [e for e in console.errors if HTTP_503 not in e]
    assert unexpected == []
    assert any(HTTP_503 in e for e in console.errors), "the page did see Redis down"


@pytest.fixture
def static_host() -> Iterator[str]:
    """The page's files from a plain static web server, as from a bucket."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
         "--directory", str(WEBUI)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        give_up = time.monotonic() + 10
        while time.monotonic() < give_up:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.05)
        yield url
    finally:
        server.terminate()
        server.wait(10)


@pytest.mark.parametrize("host", ["http.server", "file://"])
def test_static_hosting_with_api_parameter(host, stack, request, page_factory, get_json):
    page, console = page_factory()
    stack.redis.client().incrby("hashes", 3)
    where = (WEBUI / "index.html").as_uri()
    if host == "http.server":
        where = request.getfixturevalue("static_host") + "/index.html"
    page.goto(f"{where}?api={stack.urls['webui']}")
    page.wait_for_function(
        "() => document.getElementById('status-text').textContent === 'live'", timeout=5000
    )
    _wait_totals_match(page, get_json(stack.urls["webui"] + "/json"))
    page.wait_for_selector('#health li[data-name="rng"].up', timeout=8000)
    assert page.text_content("#api") == stack.urls["webui"] + "/json"
    assert console.errors == [], "cross-origin reads need the CORS headers"


def test_static_copy_without_api_says_what_to_do(static_host, page_factory):
    page, _ = page_factory()
    page.goto(f"{static_host}/index.html")
    page.wait_for_function(
        "() => document.getElementById('status-text').textContent === 'webui unreachable'",
        timeout=5000,
    )
    assert "?api=http://HOST:PORT" in page.text_content("#alert")


# What DockerCoins' page does with /json, in a few lines (its files are not in this
# repo): poll `json` relative to the page once a second, speed = delta hashes /
# delta now between successive readings, plot (x: now, y: speed).
DOCKERCOINS_STYLE_PAGE = """<!doctype html>
<html><body><span id="speed"></span><canvas id="graph" width="600" height="200"></canvas>
<script>
var series = [], points = [], types = [];
function refresh() {
  fetch("json").then(function (r) { return r.json(); }).then(function (data) {
    types.push([typeof data.coins, typeof data.hashes, typeof data.now]);
    series.push(data);
    if (series.length < 2) return;
    var s1 = series[series.length - 2], s2 = series[series.length - 1];
    var speed = (s2.hashes - s1.hashes) / (s2.now - s1.now);
    points.push({x: s2.now, y: speed});
    document.getElementById("speed").textContent = "~" + speed.toFixed(1) + " hashes/second";
    var g = document.getElementById("graph").getContext("2d");
    g.clearRect(0, 0, 600, 200);
    g.beginPath();
    points.forEach(function (p, i) { g.lineTo(i * 20, 190 - p.y / 10); });
    g.stroke();
  });
}
setInterval(refresh, 1000);
</script></body></html>"""


def test_dockercoins_style_page_reads_our_json(stack, miner, page_factory):
    page, console = page_factory()
    webui = stack.urls["webui"]
    # Served from the webui's own origin, as DockerCoins served its page beside /json.
    page.route(
        f"{webui}/dockercoins.html",
        lambda route: route.fulfill(content_type="text/html", body=DOCKERCOINS_STYLE_PAGE),
    )
    miner.mine(seconds=6)
    page.goto(f"{webui}/dockercoins.html")
    page.wait_for_function("() => points.filter(p => p.y > 0).length >= 2", timeout=10_000)
    points = page.evaluate("points")
    assert all(isinstance(p["x"], float) and p["y"] >= 0 for p in points), points
    assert set(map(tuple, page.evaluate("types"))) == {("number", "number", "number")}
    assert page.text_content("#speed").endswith(" hashes/second")
    miner.wait()
    assert console.errors == []

"""The per-function panel and the chart's history, in a real headless Chromium:
app.js' helpers on hand-made data, then the page against real stacks."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from brkcoin.layout import FUNCTIONS
from brkcoin.platform.processes import free_port
from brkcoin.platform.supervisor import Platform
from brkcoin.stack import Stack
from support import platform_running

pytestmark = pytest.mark.browser

APP_JS = Path(__file__).resolve().parents[2] / "webui" / "app.js"
# The chart after feeding historySamples(points, now) through addSample.
CHART_FROM_HISTORY = """([points, now]) => {
  const state = brkcoin.newState();
  for (const sample of brkcoin.historySamples(points, now)) brkcoin.addSample(state, sample);
  return [state.xs, state.ys];
}"""


@pytest.fixture(scope="module")
def app(browser):
    context = browser.new_context()
    page = context.new_page()
    page.set_content("<!doctype html><title>panel</title><body></body>")
    page.add_script_tag(path=str(APP_JS))  # no #chart here: only the helpers load
    yield page
    context.close()


# ---- the chart's history ----


def test_history_reads_as_once_a_second_readings(app):
    # The counter at second t is the point of the latest second before t.
    points = [[100, 0], [101, 10], [102, 20], [105, 30]]
    samples = app.evaluate("([p, n]) => brkcoin.historySamples(p, n)", [points, 107.4])
    assert samples == [{"now": t, "hashes": h} for t, h in
                       [(101, 0), (102, 10), (103, 20), (104, 20), (105, 20), (106, 30),
                        (107, 30)]]


def test_history_smooths_as_the_live_readings_do(app):
    """Flushes half a second into each second, at 10, 30 and 60 hashes/s: the
    chart from /history equals the chart a page open all along would have drawn
    (polling at whole seconds), point for point."""
    flushes, total = [], 0
    for second in range(1_800_000_000, 1_800_000_090):
        total += 10 if second < 1_800_000_030 else 30 if second < 1_800_000_060 else 60
        flushes.append((second + 0.5, total))
    points = [[int(t), h] for t, h in flushes]
    now = flushes[-1][0] + 0.2
    live = [{"now": float(t), "hashes": max([h for f, h in flushes if f < t], default=0)}
            for t in range(1_800_000_001, int(now) + 1)]
    from_history = app.evaluate(CHART_FROM_HISTORY, [points, now])
    from_live = app.evaluate(
        "(samples) => { const s = brkcoin.newState(); samples.forEach(r => "
        "brkcoin.addSample(s, r)); return [s.xs, s.ys]; }",
        live,
    )
    assert from_history == from_live
    assert from_history[1][-1] == pytest.approx(60)


def test_history_gap_is_no_mining_not_a_line_across(app):
    # 30 s at 10 hashes/s, then nothing for 60 s: no point, the counter stood still.
    points = [[1_800_000_000 + s, 10 * s] for s in range(31)]
    xs, ys = app.evaluate(CHART_FROM_HISTORY, [points, 1_800_000_090.5])
    speed = dict(zip(xs, ys, strict=True))
    assert speed[1_800_000_030] == pytest.approx(10)
    assert all(speed[t] == 0 for t in range(1_800_000_037, 1_800_000_091))


def test_history_fills_the_chart_span_only(app):
    points = [[1_800_000_000 + s, 5 * s] for s in range(600)]
    xs, ys = app.evaluate(CHART_FROM_HISTORY, [points, 1_800_000_599.9])
    assert xs[-1] - xs[0] <= 300 and len(xs) >= 290
    assert all(y == pytest.approx(5) for y in ys)


def test_history_skips_malformed_points(app):
    points = [[100, 0], None, [101], ["102", 5], [102, 20]]
    samples = app.evaluate("([p, n]) => brkcoin.historySamples(p, n)", [points, 103])
    assert samples == [{"now": 101, "hashes": 0}, {"now": 102, "hashes": 0},
                       {"now": 103, "hashes": 20}]


# ---- which function is the slowest ----


def _upstream(p50: float | None, p95: float | None = None) -> dict:
    return {"calls_per_s": 0 if p50 is None else 3.0, "errors_per_s": 0,
            "p50_ms": p50, "p95_ms": p50 if p95 is None else p95}


@pytest.mark.parametrize(
    "rng, hasher, expected",
    [
        (_upstream(500), _upstream(2), "rng"),
        (_upstream(2), _upstream(500), "hasher"),
        (_upstream(200, 500), _upstream(200, 1000), "hasher"),  # same p50: p95 decides
        (_upstream(200), _upstream(200), None),  # alike
        (_upstream(500), _upstream(None), None),  # hasher had no timed call
        (_upstream(None), _upstream(None), None),
    ],
)
def test_slowest(app, rng, hasher, expected):
    assert app.evaluate("(f) => brkcoin.slowest(f)", {"rng": rng, "hasher": hasher}) == expected


@pytest.mark.parametrize(
    "report, text",
    [
        ({"instances": 1, "concurrency": 1, "in_flight": 1, "queued": 9}, "1 × 1 · 9 queued"),
        ({"instances": 3, "concurrency": 0, "queued": 0}, "3 × unlimited · 0 queued"),
        ({"instances": 2, "concurrency": 4}, "2 × 4"),
        # The platform reports the function, but not in counts (the webui sends
        # 1e400 as null): unknown, not hidden as if there were no platform.
        ({"instances": "2", "concurrency": 4}, "unknown"),
        ({"instances": None, "concurrency": 1}, "unknown"),
        ({"instances": 1, "concurrency": -1}, "unknown"),
        (None, None),
    ],
)
def test_scale_text(app, report, text):
    assert app.evaluate("(r) => brkcoin.scaleText(r)", report) == text


@pytest.mark.parametrize(
    "scheduler, text",
    [({"schedule": "every 10s", "fanout": 3}, "every 10s · fan-out 3"),
     ({"schedule": None, "fanout": 3}, "unknown"), (None, None)],
)
def test_schedule_text(app, scheduler, text):
    assert app.evaluate("(s) => brkcoin.scheduleText(s)", scheduler) == text


def test_latency_shows_the_bucket_bound(app):
    values = [1.25, 3.15, 12.5, 315.0, 2500.0, None]
    assert app.evaluate("(v) => v.map(brkcoin.formatMs)", values) == [
        "1.25 ms", "3.15 ms", "12.5 ms", "315 ms", "2.5 s", "\u2013"
    ]


# ---- against real stacks ----

FIELD = "document.querySelector('.fn[data-name={0}] [data-field={1}]').dataset.value"
PLATFORM = {
    "functions": {
        "rng": {"instances": 1, "concurrency": 1, "in_flight": 1, "queued": 9},
        "hasher": {"instances": 2, "concurrency": 0, "in_flight": 0, "queued": 0},
        "worker": {"instances": 1, "concurrency": 0, "in_flight": 3, "queued": 0},
        "webui": {"instances": 1, "concurrency": 0, "in_flight": 1, "queued": 0},
    },
    "scheduler": {"fanout": 3, "schedule": "every 10s", "skipped": 0},
}


def _field(page, name: str, field: str) -> float:
    return float(page.evaluate(FIELD.format(name, field)))


@pytest.fixture
def slow_rng_stack(tmp_path: Path) -> Iterator[Stack]:
    """The lesson's bottleneck, made plain: rng answers in 0.3 s, hasher at once."""
    names = ("rng", "hasher", "worker", "webui")
    running = Stack(
        tmp_path / "stack",
        ports={name: free_port() for name in names},
        redis_port=free_port(),
        env={"RNG_DELAY": "0.3", "HASHER_DELAY": "0", "WORKER_DELAY": "0.01"},
        names=names,
    ).start()
    yield running
    running.stop()


@pytest.mark.slow
def test_panel_names_the_slow_rng(slow_rng_stack, miner_of, page_factory, screenshot):
    stack = slow_rng_stack
    miner = miner_of(stack.urls["worker"])
    for _ in range(3):  # three workers of two loops each, as a scheduler fan-out would
        miner.mine(seconds=9, concurrency=2)
    desk, desk_console = page_factory(1280, 900)
    desk.goto(stack.urls["webui"] + "/")

    desk.wait_for_selector("#bottleneck[data-slowest=rng]", timeout=10_000)
    assert desk.is_visible('.fn[data-name="rng"] .badge')
    assert desk.is_hidden('.fn[data-name="hasher"] .badge')
    assert desk.text_content("#bottleneck").startswith("Slowest: rng (p50 ")
    # A bucket bound at or above rng's 0.3 s (whatever bounds the worker uses).
    assert _field(desk, "rng", "p50_ms") >= 300 > _field(desk, "hasher", "p50_ms")
    for name in ("rng", "hasher"):
        assert _field(desk, name, "calls_per_s") > 0, name
        assert _field(desk, name, "errors_per_s") == 0, name
    desk.wait_for_function(
        f"() => {FIELD.format('worker', 'invocations')} === '3'"
        f" && {FIELD.format('worker', 'loops')} === '6'",
        timeout=5000,
    )
    assert _field(desk, "worker", "instances") == 1
    assert _field(desk, "worker", "hashes_per_s") > 0
    # Busy mining, the worker still answers its health check: never shown down for it.
    desk.wait_for_selector('.fn[data-name="worker"].up', timeout=8000)
    assert desk.is_hidden('.fn[data-name="rng"] [data-field="scale"]'), "no platform, no scale"

    # The local platform's report, as `brkcoin up` writes it each second.
    stack.redis.client().set("brkcoin:platform", json.dumps(PLATFORM), ex=30)
    scale = '.fn[data-name="{}"] [data-field="scale"]'
    desk.wait_for_selector(scale.format("rng"), timeout=5000)
    assert desk.text_content(scale.format("rng")) == "1 × 1 · 9 queued"
    assert desk.text_content(scale.format("hasher")) == "2 × unlimited · 0 queued"
    schedule = desk.text_content('.fn[data-name="worker"] [data-field="schedule"]')
    assert schedule == "every 10s · fan-out 3"

    phone, phone_console = page_factory(390, 844)
    phone.goto(stack.urls["webui"] + "/")
    phone.wait_for_selector("#bottleneck[data-slowest=rng]", timeout=10_000)
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    for name in ("rng", "hasher", "worker"):
        box = phone.locator(f'.fn[data-name="{name}"]').bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, name

    # Screenshots with a few seconds of line in the chart, still mining.
    desk.wait_for_function("() => brkcoin.chart.data[1].filter(v => v > 0).length >= 4",
                           timeout=10_000)
    screenshot(desk, "webui.png", docs=True)
    screenshot(phone, "webui-phone.png", docs=True)
    results = miner.wait()
    assert len(results) == 3 and all("error" not in r for r in results), results
    assert desk_console.errors == [] and phone_console.errors == []


def test_page_shows_unknown_for_what_redis_cannot_give(start_function, redis_server,
                                                       page_factory):
    """Keys holding what the worker never writes: their figures read "unknown", the
    page says why and stays live. Before, /json's 503 made it say "Redis
    unreachable", and a 1e400 in the platform's report made /stats answer 500."""
    r = redis_server.client()
    r.set("hashes", "abc")
    r.set("wallet", "x")
    r.set("coins:recent", "x")
    r.set("brkcoin:stats", "x")
    r.set("brkcoin:platform", '{"functions": {"rng": {"instances": 1e400, "concurrency": 1}},'
                              ' "scheduler": {"schedule": 5}}')
    dead = f"http://127.0.0.1:{free_port()}"
    webui = start_function("webui", {"REDIS_URL": redis_server.url, "RNG_URL": dead,
                                     "HASHER_URL": dead, "WORKER_URL": dead})
    page, console = page_factory()
    page.goto(webui.url + "/")
    page.wait_for_function("() => document.getElementById('hashes').textContent === 'unknown'"
                           " && document.getElementById('fn-note').textContent !== ''"
                           " && !document.querySelector('#per-function .fn [data-field=scale]')"
                           ".parentElement.hidden", timeout=5000)
    assert page.text_content("#status-text") == "live"
    assert page.text_content("#coins") == page.text_content("#speed") == "unknown"
    assert page.text_content("#alert") == (
        "Shown as unknown: Redis key 'wallet' holds a string, not a hash; "
        "Redis key 'hashes' holds 'abc', not a count")
    assert page.text_content("#coins-empty") == (
        "Recent coins unknown: Redis key 'coins:recent' holds a string, not a list; "
        "Redis key 'wallet' holds a string, not a hash")
    field = '.fn[data-name="{}"] [data-field="{}"]'
    for name, key in [("rng", "calls_per_s"), ("rng", "p50_ms"), ("hasher", "errors_per_s"),
                      ("worker", "hashes_per_s"), ("worker", "loops"), ("rng", "scale"),
                      ("worker", "schedule")]:
        assert page.text_content(field.format(name, key)) == "unknown", (name, key)
    assert page.text_content("#fn-note") == (
        "unknown: Redis key 'brkcoin:stats' holds a string, not a zset")
    assert page.text_content("#bottleneck") == "Per-function figures unknown."
    assert console.errors == []


@pytest.mark.slow
def test_page_opened_after_mining_draws_the_history_at_once(stack, miner, page_factory):
    started = time.time()  # the same host: Redis' clock, which the chart's x uses
    miner.mine(seconds=8)
    mined = miner.wait()[0]
    page, console = page_factory()
    opened = time.time()
    page.goto(stack.urls["webui"] + "/")
    # Points from before the page was opened can only come from /history.
    page.wait_for_function(
        "(opened) => brkcoin.chart.data[0].filter(x => x < opened).length >= 3",
        arg=opened,
        timeout=2000,
    )
    xs, ys = page.evaluate("brkcoin.chart.data")
    # (Earlier tests mined on this stack too: their part of the history is not checked.)
    earlier = [y for x, y in zip(xs, ys, strict=True) if started < x < opened and y is not None]
    true_rate = mined["hashes"] / mined["seconds"]
    assert 0.6 * true_rate < max(earlier) < 1.4 * true_rate, (earlier, true_rate)
    assert page.evaluate("document.querySelector('#chart canvas') !== null")
    assert console.errors == []


@pytest.fixture
def plateau(tmp_path: Path) -> Iterator[Platform]:
    """The DockerCoins lesson's shape on the real local platform: one rng instance
    serving one request at a time, the demo delays of 0.1 s."""
    running = Platform(tmp_path / "lesson", ports={n: free_port() for n in FUNCTIONS},
                       redis_port=free_port(), scale={"rng": 1}, concurrency={"rng": 1},
                       env={"RNG_DELAY": "0.1", "HASHER_DELAY": "0.1", "WORKER_DELAY": "0.1"})
    with platform_running(running):
        yield running


@pytest.mark.slow
def test_during_the_plateau_the_panel_names_rng(plateau, miner_of, page_factory):
    miner = miner_of(plateau.urls["worker"])
    for _ in range(10):  # ten workers: far more than one rng at 10 calls/s can feed
        miner.mine(seconds=12)
    page, console = page_factory(1280, 900)
    page.goto(plateau.urls["webui"] + "/")
    page.wait_for_selector("#bottleneck[data-slowest=rng]", timeout=15_000)
    # rng's line makes its latency a multiple of hasher's: the queue, made visible.
    assert _field(page, "rng", "p50_ms") >= 2 * _field(page, "hasher", "p50_ms")
    scale = page.text_content('.fn[data-name="rng"] [data-field="scale"]')
    assert scale.startswith("1 × 1 · ") and not scale.endswith(" 0 queued"), scale
    miner.wait()
    assert not console.errors

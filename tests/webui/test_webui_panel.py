"""The per-function panel and the chart's history, in a real headless Chromium:
app.js' helpers on hand-made data, then the page against real stacks."""

from __future__ import annotations

import json
import re
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
     ({"schedule": "every 10s", "fanout": 0, "paused": True}, "every 10s · fan-out 0 · paused"),
     ({"schedule": "every 10s", "paused": "yes"}, "every 10s"),
     ({"schedule": None, "fanout": 3}, "unknown"), (None, None)],
)
def test_schedule_text(app, scheduler, text):
    assert app.evaluate("(s) => brkcoin.scheduleText(s)", scheduler) == text


# ---- the local platform's autoscaling, from its report of one function ----

NOW = 1_800_000_100.0
REASON = "panic, concurrency 9.8 over 6 s, target 0.7/instance"


def _text(app, helper: str, report: object, now: float | None = None) -> str | None:
    return app.evaluate(f"([r, now]) => brkcoin.{helper}(r, now)", [report, now])


@pytest.mark.parametrize(
    "report, text",
    [
        ({"autoscaled": True, "kind": "kpa", "panic": False}, "KPA autoscaling"),
        ({"autoscaled": True, "kind": "kpa", "panic": True}, "KPA autoscaling · panic"),
        ({"autoscaled": True, "kind": "cpu"}, "CPU autoscaling"),
        ({"autoscaled": False, "kind": "kpa", "panic": True}, "pinned"),
        ({"autoscaled": True, "kind": "constructor"}, "autoscaling (unknown)"),
        ({"autoscaled": "false"}, "unknown"),
        ("a report that is no object", "unknown"),
    ],
)
def test_mode_text(app, report, text):
    assert _text(app, "modeText", report) == text


@pytest.mark.parametrize(
    "decision, text",
    [
        ({"at": NOW - 12, "from": 1, "to": 4, "reason": REASON}, f"1 → 4: {REASON} (12 s ago)"),
        ({"at": NOW - 125, "from": 4, "to": 2, "reason": ""}, "4 → 2 (2 min ago)"),
        ({"at": NOW + 3, "from": 0, "to": 1, "reason": "x" * 500}, f"0 → 1: {'x' * 200} (0 s ago)"),
        ({"from": 1, "to": 4, "reason": ["panic"]}, "1 → 4: unknown"),
        (None, "none yet"),
        ({"at": NOW, "from": 1, "to": "4", "reason": REASON}, "unknown"),
        ({"at": NOW, "from": -1, "to": 4}, "unknown"),
        ("1 → 4", "unknown"),
        ([1, 4], "unknown"),
    ],
)
def test_decision_text(app, decision, text):
    assert _text(app, "decisionText", {"decision": decision}, NOW) == text


@pytest.mark.parametrize(
    "report, text",
    [
        ({"cold_starts": 3, "cold_start_seconds": 1.37, "cold_start_at": NOW - 30},
         "3 cold starts, latest 1.4 s (30 s ago)"),
        ({"cold_starts": 1, "cold_start_seconds": 42.4, "cold_start_at": None},
         "1 cold start, latest 42 s"),
        ({"cold_starts": 0, "cold_start_seconds": None, "cold_start_at": None}, "0 cold starts"),
        ({"cold_starts": 2, "cold_start_seconds": "1.4", "cold_start_at": "x"},
         "2 cold starts, latest unknown"),
        ({"cold_starts": "3", "cold_start_seconds": 1.4}, "unknown"),
        ({"cold_starts": 1.5}, "unknown"),
    ],
)
def test_cold_starts_text(app, report, text):
    assert _text(app, "coldStartsText", report, NOW) == text


@pytest.mark.parametrize(
    "report, text",
    [
        ({"cold_requests": 2, "cold_wait_seconds": 0.8},
         "2 requests waited for a start, latest 0.8 s"),
        ({"cold_requests": 1, "cold_wait_seconds": -1}, "1 request waited for a start"),
        ({"cold_requests": 0, "cold_wait_seconds": None}, None),
        ({}, None),
        ({"cold_requests": True}, "requests waiting for a start: unknown"),
    ],
)
def test_cold_requests_text(app, report, text):
    assert _text(app, "coldRequestsText", report) == text


@pytest.mark.parametrize(
    "helper, report, text",
    [
        ("throttledText", {"throttled": 3}, "3"),
        ("throttledText", {"throttled": 0}, None),
        ("throttledText", {}, None),
        ("throttledText", {"throttled": -1}, "unknown"),
        ("throttledText", {"throttled": "3"}, "unknown"),
        ("throttledText", None, None),
        ("wantedText", {"instances": 2, "wanted": 6}, "wanted 6"),
        ("wantedText", {"instances": 4, "wanted": 4}, None),
        ("wantedText", {"instances": 4}, None),
        ("wantedText", {"instances": 4, "wanted": None}, "wanted unknown"),
        ("readyText", {"instances": 4}, "4"),
        ("readyText", {"instances": 1e3}, "1,000"),
        ("readyText", {"instances": "4"}, "unknown"),
        ("readyText", [4], "unknown"),
    ],
)
def test_count_texts(app, helper, report, text):
    assert _text(app, helper, report) == text


def test_instance_seconds_text(app):
    values = [812.4, 12.25, 0, 1_234_567, None, -1, "5"]
    assert app.evaluate("(v) => v.map(brkcoin.instanceSecondsText)", values) == [
        "812 s", "12.3 s", "0.0 s", "1,234,567 s", "unknown", "unknown", "unknown"]


def test_sparkline_of_the_valid_points_as_steps(app):
    history = [[1, 1], [3, 4], None, [2, "2"], [2, -1], ["x", 2], [4], [5, 1.5], [0, 2],
               [6, 10**3]]
    assert app.evaluate("(h) => brkcoin.sparkPoints(h)", history) == [
        [0, 2], [1, 1], [3, 4], [6, 1000]]
    assert app.evaluate("(h) => brkcoin.sparkPoints(h)", "x") is None
    # Time across 0..120, counts upwards from 0 (y 23) to the highest (y 1), in steps.
    line = "(h) => brkcoin.sparkLine(brkcoin.sparkPoints(h))"
    assert app.evaluate(line, [[100, 1], [110, 4]]) == "0.0,17.5 120.0,17.5 120.0,1.0"
    assert app.evaluate(line, [[100, 2]]) == "0.0,1.0 120.0,1.0"
    assert app.evaluate(line, [[100, 0], [105, 0]]) == "0.0,23.0 120.0,23.0 120.0,23.0"
    assert app.evaluate(line, []) == app.evaluate(line, None) == ""


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


ROWS_SHOWN = "[...document.querySelectorAll('.fn [data-row]')].filter(r => !r.hidden).length"


def test_cards_show_the_autoscaling_of_the_local_platform(stack, page_factory, screenshot):
    """The local platform's report in Redis, as `brkcoin up` writes it: rng scaled
    1 → 4 in panic, hasher pinned, the worker's report hostile. Without the
    report (every other target) no autoscaling row shows."""
    r = stack.redis.client()
    r.delete("brkcoin:platform")
    page, console = page_factory(1280, 1000)
    page.goto(stack.urls["webui"] + "/")
    page.wait_for_function("() => document.querySelector("
                           "'.fn[data-name=rng] [data-field=calls_per_s]').dataset.value !== ''")
    assert page.evaluate(ROWS_SHOWN) == 0, "no platform, no autoscaling rows"

    now = time.time()  # the platform's clock: this host's, as is Redis'
    rng = {**PLATFORM["functions"]["rng"], "instances": 4, "wanted": 4, "autoscaled": True,
           "kind": "kpa", "panic": True,
           "decision": {"at": now - 12, "from": 1, "to": 4, "reason": REASON},
           "cold_starts": 4, "cold_start_seconds": 1.37, "cold_start_at": now - 20,
           "cold_requests": 2, "cold_wait_seconds": 0.8, "instance_seconds": 812.4,
           "throttled": 3,
           "history": [[now - 20 + 5 * i, n] for i, n in enumerate([1, 1, 2, 4, 4])]}
    hasher = {**PLATFORM["functions"]["hasher"], "wanted": 3, "autoscaled": False,
              "kind": "cpu", "panic": False, "decision": None, "cold_starts": 2,
              "cold_start_seconds": None, "cold_start_at": None, "cold_requests": 0,
              "cold_wait_seconds": None, "instance_seconds": 30, "throttled": 0,
              "history": [[now - 5, 2], [now, 2]]}
    worker = {**PLATFORM["functions"]["worker"], "wanted": "1", "autoscaled": "yes",
              "decision": 5, "cold_starts": -1, "cold_requests": "2",
              "instance_seconds": "9", "throttled": 1.5, "history": "rising"}
    report = {"functions": {**PLATFORM["functions"], "rng": rng, "hasher": hasher,
                            "worker": worker},
              "scheduler": {**PLATFORM["scheduler"], "in_flight": 2, "paused": True}}
    try:
        r.set("brkcoin:platform", json.dumps(report), ex=30)
        card = '.fn[data-name="{}"] [data-field="{}"]'
        page.wait_for_selector(card.format("rng", "decision"))

        def text(name: str, field: str) -> str:
            return page.text_content(card.format(name, field))

        # rng: 1 → 4 instances, drawn rising; the decision and its reason.
        assert page.get_attribute(card.format("rng", "history"), "data-value") == "4"
        assert page.get_attribute(card.format("rng", "history"), "data-points") == "5"
        points = page.get_attribute(card.format("rng", "history") + " polyline", "points")
        heights = [float(xy.split(",")[1]) for xy in points.split()]
        assert heights[0] > heights[-1] == min(heights), points  # SVG's y grows downwards
        assert text("rng", "ready") == "4"
        assert page.is_hidden(card.format("rng", "wanted")), "wanted = ready"
        assert text("rng", "mode") == "KPA autoscaling · panic"
        assert re.fullmatch(rf"1 → 4: {re.escape(REASON)} \(1[2-5] s ago\)",
                            text("rng", "decision"))
        assert re.fullmatch(r"4 cold starts, latest 1\.4 s \(2[0-3] s ago\)",
                            text("rng", "cold_starts"))
        assert text("rng", "cold_requests") == "2 requests waited for a start, latest 0.8 s"
        assert text("rng", "instance_seconds") == "812 s"
        assert page.get_attribute(card.format("rng", "instance_seconds"),
                                  "data-value") == "812.4"
        assert text("rng", "throttled") == "3"
        # hasher: pinned, 2 ready of 3 wanted, nothing throttled.
        assert text("hasher", "mode") == "pinned"
        assert text("hasher", "decision") == "none yet"
        assert (text("hasher", "ready"), text("hasher", "wanted")) == ("2", "wanted 3")
        assert text("hasher", "cold_starts") == "2 cold starts"
        assert page.is_hidden(card.format("hasher", "cold_requests"))
        assert text("hasher", "instance_seconds") == "30.0 s"
        assert page.is_hidden(card.format("hasher", "throttled"))
        # worker: every new field of the wrong type reads unknown, the page stays up.
        for field in ("wanted", "mode", "decision", "cold_starts", "instance_seconds",
                      "throttled"):
            assert "unknown" in text("worker", field), field
        assert page.is_hidden(card.format("worker", "history")), "no points, no line"
        assert text("worker", "invocations") == "2", "the scheduler's in_flight"
        assert text("worker", "schedule") == "every 10s · fan-out 3 · paused"
        screenshot(page, "webui-autoscaling.png")

        r.delete("brkcoin:platform")  # the platform stopped, or any other target
        page.wait_for_function(f"() => {ROWS_SHOWN} === 0", timeout=5000)
        assert page.is_hidden('.fn[data-name="rng"] [data-field="scale"]')
    finally:
        r.delete("brkcoin:platform")
    assert console.errors == []


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


@pytest.mark.alone
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


@pytest.mark.alone
@pytest.mark.slow
def test_the_panel_names_rng_on_the_plateau_and_shows_the_autoscaler_lift_it(
        plateau, miner_of, page_factory, screenshot):
    """Both chapters of the lesson on the real platform: rng pinned at 1, the
    bottleneck named; then rng handed to the autoscaler (`brkcoin scale
    rng=auto`), and the card shows its instances rising, with the reason."""
    miner = miner_of(plateau.urls["worker"])
    for _ in range(10):  # ten workers: far more than one rng at 10 calls/s can feed
        miner.mine(seconds=15)
    page, console = page_factory(1280, 900)
    page.goto(plateau.urls["webui"] + "/")
    page.wait_for_selector("#bottleneck[data-slowest=rng]", timeout=15_000)
    # rng's line makes its latency a multiple of hasher's: the queue, made visible.
    assert _field(page, "rng", "p50_ms") >= 2 * _field(page, "hasher", "p50_ms")
    scale = page.text_content('.fn[data-name="rng"] [data-field="scale"]')
    assert scale.startswith("1 × 1 · ") and not scale.endswith(" 0 queued"), scale
    rng = '.fn[data-name="rng"] '
    assert page.text_content(rng + '[data-field="mode"]') == "pinned"
    assert _field(page, "rng", "ready") == 1

    plateau.loop.call_soon_threadsafe(plateau.autoscale, "rng")  # on the platform's loop
    give_up = time.monotonic() + 15  # (the page's CSP allows no wait_for_function)
    while _field(page, "rng", "ready") < 4:
        assert time.monotonic() < give_up, page.text_content(rng + '[data-field="decision"]')
        time.sleep(0.2)
    decision = page.text_content(rng + '[data-field="decision"]')
    assert re.match(r"\d+ \u2192 \d+: panic, concurrency [\d.]+ over 6 s, "
                    r"target 0\.7/instance", decision), decision
    assert page.text_content(rng + '[data-field="mode"]').startswith("KPA autoscaling")
    assert "cold start" in page.text_content(rng + '[data-field="cold_starts"]')
    screenshot(page, "webui-autoscaled.png")
    miner.wait()
    assert not console.errors

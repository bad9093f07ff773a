"""The page's speed computation (app.js, run in the real browser) on counter
histories shaped like the worker's: updates about once a second on the worker's
own clock, so never aligned with the page's once-a-second polls."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

APP_JS = Path(__file__).resolve().parents[2] / "webui" / "app.js"
RATE = 100.0  # true hashes per second in every scenario
RUN_JS = """(samples) => {
  const state = brkcoin.newState();
  return samples.map((s) => brkcoin.addSample(state, s));
}"""


@pytest.fixture(scope="module")
def app(browser):
    context = browser.new_context()
    page = context.new_page()
    page.set_content("<!doctype html><title>rate</title><body></body>")
    page.add_script_tag(path=str(APP_JS))  # no #chart here: only the helpers load
    yield page
    context.close()


def worker_flushes(start: float, end: float, every: float, rng: random.Random) -> list[float]:
    """When one worker's counts reach Redis: every ~`every` s from a random phase."""
    times, t = [], start + rng.uniform(0, every)
    while t < end:
        times.append(t)
        t += every * rng.uniform(1.0, 1.08)  # join(1 s) + the flush itself
    return times


def readings(flushes: list[list[float]], polls: list[float], outage=(None, None)) -> list[dict]:
    """What the page reads at each poll: each flush adds the hashes mined since the
    worker's previous flush; flushes during a Redis outage are held and land at its end."""
    down_from, down_to = outage
    steps, each = [], RATE / len(flushes)  # the workers share the total speed
    for times in flushes:
        previous = times[0] - 1.0
        for t in times:
            lands = down_to if down_from is not None and down_from <= t < down_to else t
            steps.append((lands, each * (t - previous)))
            previous = t
    steps.sort()
    samples = []
    for p in polls:
        if down_from is not None and down_from <= p < down_to:
            continue  # /json answered 503: no reading
        samples.append({"now": p, "hashes": round(sum(a for t, a in steps if t <= p))})
    return samples


def polls_every_second(start: float, end: float, rng: random.Random) -> list[float]:
    """Polls one second apart plus each request's latency."""
    return [start + i + rng.uniform(0, 0.15) for i in range(int(end - start))]


def scenario(name: str, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    start, end = 1_800_000_000.0, 1_800_000_120.0
    polls = polls_every_second(start + 2, end, rng)
    if name == "one worker":
        return readings([worker_flushes(start, end, 1.0, rng)], polls)
    if name == "eight workers":
        return readings([worker_flushes(start, end, 1.0, rng) for _ in range(8)], polls)
    if name == "fast updates":  # several counter updates between two polls
        return readings([worker_flushes(start, end, 0.3, rng)], polls)
    if name == "late polls":  # a busy browser: polls 1 to 3.5 s apart
        late, t = [], start + 2
        while t < end:
            late.append(t)
            t += rng.choice([1.0, 1.0, 2.5, 3.5])
        return readings([worker_flushes(start, end, 1.0, rng)], late)
    if name == "redis outage":  # 20 s down; the worker flushes the held counts after
        return readings(
            [worker_flushes(start, end, 1.0, rng)], polls, outage=(start + 50, start + 70)
        )
    raise ValueError(name)


def check(samples: list[dict], speeds: list) -> None:
    first = samples[0]["now"]
    for sample, speed in zip(samples, speeds, strict=True):
        age = sample["now"] - first
        if age < 3:
            assert speed is None, "no speed from less than 3 s of readings"
        else:
            # One update more or fewer in the window: at most ~1/3 off before 5 s
            # of readings, ~1/5 after.
            tolerance = 0.45 if age < 5 else 0.25
            assert speed is not None and abs(speed - RATE) <= tolerance * RATE, (age, speed)


@pytest.mark.parametrize(
    "name", ["one worker", "eight workers", "fast updates", "late polls", "redis outage"]
)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_speed_has_no_spikes(app, name, seed):
    samples = scenario(name, seed)
    check(samples, app.evaluate(RUN_JS, samples))


def test_the_scenario_does_spike_for_a_naive_speed(app):
    """Guard for the test above: speed from two successive polls (DockerCoins' own
    way) jumps to zero and double on the same readings."""
    samples = scenario("one worker")
    naive = [
        (b["hashes"] - a["hashes"]) / (b["now"] - a["now"])
        for a, b in zip(samples, samples[1:], strict=False)
    ]
    assert min(naive) < 0.3 * RATE and max(naive) > 1.7 * RATE
    with pytest.raises(AssertionError):
        check(samples[1:], [None, None] + naive[2:])


def test_speed_follows_a_stop_and_a_start(app):
    # 30 s at RATE, 30 s stopped, 30 s at RATE again, one update a second.
    samples, total = [], 0
    for second in range(90):
        mining = second < 30 or second >= 60
        total += RATE if mining else 0
        samples.append({"now": 1_800_000_000.5 + second, "hashes": int(total)})
    speeds = app.evaluate(RUN_JS, samples)
    assert speeds[36] == 0, "stopped: zero within the 5 s window"
    assert speeds[66] == pytest.approx(RATE), "restarted: full speed within the window"


def test_counter_reset_starts_afresh(app):
    """Redis emptied (counter back to 0): no negative speed, then the new speed."""
    samples = [{"now": 1_800_000_000.0 + s, "hashes": 1000 + 100 * s} for s in range(10)]
    samples += [{"now": 1_800_000_010.0 + s, "hashes": 100 * s} for s in range(10)]
    speeds = app.evaluate(RUN_JS, samples)
    assert all(s is None or s >= 0 for s in speeds)
    assert speeds[10:13] == [None, None, None]
    assert speeds[-1] == pytest.approx(100)
    # The chart keeps only the new history.
    chart = app.evaluate(
        "(samples) => { const st = brkcoin.newState(); samples.forEach(s => "
        "brkcoin.addSample(st, s)); return st.xs; }",
        samples,
    )
    assert min(chart) >= 1_800_000_010.0


def test_a_failed_poll_breaks_the_line(app):
    samples = [{"now": 1_800_000_000.0 + s, "hashes": 100 * s} for s in range(8)]
    ys = app.evaluate(
        """(samples) => {
          const st = brkcoin.newState();
          samples.forEach((s, i) => { if (i === 6) st.gap = true; brkcoin.addSample(st, s); });
          return st.ys;
        }""",
        samples,
    )
    assert None in ys and ys[-1] == pytest.approx(100)


@pytest.mark.parametrize(
    "search, base",
    [
        ("", ""),
        ("?api=http://127.0.0.1:8000", "http://127.0.0.1:8000/"),
        ("?api=https://webui-abc.a.run.app/", "https://webui-abc.a.run.app/"),
        ("?api=http://host/prefix//", "http://host/prefix/"),
    ],
)
def test_api_parameter(app, search, base):
    assert app.evaluate("(s) => brkcoin.apiBase(s)", search) == base


@pytest.mark.parametrize("search", ["?api=javascript:alert(1)", "?api=not a url", "?api=ftp://x"])
def test_bad_api_parameter(app, search):
    error = app.evaluate("(s) => { try { brkcoin.apiBase(s); } catch (e) { return e.message; } }",
                         search)
    assert error and error.startswith("?api= must be")


def test_axis_labels_stay_distinct_at_the_demo_rate(app):
    # One worker with the demo delays mines ~3 hashes/s: ticks every 0.5 must
    # not all round to the same integer.
    labels = app.evaluate("[0, 0.5, 1, 1.5, 2, 2.5, 3].map(brkcoin.compact)")
    assert len(set(labels)) == 7, labels
    assert app.evaluate("[0, 250, 12000, 3400000].map(brkcoin.compact)") == [
        "0", "250", "12k", "3.4M"
    ]

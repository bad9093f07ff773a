"""The lesson's figures from its samples: pure arithmetic, no platform."""

from __future__ import annotations

from brkcoin.lesson import Sample, found_by_autoscaler, speeds, steadiness


def _steady(rate: float, seconds: int, rng: int = 1) -> list[Sample]:
    return [Sample(float(t), int(rate * t), rng, rng, 0.0) for t in range(seconds + 1)]


def test_a_steady_speed_strays_nowhere() -> None:
    assert steadiness(_steady(10.0, 60)) == 0.0


def test_a_sawtooth_shows_in_the_5_s_windows() -> None:
    """10 hashes/s, but nothing in the last second of every 5: the windows of the
    slow stretches are 20 % under a mean of 8."""
    samples, hashes = [], 0
    for t in range(61):
        samples.append(Sample(float(t), hashes, 1, 1, 0.0))
        hashes += 0 if t % 5 == 4 else 10
    windows = [v for _, v in speeds(samples)]
    assert min(windows) == 8.0 and max(windows) == 8.0  # back to back, every 5 s: 40 hashes
    samples[30].hashes -= 20  # one window 20 short, the next 20 over
    assert 0.4 < steadiness(samples) < 0.6


def test_chapter_2_in_a_line() -> None:
    """rng handed over at 100 s: 4 instances at 106, 30 hashes/s over the 5 s to 109
    one change of its count afterwards."""
    samples, hashes = [], 0
    for t in range(100, 181):
        rng = 1 if t < 103 else 3 if t < 106 else 6 if t < 150 else 5
        hashes += 10 if t < 106 else 35
        samples.append(Sample(float(t), hashes, rng, rng, 0.0))
    line = found_by_autoscaler(samples, handed=100.0)
    assert line.startswith("rng at 4+ instances after 6 s, 30 hashes/s after 9 s, at most 6")
    assert "1 change(s) of its count in the 61 s after the first 20" in line


def test_an_autoscaler_that_never_finds_rng_says_never() -> None:
    line = found_by_autoscaler(_steady(10.0, 60), handed=0.0)
    assert "4+ instances never, 30 hashes/s never, at most 1; 0 change(s)" in line

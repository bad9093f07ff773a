"""The autoscaler's decisions on a fake clock (plain floats), against Knative's
KPA arithmetic and the HPA's rule, with the numbers computed by hand."""

from __future__ import annotations

import pytest

from brkcoin.layout import Scaling
from brkcoin.platform.autoscaler import Autoscaler, Decision, Window


def kpa(concurrency: int = 1, min_scale: int = 0, max_scale: int = 100,
        **settings: float) -> Autoscaler:
    return Autoscaler(Scaling(**settings), concurrency, min_scale, max_scale)  # type: ignore[arg-type]


def run(a: Autoscaler, start: float, end: float, load: float, ready: int,
        step: float = 2.0) -> dict[float, Decision]:
    """Record a steady load every `step` seconds after `start` up to `end`, and
    decide after each reading, as the supervisor's tick does."""
    decisions = {}
    t = start
    while t < end - 1e-9:
        t += step
        a.record(t, load, step)
        decisions[t] = a.decide(t, ready)
    return decisions


# -- the windows --------------------------------------------------------------


def test_averages_are_weighted_by_time_over_each_window() -> None:
    w = Window(60)
    w.add(10, 2.0, 10)  # 2 in flight from 0 to 10
    w.add(12, 8.0, 2)  # 8 from 10 to 12
    assert w.average(12, 60) == 3.0  # (2 x 10 + 8 x 2) / 12, not (2 + 8) / 2
    assert w.average(12, 6) == 4.0  # (2 x 4 + 8 x 2) / 6: the panic window


def test_until_a_window_of_data_exists_the_average_is_over_what_exists() -> None:
    w = Window(60)
    w.add(2, 3.5, 2)
    assert w.average(2, 60) == 3.5  # not 3.5 x 2 / 60
    assert w.average(2, 6) == 3.5
    assert w.average(4, 60) == 1.75  # 2 s unrecorded since count as no load
    assert w.average(10, 6) == 0.0  # the panic window [4, 10] saw nothing


def test_old_readings_fall_out_and_memory_stays_one_window() -> None:
    w = Window(60)
    w.add(1, 10.0, 1)
    w.add(61, 1.0, 60)
    assert w.average(61, 60) == 1.0  # the 10 ended 60 s ago: gone
    steady = Window(60)
    for n in range(1, 601):
        steady.add(n * 0.5, 1.0, 0.5)
    assert len(steady) == 120  # ends in (240, 300]: one stable window
    assert steady.average(300, 60) == 1.0


def test_after_a_window_of_silence_the_average_starts_over() -> None:
    w = Window(60)
    w.add(1, 5.0, 1)
    assert w.average(100, 60) == 0.0
    w.add(100, 2.0, 1)
    assert w.average(100, 60) == 2.0  # over [99, 100], not 2 / 60


# -- Knative's KPA -------------------------------------------------------------


def test_stable_mode_wants_ceil_of_the_stable_average_over_the_target() -> None:
    a = kpa()
    a.record(60, 2.1, 60)
    d = a.decide(60, ready=2)
    assert a.target == 0.7
    # ceil(2.1 / 0.7) = 3, not 4 (2.1 / 0.7 is 3.0000000000000004 in floats)
    assert d == Decision(3, "stable, concurrency 2.1 over 60 s, target 0.7/instance",
                         False, 2.1)


def test_panic_starts_when_the_panic_window_wants_twice_the_ready() -> None:
    calm = kpa()
    calm.record(54, 0.7, 54)
    calm.record(60, 2.1, 6)
    d = calm.decide(60, ready=2)
    # panic: ceil(2.1 / 0.7) = 3 < 2 x 2; stable: (0.7 x 54 + 2.1 x 6) / 60 = 0.84
    assert (d.panic, d.observed, d.wanted) == (False, 0.84, 2)  # ceil(1.2)

    burst = kpa()
    burst.record(54, 0.7, 54)
    burst.record(60, 2.8, 6)
    d = burst.decide(60, ready=2)
    # panic: ceil(2.8 / 0.7) = 4 = 2 x 2 ready; stable (37.8 + 16.8) / 60 = 0.91 -> 2
    assert (d.panic, d.observed, d.wanted) == (True, 2.8, 4)
    assert d.reason == "panic, concurrency 2.8 over 6 s, target 0.7/instance"


def test_panic_holds_its_peak_and_ends_a_stable_window_after_the_last_burst() -> None:
    a = kpa()
    a.record(2, 2.8, 2)
    d = a.decide(2, ready=1)
    assert (d.panic, d.wanted) == (True, 4)  # ceil(2.8 / 0.7) = 4 >= 2 x 1
    # Four ready, the load down to 0.7: at 4 the panic window wants
    # ceil(((2.8 + 0.7) x 2 / 4) / 0.7) = 3 < 2 x 4, yet no scale-down in panic.
    calm = run(a, 2, 60, 0.7, ready=4)
    assert all(d.panic and d.wanted == 4 for d in calm.values())
    # A burst at 30: the panic window [24, 30] averages (0.7 x 4 + 14 x 2) / 6,
    # 5.13, wants ceil(7.33) = 8 = 2 x 4: panic again from 30, up to 8.
    a = kpa()
    a.record(2, 2.8, 2)
    a.decide(2, ready=1)
    run(a, 2, 28, 0.7, ready=4)
    a.record(30, 14.0, 2)
    assert a.decide(30, ready=4).wanted == 8
    after = run(a, 30, 90, 0.7, ready=8)
    assert all(d.panic and d.wanted == 8 for t, d in after.items() if t < 90)
    # Out at 30 + 60: the stable average [30, 90] is 0.7 -> 1, halved at most: 4.
    assert (after[90].panic, after[90].wanted) == (False, 4)


def test_scale_down_halves_at_most_per_decision_then_waits_the_grace() -> None:
    a = kpa()
    a.record(2, 0.0, 2)
    wanted = [a.decide(t, ready).wanted for t, ready in ((2, 10), (4, 5), (6, 2), (8, 1))]
    assert wanted == [5, 2, 1, 1]  # floor(10 / 2), floor(5 / 2), floor(2 / 2), grace
    d = a.decide(37.9, ready=1)
    assert (d.wanted, d.reason) == (1, "idle: to zero in 0.1 s")
    d = a.decide(38, ready=1)  # 30 s at zero wanted since 8
    assert d.wanted == 0 and d.reason.endswith(": to zero")
    assert a.decide(40, ready=0).wanted == 0


def test_load_during_the_grace_starts_it_over() -> None:
    a = kpa()
    a.record(2, 0.0, 2)
    assert a.decide(2, ready=1).reason == "idle: to zero in 30 s"
    a.record(20, 0.1, 0.5)
    assert a.decide(20, ready=1).wanted == 1  # ceil(0.1 x 0.5 / 20 / 0.7) = 1
    a.record(90, 0.0, 70)  # the 0.1 (19.5 to 20) left the stable window at 80
    assert a.decide(90, ready=1).reason == "idle: to zero in 30 s"
    assert a.decide(119, ready=1).wanted == 1
    assert a.decide(120, ready=1).wanted == 0


def test_a_request_waiting_at_zero_wants_one_at_once() -> None:
    a = kpa()
    a.record(60, 0.0, 60)
    assert a.decide(60, ready=0).wanted == 0  # nothing to keep through a grace
    a.record(61, 1.0, 0)  # one request in line, this very instant
    d = a.decide(61, ready=0)
    assert (d.wanted, d.reason) == (1, "a request waits at zero instances: 1 now")


def test_scale_up_is_bounded_by_the_rate_times_the_ready() -> None:
    a = kpa(max_scale_up_rate=1.5)
    a.record(6, 7.0, 6)  # 7 / 0.7 = 10 (not 11: float noise is rounded away)
    assert a.decide(6, ready=2).wanted == 3  # ceil(1.5 x 2)
    assert a.decide(6, ready=3).wanted == 5  # ceil(1.5 x 3)
    big = kpa(max_scale=5000)
    big.record(6, 7000.0, 6)  # wants 10000
    assert big.decide(6, ready=1).wanted == 1000  # 1000 x max(1, ready)
    assert big.decide(6, ready=0).wanted == 1000


def test_min_and_max_bound_the_decision() -> None:
    kept = kpa(min_scale=1)
    kept.record(60, 0.0, 60)
    for t in (60, 100, 200):
        d = kept.decide(t, ready=1)
        assert d.wanted == 1
    assert d.reason.endswith("; min 1")
    capped = kpa(max_scale=10)
    capped.record(60, 70.0, 60)  # wants 100
    d = capped.decide(60, ready=10)
    assert d.wanted == 10 and d.reason.endswith("; max 10")
    with pytest.raises(ValueError):
        kpa(min_scale=3, max_scale=2)


def test_unlimited_concurrency_targets_knatives_default_of_100() -> None:
    a = kpa(concurrency=0)
    assert a.target == 70.0  # 100 x 0.7, as Knative's container-concurrency-target-default
    a.record(60, 150.0, 60)
    assert a.decide(60, ready=3).wanted == 3  # ceil(150 / 70); 100 x 1 would give 2


def test_the_lesson_rng_panics_to_its_max_then_drops_a_window_later() -> None:
    a = kpa(concurrency=1, max_scale=10)  # rng, target 0.7
    first = run(a, 0, 2, 9.5, ready=1, step=0.5)[2.0]
    # ceil(9.5 / 0.7) = 14 >= 2 x 1: panic, 14 capped at 10
    assert (first.panic, first.observed, first.wanted) == (True, 9.5, 10)
    # Ten ready, concurrency 5: the panic window wants ceil(7.25 / 0.7) = 11 at 4,
    # then 8 (< 2 x 10): the burst at 2 was the last; panic holds 10 until 62.
    later = run(a, 2, 70, 5.0, ready=10)
    assert all(d.panic and d.wanted == 10 for t, d in later.items() if t < 62)
    # Stable [2, 62] = 5 -> ceil(7.14) = 8, within the halving (>= 5).
    assert (later[62].panic, later[62].wanted) == (False, 8)


# -- the HPA's cpu rule: the counter-example --------------------------------------


def hpa(min_scale: int = 0, max_scale: int = 10, **settings: float) -> Autoscaler:
    return Autoscaler(Scaling(kind="cpu", **settings), 8, min_scale, max_scale)  # type: ignore[arg-type]


def test_cpu_a_sleeping_function_never_scales_up_nor_to_zero() -> None:
    a = hpa()
    assert a.decide(0, ready=0).wanted == 1  # no data: still one (never zero)
    for t in range(2, 122, 2):
        a.record(t, 50.0, 2)  # 50 requests waiting on sleeps: the HPA does not see them
        a.record_cpu(t, 0.5, 2)
        d = a.decide(t, ready=1)
        assert d.wanted == 1 and not d.panic
    assert d.reason == "cpu 0% of a core over 60 s, target 80%"


def test_cpu_a_busy_function_scales_by_the_hpa_formula_at_once() -> None:
    a = hpa()
    a.record_cpu(60, 100.0, 60)
    assert a.decide(60, ready=2).wanted == 3  # ceil(2 x 100 / 80) = ceil(2.5)
    b = hpa()
    b.record_cpu(60, 200.0, 60)
    assert b.decide(60, ready=3).wanted == 8  # ceil(3 x 2.5) = ceil(7.5)
    assert b.decide(60, ready=5).wanted == 10  # ceil(12.5), capped


@pytest.mark.parametrize(("cpu", "wanted"), [(88.0, 10), (72.0, 10), (89.0, 12), (71.0, 9)])
def test_cpu_no_change_within_a_tenth_of_the_target(cpu: float, wanted: int) -> None:
    a = hpa(max_scale=20)
    a.record_cpu(60, cpu, 60)
    # 88 / 80 = 1.1 and 72 / 80 = 0.9: within, ten stay ten (in floats 88 / 80 - 1
    # is 0.10000000000000009); 89 -> ceil(11.125) = 12, 71 -> ceil(8.875) = 9
    assert a.decide(60, ready=10).wanted == wanted


def test_cpu_scale_down_waits_for_the_highest_recommendation_of_the_window() -> None:
    a = hpa(stable_window=10)
    a.record_cpu(10, 100.0, 10)
    wanted = [a.decide(10, ready=4).wanted]  # ceil(4 x 1.25) = 5, at once
    for t in range(12, 28, 2):
        a.record_cpu(t, 0.0, 2)
        wanted.append(a.decide(t, ready=4).wanted)
    # averages 80 (within: 4), 60 (3), 40 (2), 20 (1), 0 (1), 0, 0, 0; each decision
    # takes the highest of the last 10 s: 5 until it leaves at 20, then 4, 3, 2, 1
    assert wanted == [5, 5, 5, 5, 5, 4, 3, 2, 1]

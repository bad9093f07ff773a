"""The front door's slot-and-line rules on a fake clock: no socket, no loop."""

from __future__ import annotations

import pytest

from brkcoin.platform.door import REST, Door, Instance, LineFull


def door(concurrency: int = 1, instances: int = 2, **settings: float) -> Door:
    d = Door("rng", concurrency, **settings)  # type: ignore[arg-type]
    for n in range(instances):
        d.add(Instance(f"rng-{n + 1}", "127.0.0.1", 9000 + n), now=0.0)
    return d


def test_fewest_in_flight_first_and_idle_instances_take_turns() -> None:
    d = door(concurrency=2, instances=3)
    first = [d.arrive(0.0).instance for _ in range(3)]
    assert [i.name for i in first if i] == ["rng-1", "rng-2", "rng-3"]
    fourth = d.arrive(0.0)
    assert fourth.instance is not None and fourth.instance.in_flight == 2


def test_served_breaks_ties_so_a_keepalive_client_is_spread() -> None:
    d = door(concurrency=0, instances=3)
    names = []
    for _ in range(6):
        ticket = d.arrive(0.0)
        assert ticket.instance is not None
        names.append(ticket.instance.name)
        d.finish(ticket, 0.0)
    assert names == ["rng-1", "rng-2", "rng-3"] * 2


def test_a_full_door_makes_a_line_first_come_first_served() -> None:
    d = door(concurrency=1, instances=1)
    running = d.arrive(0.0)
    waiting = [d.arrive(float(t)) for t in range(1, 4)]
    assert all(t.instance is None for t in waiting) and d.queued == 3
    assert d.finish(running, 5.0) == [waiting[0]]
    assert waiting[0].instance is not None and d.queued == 2


def test_a_newcomer_never_jumps_the_line() -> None:
    d = door(concurrency=1, instances=1)
    running = d.arrive(0.0)
    waiting = d.arrive(0.0)
    d.instances[0].in_flight = 0  # a slot frees outside finish(): still no jumping
    late = d.arrive(0.0)
    assert late.instance is None and list(d.line) == [waiting, late]
    d.instances[0].in_flight = 1
    assert d.finish(running, 1.0) == [waiting]


def test_a_client_gone_from_the_line_leaves_it() -> None:
    d = door(concurrency=1, instances=1)
    running, gone, kept = d.arrive(0.0), d.arrive(0.0), d.arrive(0.0)
    assert d.finish(gone, 1.0, "gone") == []
    assert list(d.line) == [kept]
    assert d.finish(running, 2.0) == [kept]


def test_a_client_gone_mid_request_frees_its_slot_at_once() -> None:
    d = door(concurrency=1, instances=1)
    wedged = d.arrive(0.0)
    waiting = d.arrive(0.0)
    assert d.finish(wedged, 0.5, "gone") == [waiting]
    assert d.instances[0].in_flight == 1


def test_finishing_twice_frees_one_slot() -> None:
    d = door(concurrency=2, instances=1)
    ticket = d.arrive(0.0)
    d.arrive(0.0)
    d.finish(ticket, 1.0, "gone")
    d.finish(ticket, 1.0, "answered")
    assert d.instances[0].in_flight == 1


def test_the_line_times_out_in_order_and_exactly_on_time() -> None:
    d = door(concurrency=1, instances=1, line_timeout=10.0)
    d.arrive(0.0)
    early, late = d.arrive(1.0), d.arrive(4.0)
    assert d.expired(10.9) == ([], [])
    waited, _ = d.expired(11.0)
    assert waited == [early] and list(d.line) == [late]


def test_a_request_over_the_timeout_is_reported_and_its_instance_rests() -> None:
    d = door(concurrency=1, instances=2, request_timeout=30.0)
    slow, other = d.arrive(0.0), d.arrive(0.0)
    assert d.expired(29.9)[1] == []
    assert set(d.expired(30.0)[1]) == {slow, other}
    d.finish(other, 30.0)
    d.finish(slow, 30.0, "timeout")
    assert slow.instance is not None
    rested = slow.instance
    assert rested.timeouts == 1 and not rested.unhealthy
    # it rests: the next requests go to the other instance, even with room here
    assert d.arrive(30.0).instance is not rested
    assert d.arrive(30.0 + REST).instance is rested


def test_timeouts_in_a_row_make_an_instance_unhealthy_an_answer_resets_them() -> None:
    d = door(concurrency=0, instances=1)
    instance = d.instances[0]
    d.finish(d.arrive(0.0), 1.0, "timeout")
    d.finish(d.arrive(2.0), 3.0)
    assert instance.timeouts == 0
    for t in (4.0, 6.0):
        d.finish(d.arrive(t), t + 1, "timeout")
    assert instance.unhealthy


def test_a_refusing_instance_rests_and_the_line_waits_for_the_rest_to_end() -> None:
    d = door(concurrency=1, instances=1)
    refused = d.arrive(0.0)
    waiting = d.arrive(0.0)
    assert d.finish(refused, 0.0, "refused") == []
    assert d.next_rest_end(0.0) == REST
    assert d.serve_line(REST) == [waiting]


def test_a_draining_instance_gets_no_new_request() -> None:
    d = door(concurrency=0, instances=2)
    d.instances[0].draining = True
    assert all(d.arrive(0.0).instance is d.instances[1] for _ in range(3))


def test_drain_of_the_last_instance_leaves_the_line_to_time_out() -> None:
    d = door(concurrency=1, instances=1, line_timeout=2.0)
    d.arrive(0.0)
    waiting = d.arrive(0.0)
    d.drop(d.instances[0])
    assert d.serve_line(1.0) == []
    assert d.expired(2.0)[0] == [waiting]


def test_a_new_instance_takes_the_line_at_once() -> None:
    d = door(concurrency=1, instances=1)
    d.arrive(0.0)
    waiting = d.arrive(0.0)
    assert d.add(Instance("rng-9", "127.0.0.1", 9009), 1.0) == [waiting]


def test_the_line_is_bounded() -> None:
    d = door(concurrency=1, instances=1, max_line=2)
    for _ in range(3):
        d.arrive(0.0)
    with pytest.raises(LineFull, match="2 rng requests already waiting"):
        d.arrive(0.0)
    assert d.throttled == 1 and d.load == 3


def test_the_load_is_requests_in_flight_and_waiting_over_time() -> None:
    """Knative's observed concurrency: 1 request for 2 s, then 3 for 2 s -> 2 on average."""
    d = door(concurrency=1, instances=1)
    first = d.arrive(0.0)
    assert d.observe(0.0) == (1.0, 0.0)
    more = [d.arrive(2.0), d.arrive(2.0)]
    assert d.observe(4.0) == (2.0, 4.0)
    d.finish(first, 5.0)
    for ticket in more:
        d.finish(ticket, 5.0)
    assert d.observe(6.0) == (1.5, 2.0)  # 3 for 1 s, then none for 1 s
    assert d.load == 0


def test_waiters_past_the_bound_are_throttled_and_leave_the_load() -> None:
    d = door(concurrency=1, instances=1, line_timeout=10.0)
    d.arrive(0.0)
    for _ in range(3):
        d.arrive(0.0)
    waited, _ = d.expired(10.0)
    assert len(waited) == 3 and d.throttled == 3 and d.load == 1


def test_who_waited_for_a_new_instance_had_a_cold_start() -> None:
    d = door(concurrency=1, instances=0)
    first, second = d.arrive(0.0), d.arrive(0.5)
    d.add(Instance("rng-1", "127.0.0.1", 9001), 1.5)
    assert first.instance is not None and second.instance is None
    assert d.cold_requests == 1 and d.cold_wait == 1.5
    d.finish(first, 2.0)  # the next in line took a warm slot: no cold start
    assert second.instance is not None and d.cold_requests == 1

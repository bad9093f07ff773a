"""The local scheduler fires on its cron or interval; an injected clock makes
hours of cron run in a moment."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest

from brkcoin.platform.scheduler import (
    BadSchedule,
    Cron,
    Scheduler,
    WorkerTrigger,
    parse_every,
    unrecorded,
)


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    async def wait(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def run(schedule, start: datetime, ticks: int) -> list[tuple[datetime, float]]:
    clock = FakeClock(start)
    fired: list[tuple[datetime, float]] = []
    scheduler = Scheduler(schedule, lambda period: fired.append((clock.now, period)), clock,
                          clock.wait)
    asyncio.run(scheduler.run(ticks))
    return fired


def test_interval_fires_at_once_then_every_period():
    start = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    fired = run(parse_every("10s"), start, 4)
    assert [t for t, _ in fired] == [start + timedelta(seconds=10 * i) for i in range(4)]
    assert all(period == 10 for _, period in fired)


def test_cron_fires_on_the_minute_marks():
    start = datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC)
    fired = run(Cron("*/5 * * * *"), start, 3)
    assert [t.strftime("%H:%M:%S") for t, _ in fired] == ["12:05:00", "12:10:00", "12:15:00"]
    assert all(period == 300 for _, period in fired)


def test_cron_skips_ticks_missed_while_busy():
    start = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    clock = FakeClock(start)
    fired: list[datetime] = []

    def slow_fire(period: float) -> None:
        fired.append(clock.now)
        clock.now += timedelta(minutes=3)  # the tick itself took three minutes

    asyncio.run(Scheduler(Cron("* * * * *"), slow_fire, clock, clock.wait).run(3))
    assert [t.strftime("%H:%M") for t in fired] == ["12:01", "12:05", "12:09"]


@pytest.mark.parametrize("text, seconds", [("10s", 10), ("2m", 120), ("1h", 3600), ("0.5", 0.5)])
def test_parse_every(text, seconds):
    assert parse_every(text).seconds == seconds


@pytest.mark.parametrize("bad", ["", "ten", "-5s", "0s", "5d"])
def test_bad_interval_is_refused(bad):
    with pytest.raises(BadSchedule):
        parse_every(bad)


def test_bad_cron_is_refused():
    with pytest.raises(BadSchedule, match="bad cron expression"):
        Cron("61 * * * *")


def test_real_interval_invokes_the_worker_like_cloud_scheduler(mining_stack):
    """A real short interval against a real worker: each tick sends POST {"seconds"}."""
    logged: list[str] = []

    async def two_answers() -> None:
        trigger = WorkerTrigger(mining_stack["worker"].url, fanout=1, log=logged.append)
        ticking = asyncio.create_task(Scheduler(parse_every("1.2s"), trigger).run())
        while len([line for line in logged if line.startswith("worker")]) < 2:
            await asyncio.sleep(0.05)  # not "tick skipped": a tick may overlap
        ticking.cancel()

    asyncio.run(asyncio.wait_for(two_answers(), 15))
    answers = [line for line in logged if line.startswith("worker")]
    assert all(line.startswith("worker 200:") for line in answers[:2])
    summary = json.loads(answers[0].removeprefix("worker 200:"))
    assert 1.1 <= summary["seconds"] < 1.2 + 1  # mines 55/60 of the 1.2 s tick
    assert int(mining_stack["redis"].client().get("hashes")) > 0


def test_a_long_interval_mines_within_the_workers_bound():
    trigger = WorkerTrigger("http://127.0.0.1:1", max_seconds=900)
    assert trigger.mining_seconds(3600) == 900
    assert trigger.mining_seconds(60) == 60  # the whole tick: no gap between ticks


def test_an_unreachable_worker_is_counted_not_raised():
    async def tick() -> WorkerTrigger:
        trigger = WorkerTrigger("http://127.0.0.1:1", log=lambda line: None)
        trigger(10)
        await asyncio.gather(*trigger.tasks)
        return trigger

    state = asyncio.run(tick()).state()
    assert state["answers"] == {"unreachable": 1} and state["in_flight"] == 0


def test_an_invocation_counts_as_mining_only_until_its_deadline():
    """Continuous mining: the tick after a 10 s tick starts while the invocations
    before it still flush and answer; a tick in the middle of their mining is skipped."""
    async def ticks() -> tuple[WorkerTrigger, list[int]]:
        held = []  # connections accepted and never answered: invocations in flight
        server = await asyncio.start_server(lambda r, w: held.append(w), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        now = [0.0]
        trigger = WorkerTrigger(f"http://127.0.0.1:{port}", fanout=2, log=lambda line: None,
                                clock=lambda: now[0])
        mining = []
        for now[0] in (0.0, 5.0, 9.9, 20.2):
            trigger(10)
            mining.append(trigger.mining())
        for task in list(trigger.tasks):
            task.cancel()
        await asyncio.gather(*trigger.tasks, return_exceptions=True)
        server.close()
        return trigger, mining

    trigger, mining = asyncio.run(ticks())
    # 5.0: skipped, the first tick's still mine. 9.9: they are done mining (SLACK)
    # and still answering: the tick goes. 20.2: two ticks' worth (2 x fanout) are
    # still unanswered: skipped, so no backlog builds.
    assert (trigger.ticks, trigger.skipped, trigger.invocations) == (4, 2, 4)
    assert mining == [2, 2, 2, 0]


def test_a_fanout_of_zero_pauses_the_schedule():
    trigger = WorkerTrigger("http://127.0.0.1:1", fanout=0, log=lambda line: None)
    trigger(10)  # no loop needed: nothing is sent
    assert trigger.state()["paused"] and trigger.ticks == 0 and trigger.invocations == 0


def test_a_503_answer_tells_what_never_reached_redis() -> None:
    summary = {"error": "counts not recorded in Redis: redis unreachable", "hashes": 40,
               "unrecorded": {"hashes": 30, "coins": {"0ab": "cd", "0ef": "01"}},
               "in_doubt": {"marker": "brkcoin:flush:x", "hashes": 10, "coins": {}}}
    assert unrecorded(json.dumps(summary)) == {"hashes": 30, "coins": 2, "in_doubt": 1}
    summary |= {"unrecorded": {"hashes": 0, "coins": {}}, "in_doubt": None}
    assert unrecorded(json.dumps(summary)) == {}
    for answer in ("Service Unavailable", "[]", '{"unrecorded": 5}', "null",
                   '{"unrecorded": {"hashes": true, "coins": []}}'):
        assert unrecorded(answer) == {}, answer

"""The local scheduler: fires on a cron expression (as Cloud Scheduler takes it) or
on a sub-minute interval, and each tick invokes the worker as a cloud scheduler would.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import requests
from cronsim import CronSim, CronSimError

# An invocation mines for this share of the tick, as a 1-minute cron mining 55 s,
# so consecutive ticks keep the rate continuous without piling up.
MINING_SHARE = 55 / 60


class BadSchedule(ValueError):
    pass


class Interval:
    """Every N seconds, the first tick at once."""

    def __init__(self, seconds: float) -> None:
        if seconds <= 0:
            raise BadSchedule(f"interval must be positive, got {seconds}")
        self.seconds = seconds

    def first(self, now: datetime) -> datetime:
        return now

    def next_after(self, tick: datetime) -> datetime:
        return tick + timedelta(seconds=self.seconds)

    def __str__(self) -> str:
        return f"every {self.seconds:g}s"


class Cron:
    """A five-field cron expression, evaluated in UTC like Cloud Scheduler's default."""

    def __init__(self, expression: str) -> None:
        try:
            CronSim(expression, datetime.now(UTC))
        except CronSimError as e:
            raise BadSchedule(f"bad cron expression {expression!r}: {e}") from e
        self.expression = expression

    def first(self, now: datetime) -> datetime:
        return self.next_after(now)

    def next_after(self, tick: datetime) -> datetime:
        return next(CronSim(self.expression, tick))

    def __str__(self) -> str:
        return f"cron {self.expression!r}"


def parse_every(text: str) -> Interval:
    """'10s', '2m', '1h' or plain seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*", text)
    if not match:
        raise BadSchedule(f"--every takes a duration like 10s, 2m or 1h, got {text!r}")
    return Interval(float(match[1]) * {"s": 1, "m": 60, "h": 3600}[match[2] or "s"])


class Scheduler:
    """Calls `fire(tick_seconds)` at each tick until stopped.

    The clock and the wait are injectable so tests can run a day of cron in a moment.
    """

    def __init__(
        self,
        schedule: Interval | Cron,
        fire: Callable[[float], None],
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        self.schedule, self.fire, self.now = schedule, fire, now
        self.stopped = threading.Event()
        self.wait = wait or self.stopped.wait  # returns True once stopped

    def run(self, ticks: int | None = None) -> None:
        tick = self.schedule.first(self.now())
        while ticks is None or ticks > 0:
            delay = (tick - self.now()).total_seconds()
            if delay > 0 and self.wait(delay):
                return
            if self.stopped.is_set():
                return
            following = self.schedule.next_after(tick)
            self.fire((following - tick).total_seconds())
            tick = following
            while tick <= self.now():  # skip ticks missed while asleep, as cron does
                tick = self.schedule.next_after(tick)
            ticks = None if ticks is None else ticks - 1

    def stop(self) -> None:
        self.stopped.set()


class WorkerTrigger:
    """Sends each tick what Cloud Scheduler sends: POST {"seconds": ...} to the worker,
    with the bearer token, `workers` times in parallel."""

    def __init__(
        self,
        worker_url: str,
        workers: int = 1,
        inputs: dict[str, int] | None = None,
        token: str = "",
        log: Callable[[str], None] = print,
    ) -> None:
        self.url, self.workers, self.inputs, self.log = worker_url, workers, inputs or {}, log
        self.headers = {"Content-Type": "application/json", "User-Agent": "brkcoin-scheduler"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers) * 2)
        self.invocations = 0

    def __call__(self, tick_seconds: float) -> None:
        seconds = max(1.0, round(tick_seconds * MINING_SHARE, 1))
        body = json.dumps({"seconds": seconds, **self.inputs})
        for _ in range(self.workers):
            self.invocations += 1
            self.pool.submit(self._invoke, body, seconds)

    def _invoke(self, body: str, seconds: float) -> None:
        try:
            response = requests.post(
                self.url, data=body, headers=self.headers, timeout=seconds + 60
            )
            self.log(f"worker {response.status_code}: {response.text.strip()}")
        except requests.RequestException as e:
            self.log(f"worker unreachable: {e}")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

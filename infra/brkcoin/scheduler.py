"""The local scheduler: fires on a cron expression (as Cloud Scheduler takes it) or
on a sub-minute interval, and each tick invokes the worker as a cloud scheduler would.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from collections.abc import Callable
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
    """Each tick, what Cloud Scheduler sends, `fanout` times at once: POST / with
    {"seconds": ...} and the bearer token, to the worker's URL.

    `fanout` is "N workers" in the DockerCoins lesson; it may change between ticks.
    The overlap policy is a Kubernetes CronJob's concurrencyPolicy: "skip" (Forbid,
    the default) lets no tick start while invocations of an earlier one still
    run, so a slow worker can never build a backlog; "allow" starts them anyway,
    up to 4 x fanout in flight.
    """

    def __init__(
        self,
        worker_url: str,
        fanout: int = 1,
        inputs: dict[str, float] | None = None,
        token: str = "",
        log: Callable[[str], None] = print,
        overlap: str = "skip",
    ) -> None:
        if overlap not in ("skip", "allow"):
            raise BadSchedule(f"the overlap policy is skip or allow, not {overlap!r}")
        self.url, self.fanout, self.inputs, self.log = worker_url, fanout, inputs or {}, log
        self.overlap = overlap
        self.headers = {"Content-Type": "application/json", "User-Agent": "brkcoin-scheduler"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.lock = threading.Lock()
        self.in_flight = 0
        self.ticks = self.skipped = self.invocations = 0
        self.answers: Counter[str] = Counter()  # "200", "503", "unreachable"...
        self.problem = ""  # the latest answer that was not a 200, in a line

    def __call__(self, tick_seconds: float) -> None:
        seconds = max(1.0, round(tick_seconds * MINING_SHARE, 1))
        body = json.dumps({"seconds": seconds, **self.inputs})
        with self.lock:
            self.ticks += 1
            busy = self.in_flight and (self.overlap == "skip"
                                       or self.in_flight >= 4 * self.fanout)
            if busy:
                self.skipped += 1
                self.log(f"tick skipped: {self.in_flight} invocation(s) of earlier ticks "
                         "still running")
                return
            self.in_flight += self.fanout
            self.invocations += self.fanout
        for _ in range(self.fanout):
            threading.Thread(target=self._invoke, args=(body, seconds), daemon=True).start()

    def _invoke(self, body: str, seconds: float) -> None:
        try:
            response = requests.post(self.url, data=body, headers=self.headers,
                                     timeout=seconds + 60)
            outcome, text = str(response.status_code), response.text.strip()
        except requests.RequestException as e:
            outcome, text = "unreachable", str(e)
        self.log(f"worker {outcome}: {text}")
        with self.lock:
            self.in_flight -= 1
            self.answers[outcome] += 1
            if outcome != "200":
                self.problem = f"{outcome}: {_first_line(text)}"

    def state(self) -> dict[str, object]:
        with self.lock:
            return {"fanout": self.fanout, "overlap": self.overlap, "ticks": self.ticks,
                    "skipped": self.skipped, "invocations": self.invocations,
                    "in_flight": self.in_flight, "answers": dict(self.answers),
                    "problem": self.problem}


def _first_line(text: str) -> str:
    """An answer in a line: its JSON "error" if it has one."""
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        error = None
    line = (error if isinstance(error, str) else text).strip().splitlines()
    return line[0][:160] if line else ""

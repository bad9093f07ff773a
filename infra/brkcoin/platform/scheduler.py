"""The local scheduler: fires on a cron expression (as Cloud Scheduler takes it) or
on a sub-minute interval, and each tick invokes the worker as a cloud scheduler would.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from cronsim import CronSim, CronSimError

# An invocation whose mining ends this close to a tick counts as done: a tick's
# timer and the invocation's own clock differ by a few milliseconds.
SLACK = 0.5


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
    """Calls `fire(tick_seconds)` at each tick until stopped, on the event loop.

    The clock and the wait are injectable so tests can run a day of cron in a moment.
    """

    def __init__(
        self,
        schedule: Interval | Cron,
        fire: Callable[[float], None],
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        wait: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.schedule, self.fire, self.now, self.wait = schedule, fire, now, wait
        self.failures = 0
        self.last_failure = ""

    async def run(self, ticks: int | None = None) -> None:
        tick = self.schedule.first(self.now())
        while ticks is None or ticks > 0:
            delay = (tick - self.now()).total_seconds()
            if delay > 0:
                await self.wait(delay)
            following = self.schedule.next_after(tick)
            try:
                self.fire((following - tick).total_seconds())
            except Exception as e:  # a tick that failed is not the end of the schedule
                self.failures += 1
                self.last_failure = f"{type(e).__name__}: {e}"
            tick = following
            while tick <= self.now():  # skip ticks missed while asleep, as cron does
                tick = self.schedule.next_after(tick)
            ticks = None if ticks is None else ticks - 1


class WorkerTrigger:
    """Each tick, what Cloud Scheduler sends, `fanout` times at once: POST / with
    {"seconds": ...} and the bearer token, to the worker's URL.

    `fanout` is "N workers" in the DockerCoins lesson; it may change between ticks,
    and 0 pauses the schedule (as pausing a Cloud Scheduler job does). An
    invocation mines for the whole tick, at most `max_seconds` (the worker's own
    bound), so consecutive ticks leave no gap; a long interval mines in bursts
    rather than failing. The overlap policy is a Kubernetes CronJob's
    concurrencyPolicy: "skip" (Forbid, the default) lets no tick start while
    invocations of an earlier one still mine, so a slow worker can never build a
    backlog; an invocation counts as mining until its deadline, and its last
    flush and answer may overlap the next tick (one tick's worth: 2 x fanout in
    flight at most). "allow" starts them anyway, up to 4 x fanout in flight.

    Each tick is a trace: `new_trace()` gives its span's traceparent, which every
    invocation of the tick carries (as a Cloud Scheduler job's trace would).
    """

    def __init__(
        self,
        worker_url: str,
        fanout: int = 1,
        inputs: dict[str, float] | None = None,
        token: str = "",
        log: Callable[[str], None] = print,
        overlap: str = "skip",
        max_seconds: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
        new_trace: Callable[[], str] | None = None,
    ) -> None:
        if overlap not in ("skip", "allow"):
            raise BadSchedule(f"the overlap policy is skip or allow, not {overlap!r}")
        self.url, self.fanout, self.inputs, self.log = worker_url, fanout, inputs or {}, log
        self.overlap, self.max_seconds, self.clock = overlap, max_seconds, clock
        self.new_trace = new_trace
        self.headers = {"Content-Type": "application/json", "User-Agent": "brkcoin-scheduler"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.in_flight = 0  # invocations not answered yet
        self.deadlines: list[float] = []  # when each invocation in flight stops mining
        self.ticks = self.skipped = self.invocations = 0
        self.answers: Counter[str] = Counter()  # "200", "503", "unreachable"...
        self.lost: Counter[str] = Counter()  # hashes, coins, in_doubt: from 503 answers
        self.problem = ""  # the latest answer that was not a 200, in a line
        self.tasks: set[asyncio.Task[None]] = set()

    def mining_seconds(self, tick_seconds: float) -> float:
        return min(self.max_seconds, max(1.0, round(tick_seconds, 1)))

    def mining(self) -> int:
        """Invocations still mining: in flight, and before their deadline."""
        now = self.clock()
        return sum(1 for deadline in self.deadlines if deadline - SLACK > now)

    def busy(self) -> bool:
        """Whether this tick must be skipped (the overlap policy). With "skip", a
        tick waits for the earlier invocations' mining, and for their answers
        when more than one tick's worth are unanswered: no backlog ever builds."""
        if self.overlap == "skip":
            return self.mining() > 0 or self.in_flight > self.fanout
        return self.in_flight >= 4 * self.fanout

    def __call__(self, tick_seconds: float) -> None:
        if self.fanout == 0:
            return  # paused
        seconds = self.mining_seconds(tick_seconds)
        body = json.dumps({"seconds": seconds, **self.inputs}).encode()
        self.ticks += 1
        if self.busy():
            self.skipped += 1
            self.log(f"tick skipped: {self.mining()} invocation(s) of earlier ticks "
                     "still mining")
            return
        self.in_flight += self.fanout
        self.invocations += self.fanout
        headers = self.headers
        if self.new_trace is not None:
            headers = headers | {"traceparent": self.new_trace()}
        for _ in range(self.fanout):
            deadline = self.clock() + seconds
            self.deadlines.append(deadline)
            task = asyncio.get_running_loop().create_task(
                self._invoke(body, headers, seconds, deadline))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _invoke(self, body: bytes, headers: dict[str, str], seconds: float,
                      deadline: float) -> None:
        try:
            status, text = await post(self.url, body, headers, timeout=seconds + 60)
            outcome = str(status)
        except (OSError, TimeoutError, ValueError) as e:
            outcome, text = "unreachable", str(e) or type(e).__name__
        finally:
            self.in_flight -= 1
            self.deadlines.remove(deadline)
        self.log(f"worker {outcome}: {text}")
        self.answers[outcome] += 1
        if outcome != "200":
            self.problem = f"{outcome}: {_first_line(text)}"
            self.lost.update(unrecorded(text))

    def state(self) -> dict[str, object]:
        return {"fanout": self.fanout, "paused": self.fanout == 0, "overlap": self.overlap,
                "ticks": self.ticks, "skipped": self.skipped, "invocations": self.invocations,
                "in_flight": self.in_flight, "mining": self.mining(),
                "answers": dict(self.answers), "lost": dict(self.lost),
                "problem": self.problem}


MAX_ANSWER = 1024 * 1024  # a worker's summary is a few hundred bytes


async def post(url: str, body: bytes, headers: dict[str, str],
               timeout: float) -> tuple[int, str]:
    """POST `body` to a plain-HTTP `url` on the event loop; (status, answer text).
    Small and bounded on purpose: one request, Connection: close, a summary back."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"the scheduler posts to http:// URLs, not {url!r}")
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
        try:
            head = [f"POST {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc}",
                    f"Content-Length: {len(body)}", "Connection: close",
                    *(f"{k}: {v}" for k, v in headers.items())]
            writer.write("\r\n".join(head).encode() + b"\r\n\r\n" + body)
            answer = await reader.read(MAX_ANSWER)
            while len(answer) < MAX_ANSWER and (more := await reader.read(MAX_ANSWER)):
                answer += more
        finally:
            writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    _, _, text = rest.partition(b"\r\n\r\n")
    try:
        status = int(status_line.split()[1])
    except (IndexError, ValueError):
        raise ValueError(f"not an HTTP answer: {status_line[:60]!r}") from None
    return status, text.decode(errors="replace")


def unrecorded(text: str) -> Counter[str]:
    """What a worker's 503 answer says never reached Redis: its unrecorded hashes
    and coins, and 1 in_doubt for a flush sent without an answer. Nothing for an
    answer that is not the worker's summary."""
    try:
        summary = json.loads(text)
        lost = summary.get("unrecorded")
        hashes, coins = lost.get("hashes"), lost.get("coins")
    except (ValueError, AttributeError):
        return Counter()
    found: Counter[str] = Counter()
    if isinstance(hashes, int) and not isinstance(hashes, bool) and hashes > 0:
        found["hashes"] = hashes
    if isinstance(coins, dict) and coins:
        found["coins"] = len(coins)
    if isinstance(summary.get("in_doubt"), dict):
        found["in_doubt"] = 1
    return found


def _first_line(text: str) -> str:
    """An answer in a line: its JSON "error" if it has one."""
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        error = None
    line = (error if isinstance(error, str) else text).strip().splitlines()
    return line[0][:160] if line else ""

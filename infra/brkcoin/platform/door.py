"""The front door's rules, with no I/O: which instance takes a request, who waits
in line, and when a request has waited or run too long.

What Cloud Run's front end and Knative's activator decide: a request goes to the
instance with the fewest requests in flight that still has a free slot under the
per-instance concurrency (Cloud Run's --concurrency, Knative's
containerConcurrency), and among equals to the one that served least, so idle
instances take turns. When every slot is taken, requests wait in line, first
come first served, up to a bound; past it they are throttled (the proxy answers
429, as Cloud Run does). A request whose client has gone leaves the line or
frees its slot at once.

The door also keeps what the autoscaler reads: the load (requests in flight and
waiting, Knative's observed concurrency) integrated over time, and the requests
that waited for an instance to start (cold-start requests). Every decision is a
function of this state and the time it is given (`now`), so the rules are tested
on a fake clock; the byte proxy (proxy.py) does the I/O and asks.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter, deque
from dataclasses import dataclass, field

UNHEALTHY_AFTER = 2  # timeouts in a row: the platform replaces the instance
REST = 1.0  # seconds an instance that refused a connection or timed out gets no request
# Upper bounds (seconds) of the answered requests' duration histogram: OpenTelemetry's
# recommended faas.invoke_duration buckets, with sub-millisecond ones below, finer ones
# around the demo's 0.1 s latency, and a worker invocation's minutes above.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.125,
                    0.15, 0.2, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0,
                    120.0)


@dataclass(eq=False)
class Instance:
    """One function instance (a functions-framework process) behind the door."""

    name: str
    host: str
    port: int
    in_flight: int = 0
    served: int = 0
    draining: bool = False
    resting_until: float = 0.0
    timeouts: int = 0  # in a row

    @property
    def unhealthy(self) -> bool:
        return self.timeouts >= UNHEALTHY_AFTER


@dataclass(eq=False)
class Ticket:
    """One request's place: in line, then on an instance until it is done."""

    arrived: float
    instance: Instance | None = None
    started: float = 0.0  # when it got its instance
    done: bool = False


class LineFull(Exception):
    pass


@dataclass(eq=False)
class Door:
    name: str
    concurrency: int = 0  # per instance; 0: no limit
    line_timeout: float = 30.0  # seconds a request may wait for a slot
    request_timeout: float = 30.0  # seconds an instance may take to answer
    max_line: int = 1000
    instances: list[Instance] = field(default_factory=list)
    line: deque[Ticket] = field(default_factory=deque)
    running: set[Ticket] = field(default_factory=set)
    # What the autoscaler and the status read:
    load: int = 0  # requests in flight and in line
    load_seconds: float = 0.0  # load integrated since `observed_since`
    load_since: float = 0.0  # when load_seconds was last brought up to date
    observed_since: float = 0.0
    throttled: int = 0  # requests refused for waiting too long or a full line
    cold_requests: int = 0  # requests that waited in line for an instance to start
    cold_wait: float | None = None  # the latest one's wait, in seconds
    # What the metrics read: each request's final status (the instance's, or the
    # door's own answer), and how long answered ones took on their instance.
    codes: Counter[int] = field(default_factory=Counter)
    durations: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    duration_sum: float = 0.0

    # -- requests --
    def arrive(self, now: float) -> Ticket:
        """A request's ticket, with its instance if one has room and nobody waits."""
        ticket = Ticket(now)
        instance = None if self.line else self._free(now)
        self._account(now)
        if instance is not None:
            self._grant(ticket, instance, now)
        elif len(self.line) >= self.max_line:
            self.throttled += 1
            raise LineFull(f"{len(self.line)} {self.name} requests already waiting")
        else:
            self.line.append(ticket)
        self.load += 1
        return ticket

    def finish(self, ticket: Ticket, now: float, outcome: str = "answered") -> list[Ticket]:
        """The request is over: answered, its client gone ("gone"), its instance
        refused the connection ("refused") or took too long ("timeout"). Frees its
        slot or its place in line; returns the tickets that got an instance by it."""
        if ticket.done:
            return []
        ticket.done = True
        self._account(now)
        self.load -= 1
        instance = ticket.instance
        if instance is None:
            if ticket in self.line:
                self.line.remove(ticket)
            return []
        self.running.discard(ticket)
        instance.in_flight -= 1
        if outcome == "answered":
            instance.served += 1
            instance.timeouts = 0
            took = now - ticket.started
            self.durations[bisect_left(DURATION_BUCKETS, took)] += 1
            self.duration_sum += took
        elif outcome in ("refused", "timeout"):
            instance.resting_until = now + REST
            instance.timeouts += outcome == "timeout"
        return self.serve_line(now)

    def expired(self, now: float) -> tuple[list[Ticket], list[Ticket]]:
        """(tickets that waited in line too long, now out of it; tickets whose
        instance has taken longer than the request timeout, still on it)."""
        waited = []
        self._account(now)
        while self.line and now - self.line[0].arrived >= self.line_timeout:
            ticket = self.line.popleft()
            ticket.done = True
            waited.append(ticket)
        self.load -= len(waited)
        self.throttled += len(waited)
        slow = [t for t in self.running if now - t.started >= self.request_timeout]
        return waited, slow

    def serve_line(self, now: float) -> list[Ticket]:
        """Give free slots to the line, first come first served."""
        granted = []
        while self.line and (instance := self._free(now)) is not None:
            ticket = self.line.popleft()
            self._grant(ticket, instance, now)
            granted.append(ticket)
        return granted

    def _grant(self, ticket: Ticket, instance: Instance, now: float) -> None:
        instance.in_flight += 1
        ticket.instance, ticket.started = instance, now
        self.running.add(ticket)

    def _free(self, now: float) -> Instance | None:
        best = None
        for i in self.instances:
            if (not i.draining and now >= i.resting_until
                    and (not self.concurrency or i.in_flight < self.concurrency)
                    and (best is None or (i.in_flight, i.served) < (best.in_flight, best.served))):
                best = i
        return best

    def count(self, status: int) -> None:
        """A request's final answer: the instance's status, or the door's own."""
        self.codes[status] += 1

    # -- load --
    def _account(self, now: float) -> None:
        self.load_seconds += self.load * max(0.0, now - self.load_since)
        self.load_since = now

    def observe(self, now: float) -> tuple[float, float]:
        """(the average load since the last look, over how many seconds): the
        concurrency Knative's autoscaler scrapes."""
        self._account(now)
        seconds = now - self.observed_since
        average = self.load_seconds / seconds if seconds > 0 else float(self.load)
        self.load_seconds, self.observed_since = 0.0, now
        return average, seconds

    # -- instances --
    def add(self, instance: Instance, now: float) -> list[Ticket]:
        """A new instance, ready: whoever waited in line for it had a cold start."""
        self.instances.append(instance)
        granted = self.serve_line(now)
        for ticket in granted:
            self.cold_requests += 1
            self.cold_wait = now - ticket.arrived
        return granted

    def drop(self, instance: Instance) -> None:
        """Forget it: it died, or it has drained."""
        instance.draining = True
        if instance in self.instances:
            self.instances.remove(instance)

    @property
    def in_flight(self) -> int:
        return sum(i.in_flight for i in self.instances)

    @property
    def queued(self) -> int:
        return len(self.line)

    def next_rest_end(self, now: float) -> float | None:
        """When a resting instance may take requests again, if the line waits for it."""
        ends = [i.resting_until for i in self.instances if i.resting_until > now]
        return min(ends) if ends and self.line else None

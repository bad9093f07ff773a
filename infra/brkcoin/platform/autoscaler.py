"""The autoscaler's decision, with no I/O: how many instances a function wants now.

Kind "kpa" follows Knative's Pod Autoscaler (pkg/autoscaler/scaling/autoscaler.go)
with its documented defaults (layout.Scaling):

- the load is the concurrency (requests in flight and waiting in line), averaged
  over time over the stable window (60 s) and the panic window (6 s); until a
  window of data exists, over what exists (as Knative's buckets from the first
  write), and after a whole window of silence it starts over;
- the target per instance is containerConcurrency x target utilisation (0.7), or
  100 x 0.7 when the concurrency is unlimited (0), and at least 0.01;
- desired = ceil(average / target) for each window, kept within one decision's
  rates: at most 1000 x the ready instances up, at most / 2 down;
- panic when the panic window wants 2 x the ready instances: then it follows the
  panic window, never scales down, and leaves only after a whole stable window
  below the threshold;
- the last instance goes only after the scale-to-zero grace (30 s) at zero
  wanted; a request waiting at zero instances wants one at once (the activator's
  poke);
- finally within [min_scale, max_scale].

Kind "cpu" is what Kubernetes' HPA does, kept as the lesson's counter-example:
ceil(ready x cpu / target), no change within 10 %, scale-up at once, scale-down
to the highest recommendation of the last stable window, never below 1.

Where it deviates from Knative (on purpose):
- no data is a load of 0 (Knative skips the decision): the platform starts a
  function at zero, with no metrics until a request comes;
- ceil() is taken of the quotient rounded to 6 digits, so 7 / 0.7 is 10 and not
  10.000000000000002 -> 11 (Knative rounds only the averages);
- panic ends at panic time + stable window exactly (Knative: strictly after), so
  a tick landing on the boundary leaves;
- the readings are time-weighted intervals, not 1 s buckets; no scale-down
  delay, no burst capacity, no activator in the path: the door holds the line;
- the cpu kind averages over the stable window and stabilises scale-down over it
  too (the HPA: its latest metrics, and 300 s), with none of the HPA's rate policies.
Every call takes the time (`now`, seconds of a monotonic clock), so all of it is
tested on a fake clock.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from brkcoin.layout import Scaling

UNLIMITED_TARGET = 100.0  # Knative's container-concurrency-target-default
TARGET_MIN = 0.01  # Knative's smallest target
HPA_TOLERANCE = 0.1  # the HPA leaves the scale alone within 10 % of its target
DIGITS = 6  # Knative rounds averages to 6 digits; float noise must not add a pod


def _ceil(x: float) -> int:
    return max(0, math.ceil(round(x, DIGITS)))


def _seconds(s: float) -> str:
    return f"{round(s, 1):g}"


@dataclass(frozen=True)
class Decision:
    wanted: int  # instances wanted now, within [min_scale, max_scale]
    reason: str  # one short line for the status and the log
    panic: bool
    observed: float  # the average that decided: concurrency, or cpu percent


class Window:
    """Readings (a value held over an interval) and their time-weighted average
    over the last `seconds` or less. Memory: the readings of one window."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._readings: deque[tuple[float, float, float]] = deque()  # start, end, value
        self._first: float | None = None  # where the data begins: averages start here

    def __len__(self) -> int:
        return len(self._readings)

    def add(self, now: float, value: float, seconds: float) -> None:
        self._forget(now)
        start = now - max(0.0, seconds)
        if self._first is None or start < self._first:
            self._first = start
        self._readings.append((start, now, value))

    def _forget(self, now: float) -> None:
        while self._readings and self._readings[0][1] <= now - self.seconds:
            self._readings.popleft()
        if not self._readings:
            self._first = None  # a whole window of silence: start over, as Knative

    def covered(self, now: float, seconds: float) -> float:
        """How much of the last `seconds` the average covers (less at the start)."""
        if self._first is None:
            return 0.0
        return max(0.0, now - max(now - seconds, self._first))

    def average(self, now: float, seconds: float) -> float:
        """The time-weighted average over the last `seconds` (at most the window),
        from where the data begins; time with no reading counts as 0."""
        self._forget(now)
        span = self.covered(now, seconds)
        if span <= 0:
            return 0.0
        low = now - span
        total = sum(v * (min(end, now) - max(start, low))
                    for start, end, v in self._readings if end > low and start < now)
        return round(total / span, DIGITS)

    def any_above_zero(self, now: float, seconds: float) -> bool:
        """Whether a reading of the last `seconds` saw any load (even an instant)."""
        return any(v > 0 and end >= now - seconds for _, end, v in self._readings)

    def last_above_zero(self) -> float | None:
        return max((end for _, end, v in self._readings if v > 0), default=None)


class Autoscaler:
    """One function's autoscaler: record the load as it is observed, decide every
    tick (and at once when a request waits at zero instances)."""

    def __init__(self, scaling: Scaling, concurrency: int, min_scale: int,
                 max_scale: int) -> None:
        if scaling.kind not in ("kpa", "cpu"):
            raise ValueError(f"unknown scaling kind {scaling.kind!r}")
        if not 0 <= min_scale <= max_scale:
            raise ValueError(f"bad bounds: min {min_scale}, max {max_scale}")
        self.scaling = scaling
        self.min_scale = min_scale
        self.max_scale = max_scale
        total = float(concurrency) if concurrency > 0 else UNLIMITED_TARGET
        self._target = max(TARGET_MIN, total * scaling.target_utilization)
        self._load = Window(scaling.stable_window)
        self._cpu = Window(scaling.stable_window)
        self._panic_time: float | None = None
        self._max_panic_pods = 0
        self._zero_since: float | None = None  # when the wanted scale first was 0
        self._wanted = 0  # the last decision's
        # The cpu kind's recommendations (time, instances): scale-down takes their
        # highest over the stable window (the HPA's stabilisation).
        self._recommended: deque[tuple[float, int]] = deque()

    @property
    def target(self) -> float:
        """Concurrency per instance for kind kpa, cpu percent of a core for cpu."""
        return self.scaling.cpu_target_percentage if self.scaling.kind == "cpu" else self._target

    @property
    def panicking(self) -> bool:
        return self._panic_time is not None

    def record(self, now: float, concurrency: float, seconds: float) -> None:
        """The average concurrency (in flight + in line) over the `seconds` to `now`."""
        self._load.add(now, concurrency, seconds)

    def record_cpu(self, now: float, percent: float, seconds: float) -> None:
        """Kind cpu: the average cpu per ready instance, in percent of one core."""
        self._cpu.add(now, percent, seconds)

    def decide(self, now: float, ready: int) -> Decision:
        d = self._cpu_decision(now, ready) if self.scaling.kind == "cpu" else \
            self._kpa_decision(now, ready)
        self._wanted = d.wanted
        return d

    def _bounded(self, wanted: int, reason: str, lowest: int) -> tuple[int, str]:
        bounded = min(max(wanted, lowest), self.max_scale)
        if bounded < wanted:
            reason += f"; max {self.max_scale}"
        elif bounded > wanted:
            reason += f"; min {lowest}"
        return bounded, reason

    def _kpa_decision(self, now: float, ready: int) -> Decision:
        s = self.scaling
        per = max(1, ready)  # rates and the threshold count at least one instance
        stable = self._load.average(now, s.stable_window)
        panic = self._load.average(now, s.panic_window)
        stable_want = _ceil(stable / self._target)
        panic_want = _ceil(panic / self._target)
        # One decision moves at most max_scale_up_rate x up and / max_scale_down_rate down.
        up = math.ceil(s.max_scale_up_rate * per)
        down = math.floor(per / s.max_scale_down_rate)
        stable_pods = min(max(stable_want, down), up)
        panic_pods = min(max(panic_want, down), up)

        over = panic_want / per >= s.panic_threshold_percentage / 100
        if over:
            self._panic_time = now  # enter, or stay a stable window longer
        elif self._panic_time is not None and now >= self._panic_time + s.stable_window:
            # The burst has made its way into the stable average: trust it again.
            self._panic_time = None
            self._max_panic_pods = 0

        if self._panic_time is not None:
            # No scale-down in panic; Knative provisions for the larger of the two.
            self._max_panic_pods = max(self._max_panic_pods, stable_pods, panic_pods)
            wanted, observed = self._max_panic_pods, panic
            span = self._load.covered(now, s.panic_window)
            reason = f"panic, concurrency {panic:.1f} over {_seconds(span)} s"
        else:
            wanted, observed = stable_pods, stable
            span = self._load.covered(now, s.stable_window)
            reason = f"stable, concurrency {stable:.1f} over {_seconds(span)} s"
        reason += f", target {self._target:g}/instance"

        if wanted > 0 or self.min_scale > 0:
            self._zero_since = None  # min_scale keeps one anyway: no grace to count
        elif ready == 0 and self._load.any_above_zero(now, s.panic_window):
            self._zero_since = None
            wanted, reason = 1, "a request waits at zero instances: 1 now"
        else:
            if self._zero_since is None:
                self._zero_since = now
            idle = now - self._zero_since
            if idle < s.scale_to_zero_grace and max(ready, self._wanted) > 0:
                # Keep the last instance through the grace: a request soon after
                # the stable window emptied starts no cold instance.
                wanted = 1
                reason = f"idle: to zero in {_seconds(s.scale_to_zero_grace - idle)} s"
            else:
                last = self._load.last_above_zero()
                quiet = f" for {_seconds(now - last)} s" if last is not None else ""
                reason = f"no requests{quiet}: to zero"
        wanted, reason = self._bounded(wanted, reason, self.min_scale)
        return Decision(wanted, reason, self._panic_time is not None, observed)

    def _cpu_decision(self, now: float, ready: int) -> Decision:
        s = self.scaling
        per = max(1, ready)
        cpu = self._cpu.average(now, s.stable_window)
        ratio = cpu / s.cpu_target_percentage
        reason = f"cpu {cpu:.0f}% of a core over {_seconds(s.stable_window)} s, " \
                 f"target {s.cpu_target_percentage:g}%"
        if abs(round(ratio - 1, DIGITS)) <= HPA_TOLERANCE:  # 88 / 80 - 1 is 0.1000...09
            desired = per  # close enough: the HPA leaves it alone
            reason += ", within tolerance"
        else:
            desired = max(1, _ceil(per * ratio))  # the HPA never scales to zero
        self._recommended.append((now, desired))
        while self._recommended[0][0] <= now - s.stable_window:
            self._recommended.popleft()
        # Up at once; down only to the highest recommendation of the window.
        wanted = max(n for _, n in self._recommended)
        if wanted > desired:
            reason += f", holding {wanted} (stabilisation)"
        wanted, reason = self._bounded(wanted, reason, max(1, self.min_scale))
        return Decision(wanted, reason, False, cpu)

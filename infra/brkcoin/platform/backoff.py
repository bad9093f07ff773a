"""The restart back-off, with no I/O: how long to wait before starting a process
that died again.

As Kubernetes' CrashLoopBackOff: each quick failure doubles the delay, up to a cap,
and a process that stayed up `reset_after` seconds starts over from `first`. The
defaults are Redis's: with the cap at 2 s, a killed Redis is back within 5 s
(delay + the supervisor's beat + its start) however often it is killed, while a
Redis that cannot start is retried at most every 2 s. Every call takes the time
(`now`, seconds of a monotonic clock), so the rules are tested on a fake clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Backoff:
    first: float = 0.25
    cap: float = 2.0
    reset_after: float = 60.0
    delay: float = field(init=False)  # the next failure's
    up_since: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.delay = self.first

    def started(self, now: float) -> None:
        """The process was (re)started at `now`."""
        self.up_since = now

    def failed(self, now: float) -> float:
        """The process died (or could not start) at `now`: seconds to wait before
        the next start."""
        if self.up_since is not None and now - self.up_since >= self.reset_after:
            self.delay = self.first  # it was healthy long enough: not a crash loop
        self.up_since = None
        delay, self.delay = self.delay, min(self.cap, self.delay * 2)
        return delay

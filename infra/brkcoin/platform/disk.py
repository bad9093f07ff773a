"""Writes that may fail on a full disk, counted rather than fatal.

A log line or a status file that cannot be written must never stop mining or
`brkcoin up`: the failure is counted, shown in the status (and on the page), said
once a minute as a JSON line on stderr, and the write is tried again next time.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

SAY_EVERY = 60.0  # seconds between stderr lines about the same failure


class Disk:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.failed = 0
        self.last = ""  # the latest failure, in a line
        self.said: dict[str, float] = {}

    def write(self, what: str, action: Callable[[], object]) -> bool:
        """Run `action`, a write of `what`; False (and counted) if the disk refused it."""
        try:
            action()
        except OSError as e:
            self.failure(what, e)
            return False
        return True

    def append(self, what: str, path: Path, line: str) -> bool:
        """Add `line` to the log file at `path` (its folder made if need be)."""
        def add() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as out:
                out.write(line + "\n")
        return self.write(what, add)

    def failure(self, what: str, error: OSError) -> None:
        self.failed += 1
        self.last = f"{what}: {error.strerror or error}"
        now = self.clock()
        if now - self.said.get(what, -SAY_EVERY) >= SAY_EVERY:
            self.said[what] = now
            line = {"severity": "WARNING", "message": f"cannot write {self.last}",
                    "failed_writes": self.failed}
            try:
                print(json.dumps(line), file=sys.stderr, flush=True)
            except OSError:
                pass  # stderr itself on the full disk: the status still shows it

    def state(self) -> dict[str, object]:
        return {"failed_writes": self.failed, "last_failure": self.last}

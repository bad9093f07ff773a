"""What a running `brkcoin up` keeps in its data folder, for others to read.

- stack.json: who owns the folder (pid), where everything answers (URLs, the
  Redis URL) and which processes it started, so `brkcoin status` and `brkcoin
  scale` find a stack on any ports, and the next `up` ends the leftovers of a
  run that was killed before it could clean up;
- status.json: the platform's and the scheduler's state, rewritten every second;
- control.json: what `brkcoin scale` asks for; `up` applies it and removes it.

Files rather than a control socket: nothing more to listen on, and a person can
read them. Each is replaced atomically (write, then rename).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import psutil

STACK, STATUS, CONTROL = "stack.json", "status.json", "control.json"
PID_MAX = 2**31 - 1  # pid_t; os.killpg overflows beyond
CLOCK_SLACK = 1.0  # seconds a recorded start time may differ by (see _still_ours)


def write(data_dir: Path, name: str, content: dict[str, Any]) -> None:
    path = Path(data_dir) / name
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(content, indent=1))
    partial.replace(path)


def read(data_dir: Path, name: str) -> dict[str, Any]:
    try:
        content = json.loads((Path(data_dir) / name).read_text())
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}


def remove(data_dir: Path, *names: str) -> None:
    for name in names:
        (Path(data_dir) / name).unlink(missing_ok=True)


def record(data_dir: Path, urls: dict[str, str], redis_url: str,
           started: list[tuple[str, int]]) -> None:
    """Write stack.json: this process owns the folder; what it runs, and where. Each
    process with its command line and start time: a pid the system has since given
    to another process is then never taken for one of ours."""
    processes = []
    for name, pid in started:
        try:
            process = psutil.Process(pid)
            with process.oneshot():
                processes.append({"name": name, "pid": pid, "cmdline": process.cmdline(),
                                  "started": process.create_time()})
        except psutil.Error:
            pass  # gone already: nothing to clean up later
    write(data_dir, STACK, {"owner": os.getpid(), "urls": urls, "redis_url": redis_url,
                            "processes": processes})


def running_owner(data_dir: Path) -> int | None:
    """The pid of a `brkcoin up` that still owns this data folder, if any."""
    owner = _process(read(data_dir, STACK).get("owner"))
    try:
        if owner and owner.pid != os.getpid() and "brkcoin" in " ".join(owner.cmdline()):
            return owner.pid
    except psutil.Error:
        pass  # gone, or not ours to read
    return None


def leftovers(data_dir: Path) -> list[dict[str, Any]]:
    """Processes a dead run recorded in stack.json that are still running: the very
    processes it started, not others that now have their pids."""
    if running_owner(data_dir):
        return []  # not leftovers: their run is alive and owns them
    stack = read(data_dir, STACK)
    entries = stack.get("processes")
    if not isinstance(entries, list):
        return []
    return [entry for entry in entries if _still_ours(entry, stack.get("owner"))]


def end_leftovers(data_dir: Path) -> list[dict[str, Any]]:
    """SIGKILL the leftovers of a dead run, their whole process groups: ended,
    not waited for (they may be draining after their parent's death), so the
    ports they hold are free at once."""
    found = leftovers(data_dir)
    for entry in found:
        pid = entry["pid"]
        try:  # an instance leads its own group; Redis under linger.py is in linger's
            (os.killpg if os.getpgid(pid) == pid else os.kill)(pid, signal.SIGKILL)
        except OSError:
            pass  # gone meanwhile
    psutil.wait_procs([p for p in map(_process, (e["pid"] for e in found)) if p], timeout=5)
    remove(data_dir, STACK, STATUS, CONTROL)
    return found


def _still_ours(entry: object, owner: object) -> bool:
    """An entry as `record` writes it, whose pid is still that process (same command
    line and start time), run by our user, and neither init, the owner, ourselves
    nor our group: the file may be stale or crafted, and its pids get SIGKILL."""
    if not isinstance(entry, dict):
        return False
    name, pid, cmdline, started = (entry.get(k) for k in ("name", "pid", "cmdline", "started"))
    if not (isinstance(name, str) and name.isprintable() and isinstance(cmdline, list)
            and isinstance(started, float)) or pid in (1, owner, os.getpid(), os.getpgrp()):
        return False
    process = _process(pid)
    try:
        # create_time follows the wall clock (psutil adds the boot time, which NTP may
        # move): a second of slack; a reused pid would need the same command line too.
        return (process is not None and process.cmdline() == cmdline
                and abs(process.create_time() - started) < CLOCK_SLACK
                and process.uids().real == os.getuid())
    except (psutil.Error, OSError):
        return False


def _process(pid: object) -> psutil.Process | None:
    """The live process a pid read from a file names, if it is a pid at all (an int,
    not a bool, in range)."""
    if type(pid) is not int or not 0 < pid <= PID_MAX:
        return None
    try:
        process = psutil.Process(pid)
        return process if process.status() != psutil.STATUS_ZOMBIE else None
    except psutil.Error:
        return None

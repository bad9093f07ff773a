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
    """Write stack.json: this process owns the folder; what it runs, and where."""
    processes = []
    for name, pid in started:
        try:
            processes.append({"name": name, "pid": pid, "cmdline": psutil.Process(pid).cmdline()})
        except psutil.Error:
            pass  # gone already: nothing to clean up later
    write(data_dir, STACK, {"owner": os.getpid(), "urls": urls, "redis_url": redis_url,
                            "processes": processes})


def running_owner(data_dir: Path) -> int | None:
    """The pid of a `brkcoin up` that still owns this data folder, if any."""
    owner = _process(read(data_dir, STACK).get("owner", -1))
    if owner and owner.pid != os.getpid() and "brkcoin" in " ".join(owner.cmdline()):
        return int(owner.pid)
    return None


def leftovers(data_dir: Path) -> list[dict[str, Any]]:
    """Processes a dead run recorded in stack.json that are still running."""
    if running_owner(data_dir):
        return []  # not leftovers: their run is alive and owns them
    alive = []
    for entry in read(data_dir, STACK).get("processes", []):
        process = _process(entry.get("pid", -1))
        if process and process.cmdline() == entry.get("cmdline"):
            alive.append(entry)
    return alive


def end_leftovers(data_dir: Path) -> list[dict[str, Any]]:
    """SIGKILL the leftovers of a dead run, their whole process groups: ended,
    not waited for (they may be draining after their parent's death), so the
    ports they hold are free at once."""
    found = leftovers(data_dir)
    for entry in found:
        try:
            os.killpg(entry["pid"], signal.SIGKILL)  # each child leads its own group
        except (ProcessLookupError, PermissionError):
            pass
    psutil.wait_procs([p for p in map(_process, (e["pid"] for e in found)) if p], timeout=5)
    remove(data_dir, STACK, STATUS, CONTROL)
    return found


def _process(pid: object) -> psutil.Process | None:
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        process = psutil.Process(pid)
        return process if process.status() != psutil.STATUS_ZOMBIE else None
    except psutil.Error:
        return None

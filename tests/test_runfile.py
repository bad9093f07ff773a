"""stack.json is read back by the next `brkcoin up`, which SIGKILLs the leftovers it
names: only processes that are still the ones recorded (command line and start
time), of our user, are ended; a crafted or garbled file ends nothing and raises
nothing. Real processes throughout: `sleep`s started here."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from brkcoin.platform import runfile


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process of ours leading its own group, as the platform starts its children."""
    process = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield process
    process.kill()
    process.wait()


def dead_pid() -> int:
    gone = subprocess.Popen(["true"])
    gone.wait()
    return gone.pid


def exact(pid: int, /, **changes: Any) -> dict[str, Any]:
    """What `record` writes of a live process, with some fields changed (None: left out)."""
    found = psutil.Process(pid)
    written = {"name": "rng", "pid": pid, "cmdline": found.cmdline(),
               "started": found.create_time(), **changes}
    return {key: value for key, value in written.items() if value is not None}


def write_stack(data_dir: Path, content: object) -> None:
    (data_dir / runfile.STACK).write_text(json.dumps(content))


def test_a_genuine_leftover_is_ended_with_its_group(tmp_path: Path,
                                                    sleeper: subprocess.Popen[bytes]) -> None:
    group = subprocess.Popen(["sh", "-c", "sleep 60 & wait"], start_new_session=True)
    while len(members := [p for p in psutil.process_iter() if _group(p) == group.pid]) < 2:
        time.sleep(0.01)
    runfile.record(tmp_path, {}, "", [("rng", sleeper.pid), ("hasher", group.pid)])
    stack = json.loads((tmp_path / runfile.STACK).read_text())
    assert all(isinstance(p["started"], float) for p in stack["processes"])
    write_stack(tmp_path, {**stack, "owner": dead_pid()})  # its run is dead
    victims = [psutil.Process(sleeper.pid), *members]

    ended = runfile.end_leftovers(tmp_path)

    assert [e["pid"] for e in ended] == [sleeper.pid, group.pid]
    # Gone, the `sleep` under sh too (end_leftovers reaped them: no Popen exit codes).
    assert psutil.wait_procs(victims, timeout=5)[1] == []
    assert not (tmp_path / runfile.STACK).exists()


def _group(process: psutil.Process) -> int | None:
    try:
        return os.getpgid(process.pid)
    except OSError:
        return None


@pytest.mark.parametrize("change", [
    {"started": None},  # written before start times were recorded, or crafted without
    {"started": 12.5},  # a pid the system gave to another process since
    {"cmdline": ["brkcoin", "up"]},
    {"name": "rng\x1b[2J"},  # nothing `record` writes
    {"pid": True},
    {"pid": float("nan")},
])
def test_a_crafted_stack_ends_no_unrelated_process(
        tmp_path: Path, sleeper: subprocess.Popen[bytes], change: dict[str, Any]) -> None:
    write_stack(tmp_path, {"owner": dead_pid(), "processes": [exact(sleeper.pid, **change)]})
    assert runfile.end_leftovers(tmp_path) == []
    assert sleeper.poll() is None


def test_the_owner_ourselves_and_our_group_are_never_leftovers(
        tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    """Exact records of them still end nothing (leftovers is asked, not end_leftovers:
    a wrong answer would kill the test run)."""
    # Our group's leader may have ended (a shell that started us in the background).
    ours = [pid for pid in (sleeper.pid, os.getpid(), os.getpgrp(), 1) if psutil.pid_exists(pid)]
    write_stack(tmp_path, {"owner": sleeper.pid, "processes": [exact(pid) for pid in ours]})
    assert runfile.running_owner(tmp_path) is None  # a `sleep`, not a `brkcoin up`
    assert runfile.leftovers(tmp_path) == []


NO_PID = 2**22 + 1  # above any Linux pid_max: no process has it
GARBAGE: list[object] = [
    [], "stack", 7, None,
    {"owner": True}, {"owner": -5}, {"owner": 10**30}, {"owner": "1"}, {"owner": 1.5},
    {"owner": [1]}, {"owner": {"pid": 1}},
    {"processes": "abc"}, {"processes": 5}, {"processes": {"pid": 1}},
    {"processes": [1, "x", None, [], {}]},
    {"processes": [{"name": "rng", "pid": pid, "cmdline": [], "started": 1.0}
                   for pid in (True, -1, 0, 1, 10**30, 2**31, "1", 1.0, None, [1])]},
    {"processes": [{"name": name, "pid": NO_PID, "cmdline": cmdline, "started": started}
                   for name, cmdline, started in ((None, [], 1.0), ("x", "sleep", 1.0),
                                                  ("x", [], "1"), ("x", [], True))]},
]


@pytest.mark.parametrize("content", GARBAGE, ids=lambda c: json.dumps(c)[:40])
def test_a_garbled_stack_raises_nothing_and_ends_nothing(tmp_path: Path,
                                                        content: object) -> None:
    write_stack(tmp_path, content)
    assert runfile.running_owner(tmp_path) is None
    assert runfile.leftovers(tmp_path) == []
    assert runfile.end_leftovers(tmp_path) == []


def test_unreadable_bytes_raise_nothing(tmp_path: Path) -> None:
    (tmp_path / runfile.STACK).write_bytes(b"\xff\xfe{\"owner\": NaN")
    assert runfile.running_owner(tmp_path) is None
    assert runfile.end_leftovers(tmp_path) == []

"""`brkcoin up` as an operator breaks it: scales out of bounds, a control file of
garbage, a schedule longer than the worker may mine, a full disk. `up` keeps
running on what it had, mining goes on, and the status says what went wrong."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis

from conftest import BRKCOIN


def _hashes(client: redis.Redis) -> int:
    return int(client.get("hashes") or 0)


def _grows(client: redis.Redis, by: int = 5, timeout: float = 15) -> None:
    start = _hashes(client)
    give_up = time.monotonic() + timeout
    while _hashes(client) < start + by:
        assert time.monotonic() < give_up, "mining stopped"
        time.sleep(0.2)


@pytest.mark.parametrize("asked", ["worker=100000", "worker=1000000000000000000000000000000",
                                   "rng=11"])
def test_a_scale_beyond_the_bound_is_refused_and_names_it(tmp_path, asked):
    result = subprocess.run([BRKCOIN, "scale", asked, "--data-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    bounds = "0 to 80" if asked.startswith("worker") else "1 to 10 or auto"
    assert f"takes a whole number from {bounds}" in result.stderr


def test_a_bad_control_file_leaves_up_on_the_last_good_scale(up):
    stack = up()
    stack.wait_for("brkcoin is up")
    scaled = subprocess.run([BRKCOIN, "scale", "worker=3", "--data-dir", str(stack.data_dir)],
                            capture_output=True, text=True, timeout=70)
    assert scaled.returncode == 0, scaled.stderr
    control = stack.data_dir / "control.json"
    for garbage in ['{"scale": {"worker": 1e30}}', '{"scale": {"worker": 100000}}',
                    '{"scale": {"worker": -1}}', '{"scale": {"worker": true}}',
                    '{"scale": {"miner": 2}}', '{"scale": "all"}', '{"scale": {}}',
                    '{"scale": {"rng": 99999999999999999999}}', '{"scale": {"worker": "auto"}}',
                    '{"scale": {"rng": "Auto"}}', '[1, 2]', 'not json',
                    '{"scale": {"worker": 2}}' + ' ' * 70_000]:  # good, but over the bound
        control.write_text(garbage)
        give_up = time.monotonic() + 5
        while control.exists():  # taken and judged
            assert time.monotonic() < give_up, f"{garbage} never taken"
            time.sleep(0.05)
        taken = time.time()
        while (stack.data_dir / "status.json").stat().st_mtime < taken:  # the beat's state
            assert time.monotonic() < give_up, f"no status after {garbage}"
            time.sleep(0.05)
        state = stack.status()
        assert stack.process.poll() is None, stack.output
        assert state["scheduler"]["fanout"] == 3, (garbage[:60], state["scheduler"])
        assert state["functions"]["rng"]["wanted"] == 1
    assert "control.json ignored" in json.dumps(stack.status()["scheduler"])


def test_an_hour_between_ticks_mines_within_the_workers_bound(up):
    stack = up("--every", "1h")
    stack.wait_for("brkcoin is up")
    _grows(stack.redis())
    scheduler = stack.status()["scheduler"]
    assert scheduler["in_flight"] == 1 and scheduler["problem"] == "", scheduler


@pytest.fixture
def full_disk(tmp_path: Path):
    """A data folder on a small tmpfs that the test fills, with Redis's own folder
    on a tmpfs with room (a Redis that cannot write its AOF refuses writes: that
    is Redis's own rule, not ours). Mounting needs root, which CI has."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    data = tmp_path / "data"
    (data).mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(data)], check=True)
    (data / "redis").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(data / "redis")],
                   check=True)
    yield data
    for folder in (data / "redis", data):
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(folder: Path) -> None:
    with open(folder / "filler", "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass


def test_a_full_disk_stops_neither_mining_nor_up(up, full_disk):
    stack = up("--every", "2s")
    stack.wait_for("brkcoin is up")
    client = stack.redis()
    _grows(client)
    _fill(full_disk)
    ticks = stack.status()["scheduler"]["ticks"]
    # Each instance's log, the scheduler's log, status.json and stack.json now fail.
    for process in stack.descendants():  # a restart, with no log to write to
        if "--target hasher " in " ".join(process.cmdline()):
            process.kill()
    time.sleep(6)
    _grows(client, by=10)
    assert stack.process.poll() is None, stack.output
    published = json.loads(client.get("brkcoin:platform"))  # what the page shows
    assert published["disk"]["failed_writes"] > 0
    assert "No space left on device" in published["disk"]["last_failure"]
    assert published["scheduler"]["ticks"] > ticks + 2
    stack.wait_for("failed writes, last", timeout=15)  # the status line says it too

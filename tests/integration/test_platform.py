"""`brkcoin up` as a local serverless platform: live scaling, supervision with
restarts, no pile-up, and a CLI that finds the stack it runs. Real processes
throughout: the platform's front doors, functions-framework instances, Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import datetime

import psutil
import pytest
import redis

from brkcoin.platform.processes import free_port
from brkcoin.platform.redis_server import RedisServer
from conftest import BRKCOIN, Up, assert_all_gone
from support import assert_wallet_holds_only_true_coins


def _mining(stack: Up, hashes: int = 10) -> None:
    stack.wait_for_hashes(hashes)


def _instance_pids(stack: Up, name: str) -> list[int]:
    """The functions-framework processes (instances) of `name`, or Redis's."""
    recorded = json.loads((stack.data_dir / "stack.json").read_text())["processes"]
    return [p["pid"] for p in recorded if p["name"] == name or p["name"].startswith(name + "-")]


def _stopped_wallet(stack: Up) -> tuple[int, dict[str, int]]:
    """The counter as the next run will find it (the AOF), once `up` has stopped,
    and the hashes each invocation's flushes recorded (from their telemetry
    lines, written by the same script as the counts)."""
    reopened = RedisServer(stack.data_dir / "redis", free_port()).start()
    try:
        client = reopened.client()
        assert_wallet_holds_only_true_coins(client)
        flushed: dict[str, int] = {}
        for line in client.zrange("brkcoin:stats", 0, -1):
            entry = json.loads(line)
            flushed[entry["invocation"]] = flushed.get(entry["invocation"], 0) + entry["hashes"]
        return int(client.get("hashes") or 0), flushed
    finally:
        reopened.stop()


def _stop(stack: Up) -> None:
    stack.process.send_signal(signal.SIGTERM)
    assert stack.process.wait(30) == 0


def test_status_finds_a_stack_on_other_ports(up):
    stack = up()
    stack.wait_for("brkcoin is up")
    _mining(stack, 5)
    result = subprocess.run([BRKCOIN, "status", "--data-dir", str(stack.data_dir),
                             "--sample", "1", "--json"], capture_output=True, text=True,
                            timeout=30)
    report = json.loads(result.stdout)
    assert report["hashes"] >= 5 and report["rate"] > 0
    assert {n: f["up"] for n, f in report["functions"].items()} == {
        "webui": True, "rng": True, "hasher": True, "worker": True}
    assert report["functions"]["rng"]["instances"] == 1
    assert report["scheduler"]["fanout"] == 1
    # By default, a table: a line of totals, a header, a row per function.
    table = subprocess.run([BRKCOIN, "status", "--data-dir", str(stack.data_dir),
                            "--sample", "0.2"], capture_output=True, text=True,
                           timeout=30).stdout.splitlines()
    assert "hashes/s" in table[0] and table[1].split()[:3] == ["NAME", "UP", "INSTANCES"]
    rows = {line.split()[0]: line.split() for line in table[2:]}
    assert set(rows) == {"webui", "rng", "hasher", "worker"}
    assert rows["rng"][1:3] == ["yes", "1/1"]


def test_scaling_rng_while_mining_fails_no_call(up):
    stack = up("--scale", "worker=3")
    stack.wait_for("brkcoin is up")
    _mining(stack)
    result = subprocess.run([BRKCOIN, "scale", "rng=4", "--data-dir", str(stack.data_dir)],
                            capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr
    assert "rng 4" in result.stdout
    assert len(_instance_pids(stack, "rng")) == 4
    time.sleep(4)
    subprocess.run([BRKCOIN, "scale", "rng=1", "--data-dir", str(stack.data_dir)],
                   check=True, capture_output=True, timeout=90)
    stack.wait_until(lambda s: s["scheduler"]["answers"].get("200", 0) >= 9)
    _stop(stack)
    summaries = stack.summaries()
    assert summaries and all(s["severity"] == "INFO" for s in summaries)
    # Each has its time as Cloud Logging reads it (RFC 3339, UTC), in this run.
    assert all(s["time"].endswith("Z") and abs(datetime.fromisoformat(s["time"]).timestamp()
                                              - time.time()) < 600 for s in summaries)
    assert sum(s["worker"]["errors"]["rng"] + s["worker"]["errors"]["hasher"]
               for s in summaries) == 0
    assert _stopped_wallet(stack)[0] == sum(s["worker"]["hashes"] for s in summaries)


@pytest.mark.parametrize("victim", ["rng", "hasher", "worker", "webui", "redis"])
def test_a_killed_instance_or_redis_is_back_within_5_s_and_nothing_is_lost(up, victim):
    stack = up("--scale", "worker=2")
    stack.wait_for("brkcoin is up")
    _mining(stack)
    [pid] = _instance_pids(stack, victim) if victim != "worker" else (
        _instance_pids(stack, victim)[:1])
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    if victim == "redis":
        stack.wait_until(lambda s: s["redis"]["restarts"] == 1, timeout=10)
    else:
        stack.wait_until(lambda s: s["functions"][victim]["restarts"] == 1
                         and s["functions"][victim]["instances"] >= 1, timeout=10)
    assert time.monotonic() - killed < 5
    before = stack.status()["scheduler"]["answers"].get("200", 0)
    stack.wait_until(lambda s: s["scheduler"]["answers"].get("200", 0) >= before + 4)
    _stop(stack)
    # Every hash counted is in Redis once: those of the invocations that answered,
    # and what a killed worker instance flushed before it died, which no summary
    # reports (its telemetry lines, written by the same script as the counts, do).
    summaries = {s["worker"]["invocation"]: s["worker"] for s in stack.summaries()}
    assert all(s.get("unrecorded", {}).get("hashes", 0) == 0 for s in summaries.values())
    wallet, flushed = _stopped_wallet(stack)
    unreported = sum(n for invocation, n in flushed.items() if invocation not in summaries)
    assert wallet == sum(s["hashes"] for s in summaries.values()) + unreported
    if victim != "worker":
        assert unreported == 0  # every invocation answered


def test_ticks_never_pile_up(up):
    stack = up("--every", "1s", "--scale", "worker=24", "--overlap", "skip")
    stack.wait_for("brkcoin is up")
    give_up = time.monotonic() + 12
    highest = 0
    while time.monotonic() < give_up:
        scheduler = stack.status().get("scheduler", {})
        highest = max(highest, scheduler.get("in_flight", 0))
        time.sleep(0.25)
    state = stack.status()["scheduler"]
    assert highest <= 48  # one tick mining, the one before answering: never a backlog
    assert state["skipped"] > 0
    assert state["invocations"] - sum(state["answers"].values()) <= 48
    assert " skipped" in stack.output  # and the status line says so


def test_a_killed_up_leaves_nothing_within_2_s_and_a_new_one_starts(up):
    first = up("--every", "10s")  # an invocation mines the whole 10 s
    first.wait_for("brkcoin is up")
    _mining(first, 5)
    time.sleep(1)  # mid-invocation
    children = first.descendants()
    first.process.kill()
    killed = time.monotonic()
    assert_all_gone(children, timeout=5)
    assert time.monotonic() - killed < 2
    second = up(ports=first.ports)  # at once, same folder, same ports
    second.wait_for("brkcoin is up")
    _mining(second, int(second.redis().get("hashes") or 0) + 5)
    # The invocation running when `up` was killed drained into Redis, which
    # stayed a moment longer for it: recorded (INFO), nothing lost.
    summaries = second.summaries()
    assert any("SIGTERM" in s["worker"].get("stopped", "") for s in summaries), summaries
    assert all(s["severity"] == "INFO" for s in summaries)


def test_sigint_stops_a_background_up(up):
    stack = up(sigint_ignored=True)
    stack.wait_for("brkcoin is up")
    children = stack.descendants()
    stack.process.send_signal(signal.SIGINT)
    assert stack.process.wait(15) == 0
    stack.wait_for("stopped every process it started")
    assert_all_gone(children)


@pytest.mark.parametrize(
    "option, message",
    [(("--batch", "40000"), "--batch must be from 1 to 32768"),
     (("--concurrency", "2000"), "--concurrency must be from 1 to 1024"),
     (("--workers", "-1"), "--workers takes 0 (paused) to 80 invocations"),
     (("--workers", "400"), "--workers takes 0 (paused) to 80 invocations"),
     (("--scale", "worker=100000"), "worker= takes a whole number from 0 to 80"),
     (("--scale", "rng=many"), "rng= takes a whole number from 1 to 10 or auto"),
     (("--autoscale", "rng:window=0"), "--autoscale rng:window takes a duration from 1s"),
     (("--autoscale", "rng:colour=red"), "--autoscale rng: no setting 'colour'"),
     (("--autoscale", "miner:window=6s"), "--autoscale takes NAME:KEY=VALUE"),
     (("--autoscale", "rng:min-scale=5,max-scale=2"), "min-scale 5 is over max-scale 2"),
     (("--scale", "rng=0"), "rng= takes a whole number from 1 to 10"),
     (("--scale", "miner=2"), "no function 'miner'"),
     (("--concurrency", "256", "--batch", "32768"), "at most 1048576")],
)
def test_up_refuses_bad_inputs_up_front(tmp_path, option, message):
    result = subprocess.run([BRKCOIN, "up", "--data-dir", str(tmp_path), *option],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_scheduler_errors_show_in_the_status_line(up):
    stack = up(env={"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
                    "WORKER_FLUSH_GRACE": "0.3", "WORKER_DELAY": "0"})
    stack.wait_for("brkcoin is up")
    stack.wait_for("last 503", timeout=40)
    assert "redis unreachable" in stack.output
    assert psutil.Process(stack.process.pid).is_running()


def test_redis_killed_with_its_wrapper_10_times_in_a_row_is_back_within_5_s(up):
    """kill -9 of the process group that wraps Redis (linger.py and redis-server),
    again and again: the back-off stays short, and no orphan keeps the port."""
    stack = up("--schedule", "0 0 1 1 *")
    stack.wait_for("brkcoin is up")
    client = stack.redis()
    for kill in range(10):
        [wrapper] = _instance_pids(stack, "linger-redis")
        os.killpg(wrapper, signal.SIGKILL)
        killed = time.monotonic()
        while True:
            try:
                if client.ping():
                    break
            except redis.RedisError:
                pass
            assert time.monotonic() - killed < 5, f"kill {kill + 1}: Redis not back in 5 s"
            time.sleep(0.05)
        stack.wait_until(lambda s, n=kill + 1: s["redis"]["restarts"] == n, timeout=5)
        give_up = time.monotonic() + 5  # stack.json names the new wrapper
        while _instance_pids(stack, "linger-redis") == [wrapper]:
            assert time.monotonic() < give_up
            time.sleep(0.05)
